//! The outermost middleware, as one service: the request id (the client's
//! `x-request-id`, or one made up here, echoed on the response), the request
//! span every log line of the request carries, the §12.7 security headers,
//! the request metrics, and a log line for every 5xx.
//!
//! Why one hand-written service instead of the tower-http layers and two
//! `from_fn` middlewares it replaces: each of those wrapped the request's
//! future in its own (often boxed) future, so the state of a waiting
//! long-poll was nested and copied five times over (about 9 KB per waiter)
//! and every request paid the allocations and moves. [`FrontFuture`] holds
//! the inner future inline, next to the few fields it needs afterwards.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use tower::{Layer, Service};

use crate::AppState;
use crate::metrics::{LatencyLabels, RequestLabels};

use super::STREAM_PREFIX;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Wraps a service in [`Front`].
#[derive(Clone)]
pub struct FrontLayer {
    state: AppState,
    ids: SequentialRequestId,
}

impl FrontLayer {
    pub fn new(state: AppState) -> FrontLayer {
        FrontLayer { state, ids: SequentialRequestId::default() }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front { inner, state: self.state.clone(), ids: self.ids.clone() }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    state: AppState,
    ids: SequentialRequestId,
}

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = FrontFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let request_id = match req.headers().get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.next();
                req.headers_mut().insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        let method = method_label(req.method());
        let route = route_label(req.uri().path());
        let span = tracing::info_span!(
            "request",
            method = %req.method(),
            path = %req.uri().path(),
            request_id = request_id.to_str().unwrap_or("-"),
        );
        let inner = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        FrontFuture {
            inner,
            done: Some(Done {
                span,
                state: self.state.clone(),
                request_id,
                method,
                route,
                started: Instant::now(),
            }),
        }
    }
}

/// What the response needs once the inner future is ready.
struct Done {
    span: tracing::Span,
    state: AppState,
    request_id: HeaderValue,
    method: &'static str,
    route: &'static str,
    started: Instant,
}

pin_project_lite::pin_project! {
    /// The inner service's future, polled inside the request span.
    pub struct FrontFuture<F> {
        #[pin]
        inner: F,
        done: Option<Done>,
    }
}

impl<F, E> Future for FrontFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.done.as_ref().map(|d| d.span.enter());
            ready!(this.inner.poll(cx))
        };
        let Some(done) = this.done.take() else {
            return Poll::Ready(result); // polled after completion: inner's answer
        };
        Poll::Ready(result.map(|mut response| {
            done.finish(&mut response);
            response
        }))
    }
}

impl Done {
    fn finish(self, response: &mut Response) {
        let elapsed = self.started.elapsed();
        let status = response.status();
        let metrics = &self.state.metrics;
        metrics
            .http_latency
            .get_or_create(&LatencyLabels { route: self.route, method: self.method })
            .observe(elapsed.as_secs_f64());
        let labels =
            RequestLabels { route: self.route, method: self.method, status: status.as_u16() };
        metrics.http_requests.get_or_create(&labels).inc();
        let headers = response.headers_mut();
        headers.entry(X_REQUEST_ID).or_insert(self.request_id);
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("cross-origin"),
        );
        // Stream bodies are served with the stream's content type (text/html
        // included): opened directly, they must not run script on our origin.
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox"));
        let _entered = self.span.enter();
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), latency_ms, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), latency_ms, "request finished");
        }
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn route_label(path: &str) -> &'static str {
    match path {
        p if p.starts_with(crate::subscriptions::route::PREFIX) => "subscriptions",
        p if p.starts_with(STREAM_PREFIX) => "stream",
        "/health" => "health",
        _ => "other",
    }
}

/// Request ids for requests that come without one: a random prefix drawn
/// once per process and a counter, so making one costs no system call.
#[derive(Clone)]
struct SequentialRequestId {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl Default for SequentialRequestId {
    fn default() -> Self {
        let prefix: u64 = rand::random();
        SequentialRequestId { prefix: format!("{prefix:016x}").into(), next: Arc::default() }
    }
}

impl SequentialRequestId {
    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Hex digits, a dash and a number: always a valid header value.
        HeaderValue::try_from(format!("{}-{n}", self.prefix))
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_and_share_the_process_prefix() {
        let ids = SequentialRequestId::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
        assert_eq!(a.split('-').next(), b.split('-').next());
        assert!(a.ends_with("-0") && b.ends_with("-1"), "{a} {b}");
    }

    #[test]
    fn routes_and_methods_get_bounded_labels() {
        assert_eq!(route_label("/v1/stream/a/b"), "stream");
        assert_eq!(route_label("/health"), "health");
        assert_eq!(route_label("/anything/else"), "other");
        assert_eq!(method_label(&Method::PATCH), "OTHER");
        assert_eq!(method_label(&Method::POST), "POST");
    }
}
