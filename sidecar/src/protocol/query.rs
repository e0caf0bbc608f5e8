//! Query parameters of a read: `offset`, `live` and `cursor` (§5.6–§5.8).
//!
//! Unknown parameters are ignored. `offset` is validated with
//! [`ds_core::ReadFrom::parse`] before any SQL runs, so malformed offsets
//! never reach the database.

use ds_core::ReadFrom;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Plain catch-up read.
    No,
    /// `live=long-poll`.
    LongPoll,
    /// `live=sse`.
    Sse,
}

/// The parsed query of a `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadParams {
    /// Where to start.
    pub from: ReadFrom,
    /// The `offset` token as sent (`-1` when absent), for ETags and SQL.
    pub offset: String,
    /// The live mode.
    pub live: Live,
    /// The echoed `Stream-Cursor`, if any.
    pub cursor: Option<String>,
}

impl ReadParams {
    /// Parses decoded query pairs; the error is the message of a 400.
    pub fn parse(pairs: &[(String, String)]) -> Result<ReadParams, String> {
        let single = |name: &str| -> Result<Option<&str>, String> {
            let mut it = pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let first = it.next();
            if it.next().is_some() {
                return Err(format!("the {name} parameter may be given only once"));
            }
            Ok(first)
        };
        let offset = single("offset")?;
        if offset == Some("") {
            return Err("the offset parameter is empty".into());
        }
        let from = ReadFrom::parse(offset).map_err(|e| e.to_string())?;
        let live = match single("live")? {
            None => Live::No,
            Some("long-poll") => Live::LongPoll,
            Some("sse") => Live::Sse,
            Some(other) => {
                return Err(format!(
                    "unknown live mode {:?}: use long-poll or sse",
                    other.chars().take(40).collect::<String>()
                ));
            }
        };
        if live != Live::No && offset.is_none() {
            return Err(
                "live reads require an offset parameter (-1, now or a server offset)".into()
            );
        }
        let cursor = single("cursor")?.map(str::to_owned);
        Ok(ReadParams { from, offset: offset.unwrap_or("-1").to_owned(), live, cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_core::Offset;

    fn parse(q: &[(&str, &str)]) -> Result<ReadParams, String> {
        let pairs: Vec<(String, String)> =
            q.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        ReadParams::parse(&pairs)
    }

    #[test]
    fn defaults_to_catch_up_from_start() {
        let p = parse(&[("foo", "bar")]).unwrap();
        assert_eq!(
            p,
            ReadParams { from: ReadFrom::Start, offset: "-1".into(), live: Live::No, cursor: None }
        );
    }

    #[test]
    fn offsets_and_modes() {
        let off = Offset(12).to_string();
        let p = parse(&[("offset", &off), ("live", "long-poll"), ("cursor", "42")]).unwrap();
        assert_eq!(p.from, ReadFrom::At(Offset(12)));
        assert_eq!(p.live, Live::LongPoll);
        assert_eq!(p.cursor.as_deref(), Some("42"));
        assert_eq!(parse(&[("offset", "now"), ("live", "sse")]).unwrap().from, ReadFrom::Now);
    }

    #[test]
    fn rejects_bad_queries() {
        for q in [
            vec![("offset", "")],
            vec![("offset", "a"), ("offset", "b")],
            vec![("offset", "0,1")],
            vec![("offset", "0 1")],
            vec![("live", "long-poll")],
            vec![("live", "sse")],
            vec![("offset", "-1"), ("live", "websocket")],
        ] {
            assert!(parse(&q).is_err(), "{q:?}");
        }
    }
}
