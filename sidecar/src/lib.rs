//! `ds-sidecar`: the HTTP face of durable_streams.
//!
//! A thin server speaking the Durable Streams protocol (PROTOCOL.md §4–§10)
//! over the extension's SQL API. Each request maps to one `ds.*` call; the
//! sidecar owns header syntax, live modes (long-poll, SSE), cursors, ETags,
//! caching and security headers, limits, health and metrics.
//!
//! Modules: [`config`] (flags), [`protocol`] (pure header/cursor/SSE code),
//! [`http`] (routes and the error mapping), [`db`] (pool and SQL calls),
//! [`tail`] (the LISTEN fan-out), [`metrics`].
// Unsafe code only where a module says why (`memory`).
#![deny(unsafe_code)]

pub mod batch;
pub mod config;
pub mod db;
pub mod flight;
pub mod http;
mod memory;
pub mod metrics;
pub mod protocol;
pub mod tail;

use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// Startup configuration.
    pub config: Arc<Config>,
    /// Pool and SQL calls.
    pub db: db::Db,
    /// Live-tailing fan-out.
    pub hub: Arc<tail::TailHub>,
    /// Metrics registry.
    pub metrics: Arc<metrics::Metrics>,
    /// Cancelled at shutdown; live handlers stop waiting.
    pub shutdown: CancellationToken,
    /// Permits for waiting long-polls.
    pub long_poll_slots: Arc<Semaphore>,
    /// Permits for SSE connections.
    pub sse_slots: Arc<Semaphore>,
    /// Group commit of appends.
    pub batcher: Arc<batch::Batcher>,
    /// Shared reads of woken live waiters.
    pub flights: Arc<flight::Flights>,
}

impl AppState {
    /// Builds the state (the pool connects lazily).
    pub fn new(config: Config, shutdown: CancellationToken) -> Result<AppState, RunError> {
        let db = db::Db::new(&config.database_url, config.pool_size, config.lock_timeout_ms)?;
        // Half the pool at most for appends that wait for a locked stream.
        let batcher = batch::Batcher::start(
            db.clone(),
            config.append_lanes,
            config.max_append_batch,
            1024,
            config.pool_size / 2,
        );
        Ok(AppState {
            db,
            batcher: Arc::new(batcher),
            flights: Arc::new(flight::Flights::default()),
            hub: Arc::new(tail::TailHub::new(config.max_waiters_per_stream)),
            metrics: Arc::new(metrics::Metrics::default()),
            shutdown,
            long_poll_slots: Arc::new(Semaphore::new(config.max_long_poll_waiters)),
            sse_slots: Arc::new(Semaphore::new(config.max_sse_clients)),
            config: Arc::new(config),
        })
    }
}

/// Why the server could not run.
#[derive(Debug, Error)]
pub enum RunError {
    /// Bad database URL.
    #[error(transparent)]
    Url(#[from] db::UrlError),
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves on `listener` until `shutdown` is cancelled, then drains in-flight
/// requests (live requests end early because they watch the same token).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let state = AppState::new(config, shutdown.clone())?;
    let listen_task = tokio::spawn(tail::listen(
        state.config.database_url.clone(),
        Arc::clone(&state.hub),
        Arc::clone(&state.metrics),
        shutdown.clone(),
    ));
    let live = {
        let (sse, polls) = (Arc::clone(&state.sse_slots), Arc::clone(&state.long_poll_slots));
        let (max_sse, max_polls) =
            (state.config.max_sse_clients, state.config.max_long_poll_waiters);
        move || {
            max_sse.saturating_sub(sse.available_permits())
                + max_polls.saturating_sub(polls.available_permits())
        }
    };
    let trim_task = tokio::spawn(memory::trim_after_bursts(live, shutdown.clone()));
    tracing::info!(addr = %listener.local_addr()?, "ds-sidecar listening");
    let app = axum::ServiceExt::<axum::extract::Request>::into_make_service(http::app(state));
    let served =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned()).await;
    shutdown.cancel();
    let _ = listen_task.await;
    let _ = trim_task.await;
    served?;
    Ok(())
}
