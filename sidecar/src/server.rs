//! The HTTP server loop (hyper-util), with the limits `axum::serve` does not
//! offer: at most `--max-connections` open connections (more are closed at
//! once), and a client must send its request headers within
//! `--header-read-timeout-ms` (slowloris), also before the first byte and
//! between keep-alive requests. Shutdown is graceful: the listener closes,
//! in-flight requests finish (live ones end on the shutdown token), then
//! connections close, or after 10 s regardless.
//!
//! The protocol is chosen from the bytes peeked before serving (HTTP/2 with
//! prior knowledge, else HTTP/1), not by hyper-util's `auto` builder: that
//! one reads the first bytes itself and replays them, which left every
//! HTTP/1 connection a read buffer twice hyper's usual 8 KiB (16 KiB per
//! idle SSE client; 160 MB of 10,000).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use crate::metrics::{GaugeGuard, Metrics};

/// Limits of the server loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most open connections.
    pub max_connections: usize,
    /// Time allowed for a request's headers.
    pub header_read_timeout: Duration,
}

/// How long shutdown waits for open connections.
const DRAIN: Duration = Duration::from_secs(10);

/// The first bytes of an HTTP/2 connection with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve<S>(
    listener: TcpListener,
    app: S,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2.timer(TokioTimer::new());
    let builders = Arc::new((http1, http2));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically out of file descriptors: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let builders = Arc::clone(&builders);
        let app = app.clone();
        let open = GaugeGuard::new(&metrics.connections);
        let header_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            let Some(protocol) = first_bytes_in_time(&stream, header_timeout).await else {
                return;
            };
            let service = TowerToHyperService::new(tower::service_fn(move |req: HyperRequest| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            }));
            let io = TokioIo::new(stream);
            let (http1, http2) = &*builders;
            let ended = match protocol {
                Protocol::Http1 => watcher.watch(http1.serve_connection(io, service)).await,
                Protocol::Http2 => watcher.watch(http2.serve_connection(io, service)).await,
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => tracing::warn!("connections still open after {DRAIN:?}; closing"),
    }
    Ok(())
}

type HyperRequest = hyper::Request<Incoming>;

/// The protocol a connection speaks, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// HTTP/2 with prior knowledge (h2c): the connection began with the preface.
    Http2,
}

/// What the first `peeked` bytes of a connection say: `None` while they are
/// a proper prefix of the HTTP/2 preface (more bytes are needed).
fn protocol_of(peeked: &[u8]) -> Option<Protocol> {
    if peeked.len() >= H2_PREFACE.len() && peeked[..H2_PREFACE.len()] == *H2_PREFACE {
        Some(Protocol::Http2)
    } else if H2_PREFACE.starts_with(peeked) {
        None
    } else {
        Some(Protocol::Http1)
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from HTTP/2
/// (hyper's own header timeout only starts after that), at most `timeout`.
/// `None`: nothing (or only part of the HTTP/2 preface) came in time, or the
/// client closed. The bytes stay in the socket for hyper to read.
async fn first_bytes_in_time(stream: &TcpStream, timeout: Duration) -> Option<Protocol> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 24];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => return None,
        };
        if n == 0 {
            return None;
        }
        if let Some(protocol) = protocol_of(&buf[..n]) {
            return Some(protocol);
        }
        // A prefix of the HTTP/2 preface: wait for the rest (rare).
        tokio::time::sleep(Duration::from_millis(10)).await;
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// Serves the metrics app on its own listener until `shutdown` (plain
/// axum: it is local and not exposed to clients).
pub async fn serve_metrics(
    listener: TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_http1_from_http2() {
        assert_eq!(protocol_of(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(protocol_of(b"P"), None, "could still become the preface");
        assert_eq!(protocol_of(b"PRI * HTTP/2.0"), None);
        assert_eq!(protocol_of(b"PUT /v1/stream/a"), Some(Protocol::Http1));
        assert_eq!(protocol_of(H2_PREFACE), Some(Protocol::Http2));
        let mut longer = H2_PREFACE.to_vec();
        longer.extend_from_slice(b"\x00\x00");
        assert_eq!(protocol_of(&longer), Some(Protocol::Http2));
        assert_eq!(protocol_of(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Some(Protocol::Http1));
    }
}
