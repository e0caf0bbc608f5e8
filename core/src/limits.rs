//! Validation of stream paths and other bounded inputs.

use crate::error::{Error, Result};

/// Longest accepted stream path, in bytes. Paths appear in every URL and in
/// every notification payload (under 8000 bytes), so they are kept short.
pub const MAX_PATH_BYTES: usize = 1024;

/// Largest producer epoch / seq: 2^53 - 1, so JavaScript clients can hold it.
pub const MAX_PRODUCER_NUMBER: i64 = (1 << 53) - 1;

/// Longest accepted producer id, in bytes.
pub const MAX_PRODUCER_ID_BYTES: usize = 256;

/// Longest sliding TTL, and furthest `expires_at` from now: 100 years of
/// 365.25 days, in seconds. Far below where `last_access + ttl` overflows a
/// timestamp (2^53 seconds does), so expiry arithmetic never fails.
pub const MAX_TTL_SECONDS: i64 = 3_155_760_000;

/// Checks that `path` can name a stream.
pub fn validate_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(Error::InvalidPath("path is empty".into()));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::InvalidPath(format!(
            "path is {} bytes long, the maximum is {MAX_PATH_BYTES}",
            path.len()
        )));
    }
    if let Some(c) = path.chars().find(|c| c.is_control()) {
        return Err(Error::InvalidPath(format!(
            "path contains the control character U+{:04X}",
            u32::from(c)
        )));
    }
    Ok(())
}

/// Checks a sliding TTL given in seconds.
pub fn validate_ttl(ttl_seconds: Option<i64>, has_expires_at: bool) -> Result<()> {
    match ttl_seconds {
        Some(ttl) if ttl < 0 => Err(Error::InvalidTtl(ttl)),
        Some(ttl) if ttl > MAX_TTL_SECONDS => Err(Error::TtlTooLarge(ttl)),
        Some(_) if has_expires_at => Err(Error::TtlWithExpiresAt),
        _ => Ok(()),
    }
}

/// Latest accepted `expires_at`: 9999-12-31T23:59:59.999999Z, the last
/// instant an RFC 3339 timestamp (four-digit year) can name, in
/// microseconds since the Unix epoch. Excludes `infinity`.
pub const MAX_EXPIRES_AT_UNIX_MICROS: i64 = 253_402_300_799_999_999;

/// Checks an absolute expiry, in microseconds since the Unix epoch: finite
/// and expressible in RFC 3339 (the past is accepted: the stream is then
/// expired at once).
pub fn validate_expires_at(unix_micros: i64) -> Result<()> {
    if unix_micros > MAX_EXPIRES_AT_UNIX_MICROS { Err(Error::ExpiresAtTooLate) } else { Ok(()) }
}

/// Checks that a body is within the configured maximum.
pub fn validate_body_size(size: usize, max: usize) -> Result<()> {
    if size > max { Err(Error::BodyTooLarge { size, max }) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert!(validate_path("a/b-c_d.e~f").is_ok());
        assert!(validate_path("ünïcödé/🙂").is_ok());
        assert!(validate_path(&"x".repeat(MAX_PATH_BYTES)).is_ok());
        for bad in ["", "a\nb", "a\u{0}b", "tab\there", "del\u{7f}"] {
            assert!(matches!(validate_path(bad), Err(Error::InvalidPath(_))), "{bad:?}");
        }
        assert!(validate_path(&"x".repeat(MAX_PATH_BYTES + 1)).is_err());
    }

    #[test]
    fn ttl() {
        assert!(validate_ttl(None, false).is_ok());
        assert!(validate_ttl(None, true).is_ok());
        assert!(validate_ttl(Some(0), false).is_ok());
        assert_eq!(validate_ttl(Some(-1), false), Err(Error::InvalidTtl(-1)));
        assert_eq!(validate_ttl(Some(5), true), Err(Error::TtlWithExpiresAt));
        assert!(validate_ttl(Some(MAX_TTL_SECONDS), false).is_ok());
        assert_eq!(
            validate_ttl(Some(MAX_TTL_SECONDS + 1), false),
            Err(Error::TtlTooLarge(MAX_TTL_SECONDS + 1))
        );
        assert_eq!(validate_ttl(Some(1 << 53), false), Err(Error::TtlTooLarge(1 << 53)));
        assert!(Error::TtlTooLarge(1 << 53).to_string().contains("maximum of 3155760000 seconds"));
    }

    #[test]
    fn expires_at() {
        assert!(validate_expires_at(0).is_ok());
        assert!(validate_expires_at(i64::MIN).is_ok(), "-infinity: expired at once");
        assert!(validate_expires_at(MAX_EXPIRES_AT_UNIX_MICROS).is_ok());
        assert_eq!(
            validate_expires_at(MAX_EXPIRES_AT_UNIX_MICROS + 1),
            Err(Error::ExpiresAtTooLate)
        );
        assert_eq!(validate_expires_at(i64::MAX), Err(Error::ExpiresAtTooLate), "infinity");
    }

    #[test]
    fn body_size() {
        assert!(validate_body_size(10, 10).is_ok());
        assert_eq!(validate_body_size(11, 10), Err(Error::BodyTooLarge { size: 11, max: 10 }));
    }
}
