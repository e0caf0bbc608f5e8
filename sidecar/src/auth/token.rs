//! Where a request's token comes from, and what a role name may look like.
//!
//! Pure functions: the `Authorization: Bearer` header (RFC 6750 §2.1) or
//! the `token` query parameter (§2.3; browsers' `EventSource` cannot set
//! headers). Both at once is a client error, as RFC 6750 requires.

/// The query parameter that may carry a token.
pub const TOKEN_PARAM: &str = "token";

/// Why no token could be taken from a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extract {
    /// Neither the header nor the parameter is there.
    Missing,
    /// The header is there but is not `Bearer <token>`, or the parameter is
    /// empty or holds characters a JWT never has.
    Malformed,
    /// Both the header and the parameter carry a token.
    Both,
}

/// The token of a request, from the `Authorization` header value (if any)
/// and the raw query string (if any).
pub fn extract<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Result<&'a str, Extract> {
    let from_header = authorization.map(bearer).transpose()?;
    let from_query = query.and_then(query_token).map(check_chars).transpose()?;
    match (from_header, from_query) {
        (Some(_), Some(_)) => Err(Extract::Both),
        (Some(t), None) | (None, Some(t)) => Ok(t),
        (None, None) => Err(Extract::Missing),
    }
}

/// `Bearer <token>` (the scheme is case-insensitive).
fn bearer(value: &str) -> Result<&str, Extract> {
    let (scheme, token) = value.trim().split_once(' ').ok_or(Extract::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Extract::Malformed);
    }
    check_chars(token.trim_start())
}

/// The raw value of the first `token=` pair of a query string.
fn query_token(query: &str) -> Option<&str> {
    query.split('&').find_map(|pair| pair.strip_prefix(TOKEN_PARAM)?.strip_prefix('='))
}

/// A JWT is base64url segments joined by dots; anything else (including
/// percent-encoding) is refused before any decoding.
fn check_chars(token: &str) -> Result<&str, Extract> {
    let ok = !token.is_empty()
        && token.len() <= 16 * 1024
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok { Ok(token) } else { Err(Extract::Malformed) }
}

/// The query string without any `token` parameter, for anything that keeps
/// or shows a URL (logs, cache keys). `None` when nothing is left.
pub fn strip_token(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            !pair.is_empty()
                && *pair != TOKEN_PARAM
                && !pair.strip_prefix(TOKEN_PARAM).is_some_and(|rest| rest.starts_with('='))
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Longest role name Postgres keeps (NAMEDATALEN - 1).
const MAX_ROLE_BYTES: usize = 63;

/// Whether `role` may be used as the role a request runs as: a plain SQL
/// identifier (ASCII letter or `_`, then letters, digits, `_` or `$`), at
/// most 63 bytes, and none of the names that would not mean a tenant role:
/// `none` (resets to the sidecar's own role), `public`, and the predefined
/// `pg_*` roles.
pub fn is_valid_role(role: &str) -> bool {
    let mut bytes = role.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$');
    let lower = role.to_ascii_lowercase();
    first_ok
        && rest_ok
        && role.len() <= MAX_ROLE_BYTES
        && lower != "none"
        && lower != "public"
        && !lower.starts_with("pg_")
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoiYSJ9.c2ln";

    #[test]
    fn header_and_query() {
        assert_eq!(extract(Some(&format!("Bearer {T}")), None), Ok(T));
        assert_eq!(extract(Some(&format!("bearer  {T}")), None), Ok(T));
        assert_eq!(extract(None, Some(&format!("offset=-1&token={T}&live=sse"))), Ok(T));
        assert_eq!(extract(None, Some("offset=-1")), Err(Extract::Missing));
        assert_eq!(extract(None, None), Err(Extract::Missing));
        assert_eq!(
            extract(Some(&format!("Bearer {T}")), Some(&format!("token={T}"))),
            Err(Extract::Both)
        );
    }

    #[test]
    fn malformed() {
        for h in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", &format!("Bearer {T} x"), T] {
            assert_eq!(extract(Some(h), None), Err(Extract::Malformed), "{h:?}");
        }
        for q in ["token=", "token=a%2Eb", "token=a b", "token=a+b"] {
            assert_eq!(extract(None, Some(q)), Err(Extract::Malformed), "{q:?}");
        }
        let huge = format!("Bearer {}", "a".repeat(20_000));
        assert_eq!(extract(Some(&huge), None), Err(Extract::Malformed));
        // `tokens=` is another parameter.
        assert_eq!(extract(None, Some("tokens=abc")), Err(Extract::Missing));
    }

    #[test]
    fn stripping() {
        assert_eq!(
            strip_token(&format!("offset=-1&token={T}&live=sse")).as_deref(),
            Some("offset=-1&live=sse")
        );
        assert_eq!(strip_token(&format!("token={T}")), None);
        assert_eq!(strip_token("token&tokens=1").as_deref(), Some("tokens=1"));
        assert_eq!(strip_token("offset=5").as_deref(), Some("offset=5"));
    }

    #[test]
    fn role_names() {
        for ok in ["tenant_a", "A", "_x", "t$1", &"r".repeat(63)] {
            assert!(is_valid_role(ok), "{ok:?}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "a b",
            "a\"b",
            "none",
            "NONE",
            "public",
            "pg_read_server_files",
            "PG_monitor",
            "é",
            &"r".repeat(64),
        ] {
            assert!(!is_valid_role(bad), "{bad:?}");
        }
    }
}
