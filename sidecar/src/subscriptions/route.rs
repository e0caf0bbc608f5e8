//! Parsing of the reserved `/v1/stream/__ds/...` paths (pure).
//!
//! The raw (still percent-encoded) path is split on `/` first and each
//! part decoded after, so an encoded stream path (`manual%2Fb`) stays one
//! part. Which method each route accepts is decided here too.

use axum::http::Method;
use percent_encoding::percent_decode_str;

/// The reserved prefix (PROTOCOL.md §6), under the stream root.
pub const PREFIX: &str = "/v1/stream/__ds";

/// What a subscription route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `PUT /subscriptions/:id`.
    Put,
    /// `GET /subscriptions/:id`.
    Get,
    /// `DELETE /subscriptions/:id`.
    Delete,
    /// `POST /subscriptions/:id/streams`.
    AddStreams,
    /// `DELETE /subscriptions/:id/streams/:path`.
    RemoveStream(String),
    /// `POST .../callback` (webhook; wake token).
    Callback,
    /// `POST .../claim` (pull-wake; normal authentication).
    Claim,
    /// `POST .../ack` (pull-wake; wake token).
    Ack,
    /// `POST .../release` (pull-wake; wake token).
    Release,
}

impl Action {
    /// Whether the request is authenticated by its wake token (bearer)
    /// instead of the sidecar's authentication.
    pub fn uses_wake_token(&self) -> bool {
        matches!(self, Action::Callback | Action::Ack | Action::Release)
    }
}

/// A parsed `__ds` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /jwks.json`.
    Jwks,
    /// A subscription operation.
    Subscription {
        /// The decoded subscription id.
        id: String,
        /// What to do.
        action: Action,
    },
}

/// Why a `__ds` request has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoute {
    /// No such route (404 `SUBSCRIPTION_NOT_FOUND`).
    Unknown,
    /// The route exists, the method does not (405).
    Method,
    /// A part is not valid percent-encoded UTF-8 (400).
    Encoding,
}

/// Routes `method` on the raw request `path`; `None` when the path is not
/// under [`PREFIX`] at all.
pub fn parse(method: &Method, path: &str) -> Option<Result<Route, NoRoute>> {
    let rest = path.strip_prefix(PREFIX)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None; // `/v1/stream/__dsx`: an ordinary stream.
    }
    Some(route(method, rest.trim_start_matches('/')))
}

fn route(method: &Method, rest: &str) -> Result<Route, NoRoute> {
    if rest == "jwks.json" {
        return allow(method, &[Method::GET, Method::HEAD]).map(|()| Route::Jwks);
    }
    let Some(rest) = rest.strip_prefix("subscriptions/") else { return Err(NoRoute::Unknown) };
    let mut parts = rest.split('/');
    let id = decode(parts.next().unwrap_or_default())?;
    if id.is_empty() {
        return Err(NoRoute::Unknown);
    }
    let tail: Vec<&str> = parts.collect();
    let action = match tail.as_slice() {
        [] => match *method {
            Method::PUT => Action::Put,
            Method::GET => Action::Get,
            Method::DELETE => Action::Delete,
            _ => return Err(NoRoute::Method),
        },
        ["streams"] => allow(method, &[Method::POST]).map(|()| Action::AddStreams)?,
        ["streams", path @ ..] => {
            let path = decode(&path.join("/"))?;
            if path.is_empty() {
                return Err(NoRoute::Unknown);
            }
            allow(method, &[Method::DELETE])?;
            Action::RemoveStream(path)
        }
        [one] => {
            let action = match *one {
                "callback" => Action::Callback,
                "claim" => Action::Claim,
                "ack" => Action::Ack,
                "release" => Action::Release,
                _ => return Err(NoRoute::Unknown),
            };
            allow(method, &[Method::POST])?;
            action
        }
        _ => return Err(NoRoute::Unknown),
    };
    Ok(Route::Subscription { id, action })
}

fn allow(method: &Method, allowed: &[Method]) -> Result<(), NoRoute> {
    if allowed.contains(method) { Ok(()) } else { Err(NoRoute::Method) }
}

fn decode(part: &str) -> Result<String, NoRoute> {
    percent_decode_str(part).decode_utf8().map(|s| s.into_owned()).map_err(|_| NoRoute::Encoding)
}

/// The token of `Authorization: Bearer <token>`, if present and non-empty.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: &str, action: Action) -> Option<Result<Route, NoRoute>> {
        Some(Ok(Route::Subscription { id: id.into(), action }))
    }

    #[test]
    fn subscription_routes() {
        let p = |m: Method, path: &str| parse(&m, path);
        let base = "/v1/stream/__ds/subscriptions";
        assert_eq!(p(Method::PUT, &format!("{base}/s1")), sub("s1", Action::Put));
        assert_eq!(p(Method::GET, &format!("{base}/s%201")), sub("s 1", Action::Get));
        assert_eq!(p(Method::DELETE, &format!("{base}/s1")), sub("s1", Action::Delete));
        assert_eq!(p(Method::POST, &format!("{base}/s1/streams")), sub("s1", Action::AddStreams));
        assert_eq!(
            p(Method::DELETE, &format!("{base}/s1/streams/manual%2Fb")),
            sub("s1", Action::RemoveStream("manual/b".into()))
        );
        assert_eq!(
            p(Method::DELETE, &format!("{base}/s1/streams/a/b")),
            sub("s1", Action::RemoveStream("a/b".into()))
        );
        for (name, action) in [
            ("callback", Action::Callback),
            ("claim", Action::Claim),
            ("ack", Action::Ack),
            ("release", Action::Release),
        ] {
            assert_eq!(p(Method::POST, &format!("{base}/s1/{name}")), sub("s1", action));
            assert_eq!(p(Method::GET, &format!("{base}/s1/{name}")), Some(Err(NoRoute::Method)));
        }
        assert!(Action::Callback.uses_wake_token() && !Action::Claim.uses_wake_token());
    }

    #[test]
    fn other_reserved_paths() {
        assert_eq!(parse(&Method::GET, "/v1/stream/__ds/jwks.json"), Some(Ok(Route::Jwks)));
        assert_eq!(parse(&Method::POST, "/v1/stream/__ds/jwks.json"), Some(Err(NoRoute::Method)));
        for unknown in [
            "/v1/stream/__ds",
            "/v1/stream/__ds/",
            "/v1/stream/__ds/nope",
            "/v1/stream/__ds/subscriptions/",
            "/v1/stream/__ds/subscriptions/s1/nope",
            "/v1/stream/__ds/subscriptions/s1/claim/x",
            "/v1/stream/__ds/subscriptions/s1/streams/",
        ] {
            assert_eq!(parse(&Method::GET, unknown), Some(Err(NoRoute::Unknown)), "{unknown}");
        }
        assert_eq!(
            parse(&Method::PATCH, "/v1/stream/__ds/subscriptions/s"),
            Some(Err(NoRoute::Method))
        );
        assert_eq!(
            parse(&Method::GET, "/v1/stream/__ds/subscriptions/%FF"),
            Some(Err(NoRoute::Encoding))
        );
        assert_eq!(parse(&Method::GET, "/v1/stream/__dsx"), None);
        assert_eq!(parse(&Method::GET, "/v1/stream/events/a"), None);
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(Some("Bearer dst_1")), Some("dst_1"));
        assert_eq!(bearer(Some("bearer dst_1")), Some("dst_1"));
        assert_eq!(bearer(Some("Basic x")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }
}
