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
pub const EXPOSED_HEADERS: [&str; 15] = [
    "stream-next-offset",
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
}
