//! Offsets: opaque, fixed-width, lexicographically sortable positions.
//!
//! An offset is `SSSSSSSSSSSSSSSS_PPPPPPPPPPPPPPPP`: two zero-padded 16-digit
//! decimal numbers. `P` is the logical byte position in the stream (bytes of
//! a byte stream, bytes of compact message text in a JSON stream). `S` is
//! reserved for a future change of numbering and is always 0 today; keeping
//! it fixed-width means string order equals numeric order forever.

use std::fmt;

use crate::error::{Error, Result};

const DIGITS: usize = 16;
const WIDTH: usize = 2 * DIGITS + 1;
const MAX_DIGITS_VALUE: u64 = 9_999_999_999_999_999;

/// A position in a stream: the number of logical bytes before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    /// The start of every stream.
    pub const ZERO: Offset = Offset(0);

    /// Parses a server-issued offset token.
    pub fn parse(token: &str) -> Result<Offset> {
        let bad = || Error::InvalidOffset(token.chars().take(80).collect());
        let bytes = token.as_bytes();
        if bytes.len() != WIDTH || bytes[DIGITS] != b'_' {
            return Err(bad());
        }
        let digits = |s: &[u8]| -> Option<u64> {
            s.iter().try_fold(0u64, |acc, &b| {
                b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
            })
        };
        match (digits(&bytes[..DIGITS]), digits(&bytes[DIGITS + 1..])) {
            (Some(0), Some(pos)) => Ok(Offset(pos)),
            _ => Err(bad()),
        }
    }

    /// The position as the signed integer stored in Postgres.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).expect("offsets stay below 10^16")
    }

    /// Builds an offset from a stored position; positions are never negative.
    pub fn from_i64(pos: i64) -> Offset {
        let pos = u64::try_from(pos).expect("stored positions are never negative");
        debug_assert!(pos <= MAX_DIGITS_VALUE);
        Offset(pos)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:0width$}_{:0width$}", 0, self.0, width = DIGITS)
    }
}

/// Where a read starts, as requested by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// `-1` (or no offset at all): the beginning of the stream.
    Start,
    /// `now`: the tail at the time of the request.
    Now,
    /// A server-issued offset.
    At(Offset),
}

impl ReadFrom {
    /// Parses the `offset` request parameter; `None` means the start.
    pub fn parse(token: Option<&str>) -> Result<ReadFrom> {
        match token {
            None | Some("-1") => Ok(ReadFrom::Start),
            Some("now") => Ok(ReadFrom::Now),
            Some(t) => Offset::parse(t).map(ReadFrom::At),
        }
    }

    /// Resolves the request against the current tail. Offsets past the tail
    /// are clamped to it: a client can only have got such an offset from a
    /// stream that was since deleted and re-created.
    pub fn resolve(self, tail: Offset) -> Offset {
        match self {
            ReadFrom::Start => Offset::ZERO,
            ReadFrom::Now => tail,
            ReadFrom::At(o) => o.min(tail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_fixed_width() {
        assert_eq!(Offset(0).to_string(), "0000000000000000_0000000000000000");
        assert_eq!(Offset(1234).to_string(), "0000000000000000_0000000000001234");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "abc",
            "-2",
            "0000000000000000-0000000000000000",
            "0000000000000000_000000000000000",
            "0000000000000000_00000000000000000",
            "0000000000000001_0000000000000000",
            "0000000000000000_000000000000000x",
            "+000000000000000_0000000000000000",
        ] {
            assert!(Offset::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sentinels() {
        assert_eq!(ReadFrom::parse(None), Ok(ReadFrom::Start));
        assert_eq!(ReadFrom::parse(Some("-1")), Ok(ReadFrom::Start));
        assert_eq!(ReadFrom::parse(Some("now")), Ok(ReadFrom::Now));
        assert_eq!(ReadFrom::Now.resolve(Offset(7)), Offset(7));
        assert_eq!(ReadFrom::At(Offset(9)).resolve(Offset(7)), Offset(7));
        assert!(ReadFrom::parse(Some("NOW")).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(pos in 0u64..=MAX_DIGITS_VALUE) {
            prop_assert_eq!(Offset::parse(&Offset(pos).to_string()), Ok(Offset(pos)));
        }

        #[test]
        fn string_order_is_numeric_order(a in 0u64..=MAX_DIGITS_VALUE, b in 0u64..=MAX_DIGITS_VALUE) {
            prop_assert_eq!(Offset(a).to_string().cmp(&Offset(b).to_string()), a.cmp(&b));
        }

        #[test]
        fn never_contains_reserved_characters(pos in 0u64..=MAX_DIGITS_VALUE) {
            let s = Offset(pos).to_string();
            prop_assert!(!s.contains([',', '&', '=', '?', '/']));
            prop_assert!(s != "-1" && s != "now");
        }
    }
}
