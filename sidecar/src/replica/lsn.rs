//! WAL positions and the sidecar's watermark: the highest primary position
//! it knows about (see the module docs of [`super`]).

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::db::{Db, DbError};

/// A WAL position (`pg_lsn`), ordered as Postgres orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    /// Parses Postgres' text form, `XXXXXXXX/XXXXXXXX` (hex, 1 to 8 digits each).
    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("not a WAL position (expected hex/hex): {s:?}");
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The highest primary WAL position this sidecar knows about, advanced by
/// coalesced reads of `pg_current_wal_lsn()`.
#[derive(Default)]
pub struct PrimaryClock {
    watermark: AtomicU64,
    requested: AtomicU64,
    served: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

impl PrimaryClock {
    /// The watermark now.
    pub fn watermark(&self) -> Lsn {
        Lsn(self.watermark.load(Ordering::SeqCst))
    }

    /// Raises the watermark to `lsn` (never lowers it).
    pub fn raise(&self, lsn: Lsn) {
        self.watermark.fetch_max(lsn.0, Ordering::SeqCst);
    }

    /// Raises the watermark to a primary position read after this call
    /// began. Concurrent callers share one query: a caller that finds a
    /// query running waits for it to end, then either finds that a later
    /// query already covered it or runs the next one for everybody waiting.
    pub async fn advance(&self, primary: &Db) -> Result<Lsn, DbError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.lock.lock().await;
        if self.served.load(Ordering::SeqCst) >= ticket {
            return Ok(self.watermark());
        }
        let covers = self.requested.load(Ordering::SeqCst);
        let text = primary.current_wal_lsn().await?;
        let lsn = text.parse::<Lsn>().map_err(|_| DbError::Shape("pg_current_wal_lsn"))?;
        self.raise(lsn);
        self.served.store(covers, Ordering::SeqCst);
        Ok(lsn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_print_and_order_like_postgres() {
        let a: Lsn = "0/16B3748".parse().unwrap();
        assert_eq!(a, Lsn(0x16B_3748));
        assert_eq!(a.to_string(), "0/16B3748");
        let b: Lsn = "1/0".parse().unwrap();
        assert_eq!(b, Lsn(1 << 32));
        assert!(b > a, "the high part counts first");
        assert!("0/16B3749".parse::<Lsn>().unwrap() > a);
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!("ffffffff/ffffffff".parse::<Lsn>().unwrap().to_string(), "FFFFFFFF/FFFFFFFF");
        for bad in ["", "/", "0/", "/0", "0", "0/1/2", "g/0", "100000000/0", "-1/0", " 0/1", "0/+1"]
        {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_watermark_only_rises() {
        let c = PrimaryClock::default();
        c.raise(Lsn(10));
        c.raise(Lsn(5));
        assert_eq!(c.watermark(), Lsn(10));
    }
}
