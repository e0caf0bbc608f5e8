//! The delivery loop: turns pending work into webhook requests.
//!
//! One task per sidecar. A pass runs `ds.subscription_tick` (wakes for
//! subscriptions with pending work, lease expiry) and then takes due
//! webhook wakes with `ds.subscription_deliveries`, which locks them
//! (`FOR UPDATE SKIP LOCKED`) and pushes their due time `in_flight` ahead:
//! several sidecars on one database never take the same wake twice, and a
//! sidecar that dies mid-delivery leaves the wake to be retried by any
//! sidecar after that window. A pass runs after a doorbell notification
//! (at once when idle; passes start at most every [`COALESCE`]), after a
//! subscription write that created a wake, and every [`PERIOD`].
//!
//! Bounded: at most `concurrency` deliveries being sent at once, at most
//! `per_host` at once to one `host:port`, at most [`TAKEN_PER_SLOT`] ×
//! `concurrency` wakes taken at once (a pass only takes as many as it may
//! hold), and a circuit breaker per host ([`super::breaker`]). A wake waits
//! for its host's slot first, holding no sending slot, so a slow host with
//! more wakes than its slots does not delay other hosts' deliveries (the
//! e2e test `a_slow_host_with_many_wakes_does_not_delay_other_hosts` saw
//! 2.2 s when the waiting wakes held sending slots); a wake that gets no
//! slot within [`HOST_WAIT`] is left for the next window.
//! Every
//! failure is logged with the subscription id and wake id, and reported to
//! the database, which persists the next attempt time (the backoff).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use super::breaker::{Admission, Breakers};
use super::keys::Keys;
use super::signing::SIGNATURE_HEADER;
use super::store::{self, Due, Reported};
use super::url_guard::{self, Clients, Target};
use crate::db::Db;
use crate::metrics::{DeliveryLabels, Metrics};

/// Longest time between passes.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Shortest time between the starts of two passes.
pub const COALESCE: Duration = Duration::from_millis(10);
/// Most response bytes read (enough for `{"done": true}` and then some).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How long a delivery waits for a slot of its host.
pub const HOST_WAIT: Duration = Duration::from_secs(2);
/// Wakes taken at once per sending slot: the others wait for a busy host.
pub const TAKEN_PER_SLOT: usize = 2;
/// Wakes one tick starts (and leases it expires). Small, so that with many
/// subscriptions woken by one append the first webhooks leave while later
/// ones are still being started: a full batch asks for the next pass.
const TICK_BATCH: i32 = 100;
/// Hosts remembered by the breakers and the per-host limits.
const MAX_HOSTS: usize = 10_000;

/// Limits of the delivery loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deliveries at once.
    pub concurrency: usize,
    /// Deliveries at once to one host.
    pub per_host: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout (connect, send, response).
    pub timeout: Duration,
    /// Consecutive failures that open a host's breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker waits before a probe.
    pub breaker_cool_down: Duration,
}

/// The delivery loop's state.
pub struct Deliverer {
    db: Db,
    keys: Arc<Keys>,
    clients: Clients,
    metrics: Arc<Metrics>,
    callback_base: String,
    kick: Arc<Notify>,
    limits: Limits,
    /// Deliveries being sent.
    slots: Arc<Semaphore>,
    /// Wakes taken from the database and not finished (sending or waiting).
    taken: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    breakers: Mutex<Breakers>,
    /// The extension may lack the delivery functions (true at start):
    /// a pass first asks whether they exist instead of calling them.
    missing: AtomicBool,
    /// Said so in the log (once until they appear).
    warned_missing: AtomicBool,
}

/// The JSON body of a webhook (PROTOCOL.md §7.1).
#[derive(Serialize)]
struct Notification<'a> {
    subscription_id: &'a str,
    wake_id: &'a str,
    generation: i64,
    streams: &'a RawValue,
    callback_url: String,
    callback_token: &'a str,
}

/// What a receiver's answer means.
#[derive(Debug, PartialEq, Eq)]
pub struct Classified {
    /// What to report.
    pub reported: Reported,
    /// Why it failed.
    pub error: Option<String>,
}

/// Classifies a response: 2xx with a JSON object whose `done` is `true` is
/// `done` (auto-ack), any other 2xx `delivered`, anything else `failed`.
/// A body cut at [`MAX_RESPONSE_BYTES`] is not parsed (`delivered`).
pub fn classify(status: u16, body: &[u8], truncated: bool) -> Classified {
    if !(200..300).contains(&status) {
        return Classified { reported: Reported::Failed, error: Some(format!("HTTP {status}")) };
    }
    let done = !truncated
        && serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("done").and_then(serde_json::Value::as_bool))
            == Some(true);
    Classified { reported: if done { Reported::Done } else { Reported::Delivered }, error: None }
}

impl Deliverer {
    /// A deliverer (its loop starts with [`Deliverer::run`]).
    pub fn new(
        db: Db,
        keys: Arc<Keys>,
        metrics: Arc<Metrics>,
        callback_base: String,
        kick: Arc<Notify>,
        limits: Limits,
    ) -> Result<Deliverer, String> {
        Ok(Deliverer {
            clients: Clients::new(limits.connect_timeout, limits.timeout)?,
            slots: Arc::new(Semaphore::new(limits.concurrency.max(1))),
            taken: Arc::new(Semaphore::new(limits.concurrency.max(1) * TAKEN_PER_SLOT)),
            hosts: Mutex::new(HashMap::new()),
            missing: AtomicBool::new(true),
            warned_missing: AtomicBool::new(false),
            breakers: Mutex::new(Breakers::new(
                limits.breaker_threshold,
                limits.breaker_cool_down,
                MAX_HOSTS,
            )),
            db,
            keys,
            metrics,
            callback_base,
            kick,
            limits,
        })
    }

    /// How long a taken wake is reserved for this sidecar.
    fn in_flight(&self) -> Duration {
        self.limits.timeout + HOST_WAIT + Duration::from_secs(5)
    }

    /// Runs passes until `shutdown` (see the module docs).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let started = tokio::time::Instant::now();
            self.pass().await;
            tokio::select! {
                () = self.kick.notified() => {}
                () = tokio::time::sleep(PERIOD) => {}
                () = shutdown.cancelled() => return,
            }
            // Counted from the last pass's start, not from the kick: a
            // notification after an idle spell starts a pass at once (the
            // append-to-webhook latency), a burst of them still only one
            // pass per COALESCE.
            tokio::select! {
                () = tokio::time::sleep_until(started + COALESCE) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass: tick, then take as many due deliveries as there are free
    /// sending slots (and room for taken wakes); the tick and the first
    /// take share one transaction (one commit on the way from an append to
    /// its webhook). Errors are logged; the next pass tries again.
    async fn pass(self: &Arc<Self>) {
        // Without the functions (an extension not updated yet), only ask
        // whether they have arrived.
        if self.missing.load(Ordering::Relaxed) {
            match store::has_delivery_functions(&self.db).await {
                Ok(true) => {}
                Ok(false) => return self.warn_missing(),
                Err(e) => {
                    tracing::warn!(error = %e, "asking for ds.subscription_tick failed");
                    return;
                }
            }
        }
        let in_flight_ms = i32::try_from(self.in_flight().as_millis()).unwrap_or(i32::MAX);
        let free = self.free_room();
        let first = if free == 0 {
            store::tick(&self.db, TICK_BATCH).await.map(|started| (started, Vec::new()))
        } else {
            store::tick_and_deliveries(&self.db, TICK_BATCH, free as i32, in_flight_ms).await
        };
        let mut due = match first {
            Ok((started, due)) => {
                self.missing.store(false, Ordering::Relaxed);
                self.warned_missing.store(false, Ordering::Relaxed);
                if started >= TICK_BATCH {
                    self.kick.notify_one();
                }
                due
            }
            // Dropped since the last pass (DROP EXTENSION, say).
            Err(e) if e.sqlstate() == Some(&SqlState::UNDEFINED_FUNCTION) => {
                self.missing.store(true, Ordering::Relaxed);
                return self.warn_missing();
            }
            Err(e) => {
                tracing::warn!(error = %e, "ds.subscription_tick / ds.subscription_deliveries failed");
                return;
            }
        };
        let mut asked = free;
        loop {
            let taken = due.len();
            for d in due {
                let Ok(permit) = Arc::clone(&self.taken).try_acquire_owned() else {
                    // Cannot happen (we asked for at most the free room);
                    // the wake is retried after its in-flight window.
                    tracing::warn!(subscription_id = %d.subscription_id, wake_id = %d.wake_id, "no delivery slot");
                    continue;
                };
                let this = Arc::clone(self);
                tokio::spawn(async move { this.deliver(d, permit).await });
            }
            if taken < asked {
                return;
            }
            asked = self.free_room();
            if asked == 0 {
                return;
            }
            due = match store::deliveries(&self.db, asked as i32, in_flight_ms).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "ds.subscription_deliveries failed");
                    return;
                }
            };
        }
    }

    fn warn_missing(&self) {
        if !self.warned_missing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the extension has no subscription functions (ALTER EXTENSION durable_streams \
                 UPDATE?): webhook delivery is idle"
            );
        }
    }

    /// How many more wakes this sidecar may take now.
    fn free_room(&self) -> usize {
        self.slots.available_permits().min(self.taken.available_permits()).min(100)
    }

    /// Delivers one wake and reports the result: waits for a slot of its
    /// host, then for a sending slot, at most [`HOST_WAIT`] in all.
    async fn deliver(self: Arc<Self>, due: Due, _taken: OwnedSemaphorePermit) {
        if due.attempts > 0 {
            self.metrics.webhook_retries.inc();
        }
        let target = match url_guard::target(&due.url) {
            Ok(t) => t,
            Err(rejected) => {
                return self
                    .finish(&due, None, "refused", Reported::Failed, Some(rejected.to_string()))
                    .await;
            }
        };
        let admission = self
            .breakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(&target.host, Instant::now());
        if admission == Admission::Refused {
            let error = format!("circuit breaker open for {}", target.host);
            return self.finish(&due, None, "circuit_open", Reported::Failed, Some(error)).await;
        }
        let host_slot = self.host_slots(&target.host);
        let slots = Arc::clone(&self.slots);
        let permits = async {
            Some((host_slot.acquire_owned().await.ok()?, slots.acquire_owned().await.ok()?))
        };
        let Ok(Some(_permits)) = tokio::time::timeout(HOST_WAIT, permits).await else {
            // Left for the next in-flight window; nothing is reported.
            tracing::info!(subscription_id = %due.subscription_id, wake_id = %due.wake_id, host = %target.host, "host busy: delivery deferred");
            self.metrics
                .webhook_deliveries
                .get_or_create(&DeliveryLabels { outcome: "deferred" })
                .inc();
            return;
        };
        let started = Instant::now();
        let result = self.send(&due, &target).await;
        self.metrics.webhook_latency.observe(started.elapsed().as_secs_f64());
        let (label, classified) = match result {
            Ok(c) => (c.reported.as_str(), c),
            Err(Send::Refused(reason)) => {
                ("refused", Classified { reported: Reported::Failed, error: Some(reason) })
            }
            Err(Send::Failed(reason)) => {
                ("failed", Classified { reported: Reported::Failed, error: Some(reason) })
            }
            Err(Send::NoKey(reason)) => {
                tracing::error!(subscription_id = %due.subscription_id, wake_id = %due.wake_id, error = %reason, "no webhook signing key: delivery deferred");
                return;
            }
        };
        let label = if classified.reported == Reported::Failed {
            label
        } else {
            classified.reported.as_str()
        };
        self.finish(&due, Some(&target.host), label, classified.reported, classified.error).await;
    }

    /// Sends the signed notification; reads at most
    /// [`MAX_RESPONSE_BYTES`] of the answer.
    async fn send(&self, due: &Due, target: &Target) -> Result<Classified, Send> {
        let key = self.keys.current(&self.db).await.map_err(|e| Send::NoKey(e.to_string()))?;
        let streams = RawValue::from_string(due.streams.clone())
            .map_err(|e| Send::Failed(format!("bad wake snapshot: {e}")))?;
        let body = serde_json::to_vec(&Notification {
            subscription_id: &due.subscription_id,
            wake_id: &due.wake_id,
            generation: due.generation,
            streams: &streams,
            callback_url: callback_url(&self.callback_base, &due.subscription_id),
            callback_token: &due.callback_token,
        })
        .map_err(|e| Send::Failed(e.to_string()))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let signature = key.signature_header(now, &body);
        let mut response = self
            .clients
            .of(target)
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| match url_guard::refusal(&e) {
                Some(r) => Send::Refused(r.to_string()),
                None => Send::Failed(describe(&e)),
            })?;
        let status = response.status().as_u16();
        let mut read = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| Send::Failed(describe(&e)))? {
            if read.len() + chunk.len() > MAX_RESPONSE_BYTES {
                truncated = true;
                break;
            }
            read.extend_from_slice(&chunk);
        }
        Ok(classify(status, &read, truncated))
    }

    /// Updates the breaker and metrics, logs, and reports to the database.
    async fn finish(
        &self,
        due: &Due,
        host: Option<&str>,
        label: &'static str,
        reported: Reported,
        error: Option<String>,
    ) {
        self.metrics.webhook_deliveries.get_or_create(&DeliveryLabels { outcome: label }).inc();
        if let Some(host) = host {
            let mut breakers = self.breakers.lock().unwrap_or_else(PoisonError::into_inner);
            if reported == Reported::Failed {
                if breakers.failed(host, Instant::now()) {
                    tracing::warn!(%host, "webhook circuit breaker opened");
                }
            } else {
                breakers.succeeded(host);
            }
            self.metrics.webhook_breakers_open.set(breakers.open_count() as i64);
        }
        if let Some(error) = &error {
            tracing::warn!(subscription_id = %due.subscription_id, wake_id = %due.wake_id, generation = due.generation, attempts = due.attempts, %error, "webhook delivery failed");
        } else {
            tracing::debug!(subscription_id = %due.subscription_id, wake_id = %due.wake_id, outcome = label, "webhook delivered");
        }
        match store::delivery_result(&self.db, due, reported, error.as_deref()).await {
            Ok(true) if reported == Reported::Done => self.kick.notify_one(), // maybe a next wake
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(subscription_id = %due.subscription_id, wake_id = %due.wake_id, "delivery result ignored: the wake changed meanwhile")
            }
            Err(e) => {
                tracing::warn!(subscription_id = %due.subscription_id, wake_id = %due.wake_id, error = %e, "could not record the delivery result; retried after the in-flight window")
            }
        }
    }

    /// The slots of `host` (the map is bounded: idle hosts are dropped).
    fn host_slots(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if !hosts.contains_key(host) && hosts.len() >= MAX_HOSTS {
            let per_host = self.limits.per_host;
            hosts.retain(|_, s| s.available_permits() < per_host);
        }
        Arc::clone(
            hosts
                .entry(host.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_host.max(1)))),
        )
    }
}

/// Why a send failed.
enum Send {
    /// The URL's host resolved to a forbidden address.
    Refused(String),
    /// Connection, timeout, TLS, protocol.
    Failed(String),
    /// This sidecar has no signing key (a database problem, not the receiver's).
    NoKey(String),
}

/// The error of the HTTP client with its causes (the top level alone says
/// little: "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// What `encodeURIComponent` leaves alone (RFC 3986 unreserved plus
/// `!*'()`), so an id is encoded the way a JavaScript client would.
const COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The callback URL of a subscription under the public base.
pub fn callback_url(base: &str, subscription_id: &str) -> String {
    let id = percent_encoding::utf8_percent_encode(subscription_id, COMPONENT);
    format!("{base}/subscriptions/{id}/callback")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_classified() {
        let c = |s, b: &str| classify(s, b.as_bytes(), false).reported;
        assert_eq!(c(200, r#"{"done": true}"#), Reported::Done);
        assert_eq!(c(204, r#"{"done":true,"x":1}"#), Reported::Done);
        assert_eq!(c(200, r#"{"done": false}"#), Reported::Delivered);
        assert_eq!(c(200, r#"{"done": "true"}"#), Reported::Delivered);
        assert_eq!(c(200, ""), Reported::Delivered);
        assert_eq!(c(200, "not json"), Reported::Delivered);
        assert_eq!(c(200, "[true]"), Reported::Delivered);
        assert_eq!(classify(200, br#"{"done":true}"#, true).reported, Reported::Delivered);
        let failed = classify(500, br#"{"done": true}"#, false);
        assert_eq!(
            failed,
            Classified { reported: Reported::Failed, error: Some("HTTP 500".into()) }
        );
        assert_eq!(c(302, ""), Reported::Failed, "redirects are not followed");
        assert_eq!(c(404, ""), Reported::Failed);
    }

    #[test]
    fn callback_urls_encode_the_id() {
        let base = "http://127.0.0.1:1/v1/stream/__ds";
        assert_eq!(callback_url(base, "sub-1"), format!("{base}/subscriptions/sub-1/callback"));
        assert_eq!(callback_url(base, "a/b c"), format!("{base}/subscriptions/a%2Fb%20c/callback"));
    }
}
