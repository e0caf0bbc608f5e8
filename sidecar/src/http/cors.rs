//! Cross-origin access (`--cors-origins`).
//!
//! Default: none. A browser page on another origin gets no
//! `Access-Control-Allow-Origin`, so it can neither read responses nor send
//! requests that need a preflight. Allowed origins see the protocol's
//! response headers and may send its request headers plus `Authorization`.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::protocol::headers::{EXPOSED_HEADERS, REQUEST_HEADERS};

/// Which origins may make cross-origin requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// No cross-origin access (no CORS headers at all).
    None,
    /// Any origin (`*`, given explicitly).
    Any,
    /// These origins, exactly (`scheme://host[:port]`, lowercase).
    List(Vec<String>),
}

impl Origins {
    /// Parses `--cors-origins`: empty, `*`, or a comma-separated list of
    /// origins.
    pub fn parse(text: &str) -> Result<Origins, String> {
        let items: Vec<&str> = text.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if items.is_empty() {
            return Ok(Origins::None);
        }
        if items.contains(&"*") {
            return if items.len() == 1 {
                Ok(Origins::Any)
            } else {
                Err("--cors-origins: `*` cannot be combined with other origins".into())
            };
        }
        items.iter().map(|o| parse_origin(o)).collect::<Result<Vec<_>, _>>().map(Origins::List)
    }

    /// The CORS layer for these origins; `None` when there is no
    /// cross-origin access.
    pub fn layer(&self) -> Option<CorsLayer> {
        let allow = match self {
            Origins::None => return None,
            Origins::Any => AllowOrigin::from(Any),
            Origins::List(list) => AllowOrigin::list(
                list.iter().map(|o| HeaderValue::from_str(o).expect("checked by parse")),
            ),
        };
        Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::DELETE,
                    Method::HEAD,
                    Method::OPTIONS,
                ])
                .allow_headers(REQUEST_HEADERS.map(HeaderName::from_static))
                .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
                .max_age(Duration::from_secs(86_400)),
        )
    }
}

/// One origin: `http` or `https`, a host, an optional port, nothing else.
fn parse_origin(origin: &str) -> Result<String, String> {
    let bad =
        || format!("--cors-origins: {origin:?} is not an origin (scheme://host[:port], no path)");
    let (scheme, rest) = origin.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => (h, Some(p)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']' | b':'));
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    if !host_ok || !port_ok {
        return Err(bad());
    }
    Ok(format!("{scheme}://{}", rest.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_origin_lists() {
        assert_eq!(Origins::parse(""), Ok(Origins::None));
        assert_eq!(Origins::parse(" , "), Ok(Origins::None));
        assert_eq!(Origins::parse("*"), Ok(Origins::Any));
        assert_eq!(
            Origins::parse("https://App.example.com, http://localhost:3000"),
            Ok(Origins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into()
            ]))
        );
        assert!(Origins::parse("https://[::1]:8080").is_ok());
        for bad in [
            "*,https://a.example",
            "a.example",
            "https://a.example/",
            "https://a.example/path",
            "ftp://a.example",
            "https://",
            "https://a.example:",
            "https://a.example:99999x",
            "https://user@a.example",
            "null",
        ] {
            assert!(Origins::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn no_layer_by_default() {
        assert!(Origins::None.layer().is_none());
        assert!(Origins::Any.layer().is_some());
    }
}
