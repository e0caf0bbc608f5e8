//! Subscriptions (PROTOCOL.md §6-7): the reserved `/v1/stream/__ds/...`
//! routes and webhook delivery.
//!
//! Every piece of state (subscriptions, links and acked offsets, wakes,
//! leases, delivery attempts and next-attempt times, signing keys) lives in
//! the extension's tables and changes through its `ds.try_subscription_*`
//! and `ds.subscription_*` functions ([`store`]); this module holds only
//! caches and limits, so any number of sidecars can serve one database and
//! a restarted sidecar carries on where the last one stopped.
//!
//! - [`route`]: parsing of the reserved paths (pure); [`routes`]: the
//!   handlers; [`error`]: the one error-code → status mapping.
//! - [`delivery`]: the loop that ticks the scheduler and sends webhooks;
//!   [`url_guard`]: where a webhook may go (no SSRF, no DNS rebinding);
//!   [`signing`]: Ed25519 signatures; [`keys`]: the cached active key;
//!   [`breaker`]: a circuit breaker per host.

pub mod breaker;
pub mod delivery;
pub mod error;
pub mod keys;
pub mod route;
pub mod routes;
pub mod signing;
pub mod store;
pub mod url_guard;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Config;
use crate::db::Db;
use crate::metrics::Metrics;
use crate::tail::Wake;

/// The subscription side of the shared state.
pub struct Subscriptions {
    /// The cached signing key.
    pub keys: Arc<keys::Keys>,
    /// Wakes the delivery loop for a pass.
    pub kick: Arc<Notify>,
    /// `{public base}/v1/stream/__ds`.
    pub control_base: String,
    /// The delivery loop's state.
    pub deliverer: Arc<delivery::Deliverer>,
}

impl Subscriptions {
    /// Builds the state of `config` (the loop starts with [`Self::start`]).
    pub fn new(config: &Config, db: Db, metrics: Arc<Metrics>) -> Result<Subscriptions, String> {
        let control_base = format!("{}{}", config.public_base()?, route::PREFIX);
        let keys = Arc::new(keys::Keys::default());
        let kick = Arc::new(Notify::new());
        let limits = delivery::Limits {
            concurrency: config.webhook_concurrency,
            per_host: config.webhook_concurrency_per_host,
            connect_timeout: Duration::from_millis(config.webhook_connect_timeout_ms.max(1)),
            timeout: Duration::from_millis(config.webhook_timeout_ms.max(1)),
            breaker_threshold: config.webhook_breaker_threshold,
            breaker_cool_down: Duration::from_millis(config.webhook_breaker_cool_down_ms),
        };
        let deliverer = Arc::new(delivery::Deliverer::new(
            db,
            Arc::clone(&keys),
            metrics,
            control_base.clone(),
            Arc::clone(&kick),
            limits,
        )?);
        Ok(Subscriptions { keys, kick, control_base, deliverer })
    }

    /// The JWKS URL announced in subscription documents.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.control_base)
    }

    /// Asks the delivery loop for a pass soon.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Starts the delivery loop.
    pub fn start(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(Arc::clone(&self.deliverer).run(shutdown))
    }
}

/// The doorbell: passes notifications on to live readers and kicks the
/// delivery loop (an append may be pending work of a subscription).
pub struct Doorbell {
    /// Live readers' wake-ups.
    pub inner: Arc<dyn Wake>,
    /// The delivery loop's trigger.
    pub kick: Arc<Notify>,
}

impl Wake for Doorbell {
    fn wake_from_payload(&self, payload: &str) {
        self.inner.wake_from_payload(payload);
        self.kick.notify_one();
    }

    fn wake_all(&self) {
        self.inner.wake_all();
        self.kick.notify_one();
    }
}
