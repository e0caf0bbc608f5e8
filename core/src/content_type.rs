//! Content types: validation, comparison and the modes they select.
//!
//! Streams compare content types by their essence (`type/subtype`, lower
//! case, parameters dropped), so a stream created as
//! `application/json; charset=utf-8` accepts appends sent as
//! `application/json`.

use crate::error::{Error, Result};

/// Default content type of a stream created without one.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// How a stream's bytes are stored and returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `application/json`: message boundaries kept, reads return an array.
    Json,
    /// `text/*`: bytes, which must be UTF-8.
    Text,
    /// Anything else: opaque bytes.
    Bytes,
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
}

/// Validates `type/subtype[; params]` and returns the lower-case essence.
pub fn essence(content_type: &str) -> Result<String> {
    let bad = || Error::InvalidContentType(content_type.chars().take(200).collect());
    if content_type.len() > 256 || content_type.chars().any(char::is_control) {
        return Err(bad());
    }
    let media = content_type.split(';').next().unwrap_or("").trim();
    let (ty, sub) = media.split_once('/').ok_or_else(bad)?;
    if !is_token(ty) || !is_token(sub) {
        return Err(bad());
    }
    Ok(media.to_ascii_lowercase())
}

/// The storage mode selected by a (valid) content type.
pub fn mode(content_type: &str) -> Result<Mode> {
    let e = essence(content_type)?;
    Ok(if e == "application/json" {
        Mode::Json
    } else if e.starts_with("text/") {
        Mode::Text
    } else {
        Mode::Bytes
    })
}

/// Whether two content types name the same media type.
pub fn same(a: &str, b: &str) -> bool {
    matches!((essence(a), essence(b)), (Ok(x), Ok(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn essences() {
        assert_eq!(essence("application/json").unwrap(), "application/json");
        assert_eq!(essence("Application/JSON; charset=utf-8").unwrap(), "application/json");
        assert_eq!(essence(" text/plain ;x=y").unwrap(), "text/plain");
        assert_eq!(essence("application/vnd.api+json").unwrap(), "application/vnd.api+json");
        for bad in ["", "json", "/json", "application/", "a b/c", "text/pl ain", "x/y\n"] {
            assert!(essence(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(mode("application/json; charset=utf-8").unwrap(), Mode::Json);
        assert_eq!(mode("text/plain").unwrap(), Mode::Text);
        assert_eq!(mode("application/octet-stream").unwrap(), Mode::Bytes);
        assert_eq!(mode("application/ndjson").unwrap(), Mode::Bytes);
    }

    #[test]
    fn comparison_ignores_case_and_params() {
        assert!(same("application/json; charset=utf-8", "APPLICATION/json"));
        assert!(!same("application/json", "text/plain"));
        assert!(!same("bogus", "bogus"));
    }
}
