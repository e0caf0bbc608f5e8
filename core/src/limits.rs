//! Validation of stream paths and other bounded inputs.

use crate::error::{Error, Result};

/// Longest accepted stream path, in bytes. Paths appear in every URL and in
/// every notification payload (under 8000 bytes), so they are kept short.
pub const MAX_PATH_BYTES: usize = 1024;

/// Largest producer epoch / seq: 2^53 - 1, so JavaScript clients can hold it.
pub const MAX_PRODUCER_NUMBER: i64 = (1 << 53) - 1;

/// Longest accepted producer id, in bytes.
pub const MAX_PRODUCER_ID_BYTES: usize = 256;

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
        Some(_) if has_expires_at => Err(Error::TtlWithExpiresAt),
        _ => Ok(()),
    }
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
    }

    #[test]
    fn body_size() {
        assert!(validate_body_size(10, 10).is_ok());
        assert_eq!(validate_body_size(11, 10), Err(Error::BodyTooLarge { size: 11, max: 10 }));
    }
}
