//! HTTP routes, middleware and response helpers.
//!
//! Streams live under `/v1/stream/{*path}`, behind authentication and the
//! rate limit; `/health` (unauthenticated, says only ok / not ok) is on the
//! same port, `/metrics` on its own listener ([`metrics_app`]). Every
//! response carries the browser security headers of §12.7, including
//! `Content-Security-Policy: sandbox` (stream content is served with the
//! stream's own content type and must never run script on this origin);
//! CORS headers only for `--cors-origins`.

pub mod append;
pub mod cors;
pub mod error;
mod front;
mod live;
mod ops;
mod streams;

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{self, HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tower::util::option_layer;
use tower::{Service, ServiceBuilder};
use tower_http::compression::{CompressionBody, CompressionLayer};

use crate::AppState;
use crate::auth::{AuthError, Principal};
use crate::ratelimit::address_key;

pub use error::ApiError;

/// The prefix under which streams are served.
pub const STREAM_PREFIX: &str = "/v1/stream/";

/// The complete application with all middleware.
///
/// The middleware wraps the router as ONE service stack, applied outside
/// it, rather than `Router::layer` (which wraps every route's endpoint and
/// clones the whole stack, CORS lists included, on every request).
pub fn app(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    let cors = state.cors.layer();
    let router = Router::new()
        .route(
            "/v1/stream/{*path}",
            get(streams::read)
                .put(streams::create)
                .post(streams::append)
                .head(streams::head)
                .delete(streams::delete)
                .options(streams::options),
        )
        // The reserved control routes (PROTOCOL.md §6) come before stream
        // operations and authenticate per route (subscriptions::routes).
        .route(crate::subscriptions::route::PREFIX, any(crate::subscriptions::routes::handle))
        .route("/v1/stream/__ds/", any(crate::subscriptions::routes::handle))
        .route("/v1/stream/__ds/{*rest}", any(crate::subscriptions::routes::handle))
        .route("/health", get(ops::health))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state.clone());
    ServiceBuilder::new()
        .map_response(IntoResponse::into_response)
        .layer(front::FrontLayer::new(state))
        .layer(option_layer(cors))
        .map_response(unwrap_uncompressed)
        .layer(CompressionLayer::new())
        .service(router)
}

/// Takes the body back out of the compression layer's wrapper when it was
/// not compressed (204s, SSE, small or unwanted bodies: nearly every
/// response). Converting the wrapper to a `Body` would box it whole, 5.8 KB
/// for the encoder states it can hold: one allocation per request, and per
/// open SSE connection for as long as it lasts. A compressed response says
/// so in `Content-Encoding` (the layer never compresses one that has it), so
/// only those keep the wrapper.
fn unwrap_uncompressed(response: Response<CompressionBody<Body>>) -> Response {
    let (parts, body) = response.into_parts();
    let body = if parts.headers.contains_key(header::CONTENT_ENCODING) {
        Body::new(body)
    } else {
        body.into_inner()
    };
    Response::from_parts(parts, body)
}

/// The app of the metrics listener: `GET /metrics` only.
pub fn metrics_app(state: AppState) -> Router {
    Router::new().route("/metrics", get(ops::metrics)).with_state(state)
}

/// The authenticated caller of a stream request: extracting it
/// authenticates the request and applies the rate limit (every stream
/// handler takes it first, so a refused request reads no body).
pub(crate) struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        admit(state, &parts.headers, &parts.uri, &parts.extensions, true).map(Caller)
    }
}

/// Authenticates a request (unless `authenticate` is false: the request
/// carries its own credential, and acts as [`Principal::anonymous`]) and
/// applies the rate limit, keyed by the token's subject or role, else by
/// the client's address.
pub(crate) fn admit(
    state: &AppState,
    headers: &HeaderMap,
    uri: &http::Uri,
    extensions: &http::Extensions,
    authenticate: bool,
) -> Result<Principal, ApiError> {
    let principal = if authenticate {
        let authorization = match headers.get(header::AUTHORIZATION).map(HeaderValue::to_str) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(_)) => Some(""), // not text: malformed
        };
        match state.auth.authenticate(authorization, uri.query()) {
            Ok(p) => p,
            Err(e) => {
                if matches!(e, AuthError::Missing | AuthError::Invalid(_)) {
                    state.metrics.unauthenticated.inc();
                }
                return Err(ApiError::from(e));
            }
        }
    } else {
        Principal::anonymous()
    };
    if let Some(limiter) = &state.limiter {
        let key = match (&principal.subject, &principal.role) {
            (Some(sub), _) => format!("sub:{sub}"),
            (None, Some(role)) => format!("role:{role}"),
            (None, None) => match extensions.get::<ConnectInfo<std::net::SocketAddr>>() {
                Some(ConnectInfo(addr)) => address_key(addr.ip()),
                None => "ip:unknown".to_owned(),
            },
        };
        if let Err(limited) = limiter.check(&key) {
            state.metrics.rate_limited.inc();
            return Err(ApiError::TooManyRequests { retry_after_secs: limited.retry_after_secs() });
        }
    }
    Ok(principal)
}

/// Response headers built from strings that come from the database or from
/// our own formatting (offsets, content types, numbers).
#[derive(Debug, Default)]
pub struct Headers(pub HeaderMap);

impl Headers {
    /// Sets `name` to `value`; a value that is not a valid header (which the
    /// SQL API never produces) is logged and skipped.
    pub fn set(&mut self, name: HeaderName, value: impl AsRef<str>) -> &mut Self {
        match HeaderValue::from_str(value.as_ref()) {
            Ok(v) => {
                self.0.insert(name, v);
            }
            Err(_) => tracing::warn!(header = %name, "skipping invalid header value"),
        }
        self
    }

    /// Sets `name: true` when `flag` holds.
    pub fn flag(&mut self, name: HeaderName, flag: bool) -> &mut Self {
        if flag {
            self.0.insert(name, HeaderValue::from_static("true"));
        }
        self
    }
}

/// Cache-Control of cacheable reads (§10.1).
pub const CACHEABLE: &str = "public, max-age=60, stale-while-revalidate=300";
/// Cache-Control of cacheable reads with authentication: only the client's
/// own cache may keep them (a shared cache would serve them to anyone).
pub const CACHEABLE_PRIVATE: &str = "private, max-age=60, stale-while-revalidate=300";

impl AppState {
    /// The Cache-Control of cacheable reads under this configuration.
    pub fn cacheable(&self) -> &'static str {
        if self.auth.enabled() { CACHEABLE_PRIVATE } else { CACHEABLE }
    }
}

/// Cache-Control of responses that must not be cached.
pub const NO_STORE: &str = "no-store";
