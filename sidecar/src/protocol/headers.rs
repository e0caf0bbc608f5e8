//! Protocol header names and the syntax checks of request headers (§5).
//!
//! These functions only check syntax; whether a value makes sense for the
//! stream (content type match, producer fencing, ...) is decided by the
//! extension.

use axum::http::HeaderName;
use ds_core::limits::{MAX_PRODUCER_ID_BYTES, MAX_PRODUCER_NUMBER};
use thiserror::Error;

use super::time;

/// `Stream-Next-Offset`.
pub const STREAM_NEXT_OFFSET: HeaderName = HeaderName::from_static("stream-next-offset");
/// `Stream-Up-To-Date`.
pub const STREAM_UP_TO_DATE: HeaderName = HeaderName::from_static("stream-up-to-date");
/// `Stream-Closed`.
pub const STREAM_CLOSED: HeaderName = HeaderName::from_static("stream-closed");
/// `Stream-Cursor`.
pub const STREAM_CURSOR: HeaderName = HeaderName::from_static("stream-cursor");
/// `Stream-TTL`.
pub const STREAM_TTL: HeaderName = HeaderName::from_static("stream-ttl");
/// `Stream-Expires-At`.
pub const STREAM_EXPIRES_AT: HeaderName = HeaderName::from_static("stream-expires-at");
/// `Stream-Earliest-Offset` (HEAD, and a 410 for an offset retention
/// dropped): the earliest retained offset, where a read from `-1` starts.
pub const STREAM_EARLIEST_OFFSET: HeaderName = HeaderName::from_static("stream-earliest-offset");
/// `Stream-Seq`.
pub const STREAM_SEQ: HeaderName = HeaderName::from_static("stream-seq");
/// `Stream-SSE-Data-Encoding`.
pub const STREAM_SSE_DATA_ENCODING: HeaderName =
    HeaderName::from_static("stream-sse-data-encoding");
/// `Producer-Id`.
pub const PRODUCER_ID: HeaderName = HeaderName::from_static("producer-id");
/// `Producer-Epoch`.
pub const PRODUCER_EPOCH: HeaderName = HeaderName::from_static("producer-epoch");
/// `Producer-Seq`.
pub const PRODUCER_SEQ: HeaderName = HeaderName::from_static("producer-seq");
/// `Producer-Expected-Seq`.
pub const PRODUCER_EXPECTED_SEQ: HeaderName = HeaderName::from_static("producer-expected-seq");
/// `Producer-Received-Seq`.
pub const PRODUCER_RECEIVED_SEQ: HeaderName = HeaderName::from_static("producer-received-seq");
/// `Stream-Forked-From` (PUT): the source of a fork.
pub const STREAM_FORKED_FROM: HeaderName = HeaderName::from_static("stream-forked-from");
/// `Stream-Fork-Offset` (PUT): the fork point in the source.
pub const STREAM_FORK_OFFSET: HeaderName = HeaderName::from_static("stream-fork-offset");
/// `Stream-Fork-Sub-Offset` (PUT): messages or bytes past the fork offset.
pub const STREAM_FORK_SUB_OFFSET: HeaderName = HeaderName::from_static("stream-fork-sub-offset");

/// Request headers a browser may send (CORS `Access-Control-Allow-Headers`).
pub const REQUEST_HEADERS: [&str; 13] = [
    "content-type",
    "authorization",
    "if-none-match",
    "stream-seq",
    "stream-ttl",
    "stream-expires-at",
    "stream-closed",
    "producer-id",
    "producer-epoch",
    "producer-seq",
    "stream-forked-from",
    "stream-fork-offset",
    "stream-fork-sub-offset",
];

/// Response headers a browser may read (CORS `Access-Control-Expose-Headers`).
pub const EXPOSED_HEADERS: [&str; 16] = [
    "stream-next-offset",
    "stream-earliest-offset",
    "stream-cursor",
    "stream-up-to-date",
    "stream-closed",
    "stream-ttl",
    "stream-expires-at",
    "stream-sse-data-encoding",
    "producer-epoch",
    "producer-seq",
    "producer-expected-seq",
    "producer-received-seq",
    "etag",
    "location",
    "content-type",
    "content-encoding",
];

/// A request header with invalid syntax (always a 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// `Stream-TTL` is not a plain decimal number.
    #[error(
        "invalid Stream-TTL {0:?}: expected a non-negative decimal integer without leading zeros"
    )]
    Ttl(String),
    /// `Stream-Expires-At` is not an RFC 3339 timestamp.
    #[error("invalid Stream-Expires-At {0:?}: expected an RFC 3339 timestamp")]
    ExpiresAt(String),
    /// Both expiry headers were sent.
    #[error("send either Stream-TTL or Stream-Expires-At, not both")]
    TtlAndExpiresAt,
    /// Only some of the three producer headers were sent.
    #[error("Producer-Id, Producer-Epoch and Producer-Seq must be sent together")]
    PartialProducer,
    /// `Producer-Id` empty or too long.
    #[error("invalid Producer-Id: must be 1 to {MAX_PRODUCER_ID_BYTES} bytes")]
    ProducerId,
    /// `Producer-Epoch` / `Producer-Seq` not an integer in 0..=2^53-1.
    #[error("invalid {0}: expected an integer between 0 and 2^53-1")]
    ProducerNumber(&'static str),
    /// `Stream-Fork-Offset` / `Stream-Fork-Sub-Offset` without `Stream-Forked-From`.
    #[error("Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From")]
    ForkWithoutSource,
    /// `Stream-Forked-From` is not a stream path.
    #[error("invalid Stream-Forked-From {0:?}: expected the source stream's path")]
    ForkedFrom(String),
    /// `Stream-Fork-Offset` is not an offset the server issued.
    #[error("invalid Stream-Fork-Offset {0:?}: use an offset returned by the server")]
    ForkOffset(String),
    /// `Stream-Fork-Sub-Offset` is not a plain non-negative integer.
    #[error(
        "invalid Stream-Fork-Sub-Offset {0:?}: expected a non-negative integer without sign or leading zeros"
    )]
    ForkSubOffset(String),
    /// A header value that is not visible ASCII / UTF-8.
    #[error("header {0} is not valid text")]
    NotText(&'static str),
}

/// Parses `Stream-TTL`: decimal digits, no sign, no leading zeros.
pub fn parse_ttl(value: &str) -> Result<i64, HeaderError> {
    let bad = || HeaderError::Ttl(value.chars().take(40).collect());
    let plain = !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && (value == "0" || !value.starts_with('0'));
    if !plain {
        return Err(bad());
    }
    value.parse::<i64>().map_err(|_| bad())
}

/// Checks `Stream-Expires-At` and returns it unchanged for Postgres to parse.
pub fn parse_expires_at(value: &str) -> Result<&str, HeaderError> {
    if time::is_rfc3339(value) {
        Ok(value)
    } else {
        Err(HeaderError::ExpiresAt(value.chars().take(60).collect()))
    }
}

/// Checks the expiry headers of a create request: at most one may be sent.
pub fn parse_expiry<'a>(
    ttl: Option<&str>,
    expires_at: Option<&'a str>,
) -> Result<(Option<i64>, Option<&'a str>), HeaderError> {
    let ttl = ttl.map(parse_ttl).transpose()?;
    let expires_at = expires_at.map(parse_expires_at).transpose()?;
    if ttl.is_some() && expires_at.is_some() {
        return Err(HeaderError::TtlAndExpiresAt);
    }
    Ok((ttl, expires_at))
}

/// `Stream-Closed` counts only when it is exactly `true` (any case); every
/// other value is treated as absent (§4.1).
pub fn is_closed(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The idempotent-producer tuple of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Producer {
    /// `Producer-Id`.
    pub id: String,
    /// `Producer-Epoch`.
    pub epoch: i64,
    /// `Producer-Seq`.
    pub seq: i64,
}

fn producer_number(value: &str, name: &'static str) -> Result<i64, HeaderError> {
    let bad = || HeaderError::ProducerNumber(name);
    if value.is_empty() || value.len() > 16 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n = value.parse::<i64>().map_err(|_| bad())?;
    if n > MAX_PRODUCER_NUMBER { Err(bad()) } else { Ok(n) }
}

/// Parses the producer headers: all three or none (§5.2.1).
pub fn parse_producer(
    id: Option<&str>,
    epoch: Option<&str>,
    seq: Option<&str>,
) -> Result<Option<Producer>, HeaderError> {
    match (id, epoch, seq) {
        (None, None, None) => Ok(None),
        (Some(id), Some(epoch), Some(seq)) => {
            if id.is_empty() || id.len() > MAX_PRODUCER_ID_BYTES {
                return Err(HeaderError::ProducerId);
            }
            Ok(Some(Producer {
                id: id.to_owned(),
                epoch: producer_number(epoch, "Producer-Epoch")?,
                seq: producer_number(seq, "Producer-Seq")?,
            }))
        }
        _ => Err(HeaderError::PartialProducer),
    }
}

/// The fork headers of a `PUT` (§4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// Source stream path (below `/v1/stream/`, percent-decoded).
    pub source: String,
    /// Fork point; `None` means the source's tail.
    pub offset: Option<String>,
    /// Messages (JSON) or bytes past the fork point.
    pub sub_offset: i64,
}

/// Parses the fork headers: `None` for a plain create.
pub fn parse_fork(
    forked_from: Option<&str>,
    offset: Option<&str>,
    sub_offset: Option<&str>,
) -> Result<Option<Fork>, HeaderError> {
    let Some(from) = forked_from else {
        return if offset.is_some() || sub_offset.is_some() {
            Err(HeaderError::ForkWithoutSource)
        } else {
            Ok(None)
        };
    };
    let bad_source = || HeaderError::ForkedFrom(from.chars().take(80).collect());
    // Accept the path as sent on the wire, with or without scheme and host.
    let raw = from.split_once(STREAM_PREFIX).map_or(from.trim_start_matches('/'), |(_, p)| p);
    let source = percent_decode(raw).filter(|p| !p.is_empty()).ok_or_else(bad_source)?;
    let offset = match offset {
        None => None,
        Some(o) => match ds_core::Offset::parse(o) {
            Ok(_) => Some(o.to_owned()),
            Err(_) => return Err(HeaderError::ForkOffset(o.chars().take(80).collect())),
        },
    };
    let sub_offset = match sub_offset {
        None => 0,
        Some(v) => {
            let plain = !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_digit())
                && (v == "0" || !v.starts_with('0'));
            match v.parse::<i64>() {
                Ok(n) if plain && n <= MAX_PRODUCER_NUMBER => n,
                _ => return Err(HeaderError::ForkSubOffset(v.chars().take(40).collect())),
            }
        }
    };
    Ok(Some(Fork { source, offset, sub_offset }))
}

/// The stream prefix, as in request paths.
const STREAM_PREFIX: &str = "/v1/stream/";

/// Decodes `%XX` escapes exactly as the router decodes request paths
/// (axum's `Path` uses `percent_encoding`: a malformed escape such as `%zz`
/// stays literal), so a stream is forked from the very path it was created
/// at; `None` when the result is not UTF-8. (A hand-written decoder here
/// read `%+1` as byte 1, since `u8::from_str_radix` accepts a sign, and
/// refused `%zz`, which the router keeps: found by fuzzing.)
fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("0"), Ok(0));
        assert_eq!(parse_ttl("3600"), Ok(3600));
        for bad in [
            "",
            "03600",
            "00",
            "+60",
            "-1",
            "60.5",
            "1e3",
            " 60",
            "60 ",
            "abc",
            "99999999999999999999",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expiry_headers() {
        assert_eq!(parse_expiry(None, None), Ok((None, None)));
        assert_eq!(parse_expiry(Some("10"), None), Ok((Some(10), None)));
        let at = "2030-01-01T00:00:00Z";
        assert_eq!(parse_expiry(None, Some(at)), Ok((None, Some(at))));
        assert_eq!(parse_expiry(Some("10"), Some(at)), Err(HeaderError::TtlAndExpiresAt));
        assert!(matches!(
            parse_expiry(None, Some("not-a-timestamp")),
            Err(HeaderError::ExpiresAt(_))
        ));
        assert!(matches!(parse_expiry(Some("x"), Some(at)), Err(HeaderError::Ttl(_))));
    }

    #[test]
    fn closed_is_exactly_true() {
        assert!(is_closed(Some("true")));
        assert!(is_closed(Some("TRUE")));
        assert!(is_closed(Some("True")));
        for ignored in [None, Some(""), Some("false"), Some("yes"), Some("1"), Some(" true")] {
            assert!(!is_closed(ignored), "{ignored:?}");
        }
    }

    #[test]
    fn producer_all_or_none() {
        assert_eq!(parse_producer(None, None, None), Ok(None));
        assert_eq!(
            parse_producer(Some("p"), Some("0"), Some("5")),
            Ok(Some(Producer { id: "p".into(), epoch: 0, seq: 5 }))
        );
        assert_eq!(parse_producer(Some("p"), Some("0"), None), Err(HeaderError::PartialProducer));
        assert_eq!(parse_producer(None, Some("0"), Some("0")), Err(HeaderError::PartialProducer));
        assert_eq!(parse_producer(Some(""), Some("0"), Some("0")), Err(HeaderError::ProducerId));
        let long = "x".repeat(MAX_PRODUCER_ID_BYTES + 1);
        assert_eq!(parse_producer(Some(&long), Some("0"), Some("0")), Err(HeaderError::ProducerId));
    }

    #[test]
    fn producer_numbers() {
        let max = MAX_PRODUCER_NUMBER.to_string();
        let over = (MAX_PRODUCER_NUMBER + 1).to_string();
        assert_eq!(
            parse_producer(Some("p"), Some(&max), Some(&max)).unwrap().unwrap().seq,
            MAX_PRODUCER_NUMBER
        );
        for bad in
            ["", "-1", "+1", "1.0", "1e3", "abc", " 1", over.as_str(), "99999999999999999999999"]
        {
            assert!(parse_producer(Some("p"), Some(bad), Some("0")).is_err(), "epoch {bad:?}");
            assert!(parse_producer(Some("p"), Some("0"), Some(bad)).is_err(), "seq {bad:?}");
        }
    }

    #[test]
    fn fork_headers() {
        assert_eq!(parse_fork(None, None, None), Ok(None));
        assert_eq!(parse_fork(None, Some("x"), None), Err(HeaderError::ForkWithoutSource));
        let f = |from| parse_fork(Some(from), None, None).unwrap().unwrap().source;
        assert_eq!(f("/v1/stream/a/b"), "a/b");
        assert_eq!(f("http://h:1/v1/stream/a%20b"), "a b");
        assert_eq!(f("plain"), "plain");
        assert!(parse_fork(Some("/v1/stream/"), None, None).is_err());
        assert!(parse_fork(Some("a%FF"), None, None).is_err());
        let off = "0000000000000000_0000000000000004";
        assert_eq!(parse_fork(Some("a"), Some(off), Some("3")).unwrap().unwrap().sub_offset, 3);
        assert!(matches!(parse_fork(Some("a"), Some("-1"), None), Err(HeaderError::ForkOffset(_))));
        for bad in ["-1", "abc", "1.5", "05", "+1", ""] {
            assert!(
                matches!(
                    parse_fork(Some("a"), None, Some(bad)),
                    Err(HeaderError::ForkSubOffset(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(parse_fork(Some("a"), None, Some("0")).unwrap().unwrap().sub_offset, 0);
    }

    #[test]
    fn fork_source_decodes_like_the_router() {
        // Regressions (fuzz/regressions/headers): `%+1` is not an escape and
        // `%zz` stays literal, as in the path `PUT /v1/stream/...` created.
        let f = |from| parse_fork(Some(from), None, None).unwrap().unwrap().source;
        assert_eq!(f("/v1/stream/a%+1b"), "a%+1b");
        assert_eq!(f("/v1/stream/a%-1b"), "a%-1b");
        assert_eq!(f("a%zz"), "a%zz");
        assert_eq!(f("a%2"), "a%2");
        assert_eq!(f("a%2Fb%20c"), "a/b c");
    }
}
