//! `ds-sidecar`: the HTTP face of durable_streams.
//!
//! A thin server speaking the Durable Streams protocol (PROTOCOL.md §4–§10)
//! over the extension's SQL API. Each request maps to one `ds.*` call; the
//! sidecar owns header syntax, live modes (long-poll, SSE), cursors, ETags,
//! caching and security headers, limits, health and metrics.
//!
//! Modules: [`config`] (flags), [`auth`] (who a request acts as),
//! [`protocol`] (pure header/cursor/SSE code), [`http`] (routes and the
//! error mapping), [`db`] (pool and SQL calls), [`tail`] (the LISTEN
//! fan-out), [`failover`] (riding out the loss of the primary),
//! [`replica`] (reads on hot standbys), [`ratelimit`], [`server`]
//! (connection limits), [`metrics`], [`subscriptions`] (the `__ds` routes
//! and webhook delivery).
// Unsafe code only where a module says why (`memory`).
#![deny(unsafe_code)]

pub mod auth;
pub mod batch;
pub mod config;
pub mod db;
pub mod failover;
pub mod flight;
pub mod http;
mod memory;
pub mod metrics;
pub mod protocol;
pub mod ratelimit;
pub mod replica;
pub mod server;
pub mod subscriptions;
pub mod tail;

use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::config::AuthMode;
use crate::http::cors::Origins;

/// Shared state of every handler: one `Arc`, so the clone that every
/// middleware layer and handler takes per request is one atomic increment
/// (cloning the fields, a cancellation token among them, cost about 2% of
/// an append's sidecar CPU; `benches/results/profile.md`).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct SharedState {
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
    /// Who requests act as.
    pub auth: Arc<auth::Authenticator>,
    /// Request rate limits (`None`: off).
    pub limiter: Option<Arc<ratelimit::Limiter>>,
    /// Cross-origin access.
    pub cors: Origins,
    /// Read replicas (`None` without `--read-database-url`).
    pub replicas: Option<Arc<replica::Router>>,
    /// Subscriptions: signing key cache and the delivery loop.
    pub subscriptions: Arc<subscriptions::Subscriptions>,
}

impl AppState {
    /// Builds the state (the pool connects lazily).
    pub fn new(config: Config, shutdown: CancellationToken) -> Result<AppState, RunError> {
        let metrics = Arc::new(metrics::Metrics::default());
        let mut db = db::Db::new(&config)?;
        db.count_discards_in(metrics.db_connections_discarded.clone());
        let auth = auth::Authenticator::from_config(&config, db.login_role().map(str::to_owned))
            .map_err(RunError::Config)?;
        let cors = Origins::parse(&config.cors_origins).map_err(RunError::Config)?;
        let replicas = replica::Router::new(&config, db.clone(), Arc::clone(&metrics))
            .map_err(RunError::Config)?;
        let db = match &replicas {
            Some(router) => db.with_reads(Arc::clone(router)),
            None => db,
        };
        // Half the pool at most for appends that wait for a locked stream.
        let batcher = batch::Batcher::start(
            db.clone(),
            config.append_lanes,
            batch::Limits {
                max_batch: config.max_append_batch,
                max_batch_bytes: config.max_append_batch_bytes,
                queue: 1024,
                detour_connections: config.pool_size / 2,
                // A batch may wait for the one before it on its lane.
                answer_timeout: db.call_timeout().map(|t| t.saturating_mul(2)),
            },
            auth.enabled(),
            Arc::clone(&metrics),
        );
        let limiter = ratelimit::Limiter::new(
            config.rate_limit_per_second,
            config.rate_limit_burst,
            config.rate_limit_max_keys,
        )
        .map(Arc::new);
        let subscriptions =
            subscriptions::Subscriptions::new(&config, db.clone(), Arc::clone(&metrics))
                .map_err(RunError::Config)?;
        Ok(AppState(Arc::new(SharedState {
            subscriptions: Arc::new(subscriptions),
            db,
            batcher: Arc::new(batcher),
            flights: Arc::new(flight::Flights::default()),
            hub: Arc::new(tail::TailHub::new(config.max_waiters_per_stream)),
            metrics,
            auth: Arc::new(auth),
            limiter,
            cors,
            replicas,
            shutdown,
            long_poll_slots: Arc::new(Semaphore::new(config.max_long_poll_waiters)),
            sse_slots: Arc::new(Semaphore::new(config.max_sse_clients)),
            config: Arc::new(config),
        })))
    }
}

/// Why the server could not run.
#[derive(Debug, Error)]
pub enum RunError {
    /// Bad database URL.
    #[error(transparent)]
    Url(#[from] db::UrlError),
    /// An unusable configuration (keys, origins, exposure).
    #[error("{0}")]
    Config(String),
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves on `listener` (and `/metrics` on `metrics_listener`) until
/// `shutdown` is cancelled, then drains in-flight requests (live requests
/// end early because they watch the same token).
pub async fn run(
    config: Config,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    config.check_exposure().map_err(RunError::Config)?;
    let state = AppState::new(config, shutdown.clone())?;
    let addr = listener.local_addr()?;
    match state.config.auth {
        AuthMode::Jwt => {
            tracing::info!(%addr, "authentication: jwt (each request runs as its token's role)")
        }
        AuthMode::None if state.config.allow_anonymous && !addr.ip().is_loopback() => {
            tracing::warn!(
                %addr,
                "authentication: none on a non-loopback address (--allow-anonymous): anyone who can \
                 reach this port can read and write every stream the sidecar's database role can"
            )
        }
        AuthMode::None => tracing::info!(%addr, "authentication: none (loopback only)"),
    }
    failover::check_hosts(&db::connection_config(&state.config)?);
    // With read replicas, wake-ups pass the gate that holds them until the
    // watermark has passed what they announce (replica/).
    let (wake, replica_tasks): (Arc<dyn tail::Wake>, _) = match &state.replicas {
        Some(router) => {
            let timeout = std::time::Duration::from_millis(state.config.connect_timeout_ms.max(1));
            router.check(timeout).await.map_err(RunError::Config)?;
            let (gate, tasks) = replica::start(router, &state.hub, &shutdown);
            (gate, tasks)
        }
        None => (Arc::clone(&state.hub) as Arc<dyn tail::Wake>, Vec::new()),
    };
    // Notifications also kick the subscription delivery loop.
    let wake: Arc<dyn tail::Wake> = Arc::new(subscriptions::Doorbell {
        inner: wake,
        kick: Arc::clone(&state.subscriptions.kick),
    });
    let delivery_task = state.subscriptions.start(shutdown.clone());
    let listen_task = tokio::spawn(tail::listen(
        db::listen_config(&state.config)?,
        wake,
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
    let limiter_task = state
        .limiter
        .clone()
        .map(|l| tokio::spawn(ratelimit::Limiter::housekeeping(l, shutdown.clone())));
    let metrics_task = match metrics_listener {
        Some(l) => {
            tracing::info!(addr = %l.local_addr()?, "metrics listening");
            Some(tokio::spawn(server::serve_metrics(
                l,
                http::metrics_app(state.clone()),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    tracing::info!(%addr, "ds-sidecar listening");
    let limits = server::Limits {
        max_connections: state.config.max_connections,
        header_read_timeout: std::time::Duration::from_millis(state.config.header_read_timeout_ms),
    };
    let metrics = Arc::clone(&state.metrics);
    let served = server::serve(listener, http::app(state), limits, metrics, shutdown.clone()).await;
    shutdown.cancel();
    let _ = listen_task.await;
    let _ = delivery_task.await;
    for t in replica_tasks {
        let _ = t.await;
    }
    let _ = trim_task.await;
    if let Some(t) = limiter_task {
        let _ = t.await;
    }
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    served?;
    Ok(())
}
