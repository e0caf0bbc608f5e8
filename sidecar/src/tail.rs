//! Live tailing: one LISTEN connection fanned out in-process.
//!
//! [`TailHub`] keeps one `watch` channel per path that somebody is waiting
//! on; a wake-up bumps its version and every subscriber's `changed()` fires.
//! Entries exist only while they have subscribers, and the number of
//! subscribers is bounded by the long-poll and SSE limits, so the map is
//! bounded too. A global generation counter wakes everybody at once.
//!
//! [`listen`] holds one dedicated (unpooled) connection that LISTENs on the
//! channel named by `ds.notify_channel()` (a private channel: tenants can
//! neither LISTEN to it nor NOTIFY on it), asked again at every
//! (re)connect; an extension without that function announces on the public
//! `durable_streams`. A notification only says "this path may have
//! changed": waiters always re-read with `ds.read_chunk`. Notifications sent
//! while the connection is down are lost, so after every (re)connect every
//! waiter is woken to re-check the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls};
use tokio_util::sync::CancellationToken;

use ds_core::Offset;
use ds_core::notification::{self, Announcement, CHANNEL};

use crate::metrics::Metrics;

struct Entry {
    tx: watch::Sender<u64>,
    subscribers: usize,
    /// The state (tail, closed) this process last woke the path for after
    /// its own commit: the notification announcing that same state wakes
    /// nobody again (without this, every fan-out would run twice).
    echo: Option<(Offset, bool)>,
}

/// In-process fan-out of "stream changed" wake-ups.
pub struct TailHub {
    paths: Mutex<HashMap<String, Entry>>,
    everyone: watch::Sender<u64>,
    max_per_path: usize,
    /// Wake-ups so far (any path): a read that starts after this counter
    /// reached N has seen every change announced by wake-ups 1..=N.
    seq: AtomicU64,
}

/// A path already has as many waiters as allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathFull;

impl TailHub {
    /// A hub allowing at most `max_per_path` subscribers on one path.
    pub fn new(max_per_path: usize) -> TailHub {
        TailHub {
            paths: Mutex::new(HashMap::new()),
            everyone: watch::channel(0).0,
            max_per_path,
            seq: AtomicU64::new(0),
        }
    }

    /// Subscribes to wake-ups of `path`. Subscribe *before* reading, so that
    /// a change committed after the read is never missed.
    pub fn subscribe(self: &Arc<Self>, path: &str) -> Result<Subscription, PathFull> {
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = paths.entry(path.to_owned()).or_insert_with(|| Entry {
            tx: watch::channel(0).0,
            subscribers: 0,
            echo: None,
        });
        if entry.subscribers >= self.max_per_path {
            return Err(PathFull);
        }
        entry.subscribers += 1;
        let rx = entry.tx.subscribe();
        drop(paths);
        Ok(Subscription {
            hub: Arc::clone(self),
            path: path.to_owned(),
            rx,
            everyone: self.everyone.subscribe(),
        })
    }

    /// The number of wake-ups so far (see [`crate::flight`]).
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// Wakes the subscribers of `path`, if any.
    pub fn wake(&self, path: &str) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = paths.get_mut(path) {
            entry.echo = None;
            entry.tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wakes the subscribers of `path` after a commit of this process that
    /// left the stream at `tail`, `closed` or not; the notification of that
    /// same state will then be skipped.
    pub fn wake_committed(&self, path: &str, tail: Offset, closed: bool) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = paths.get_mut(path) {
            entry.echo = Some((tail, closed));
            entry.tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wakes the subscribers of `path` for an announced state, unless they
    /// were already woken for exactly that state by [`Self::wake_committed`].
    fn wake_announced(&self, path: &str, tail: Offset, closed: bool) {
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = paths.get_mut(path) else { return };
        if entry.echo.take() == Some((tail, closed)) {
            return;
        }
        self.seq.fetch_add(1, Ordering::SeqCst);
        entry.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Wakes every subscriber of every path.
    pub fn wake_all(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        self.everyone.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Number of paths with at least one subscriber.
    pub fn watched_paths(&self) -> usize {
        self.paths.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Wakes the paths named by a notification payload (format in
    /// `ds_core::notification`). Anything unparseable wakes everybody: a hint
    /// is never trusted, but never dropped either.
    pub fn wake_from_payload(&self, payload: &str) {
        for announcement in notification::parse(payload) {
            match announcement {
                Announcement::Advanced { path, tail, closed } => {
                    self.wake_announced(&path, tail, closed)
                }
                Announcement::Deleted { path } => self.wake(&path),
                Announcement::Everything => self.wake_all(),
            }
        }
    }

    fn unsubscribe(&self, path: &str) {
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = paths.get_mut(path) {
            entry.subscribers -= 1;
            if entry.subscribers == 0 {
                paths.remove(path);
            }
        }
    }
}

/// What the LISTEN connection wakes: the hub itself, or, with read
/// replicas, the gate in front of it (`replica/`).
pub trait Wake: Send + Sync + 'static {
    /// Wakes the paths a notification payload names.
    fn wake_from_payload(&self, payload: &str);
    /// Wakes everybody.
    fn wake_all(&self);
}

impl Wake for TailHub {
    fn wake_from_payload(&self, payload: &str) {
        TailHub::wake_from_payload(self, payload);
    }
    fn wake_all(&self) {
        TailHub::wake_all(self);
    }
}

/// One waiter's interest in one path; unsubscribes on drop.
pub struct Subscription {
    hub: Arc<TailHub>,
    path: String,
    rx: watch::Receiver<u64>,
    everyone: watch::Receiver<u64>,
}

impl Subscription {
    /// Resolves at the next wake-up of this path (or of everybody) after the
    /// subscription was made or last woke.
    pub async fn changed(&mut self) {
        tokio::select! {
            r = self.rx.changed() => { if r.is_err() { std::future::pending::<()>().await } }
            r = self.everyone.changed() => { if r.is_err() { std::future::pending::<()>().await } }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.path);
    }
}

/// Runs the LISTEN connection until `shutdown`, reconnecting with backoff.
pub async fn listen(
    database: tokio_postgres::Config,
    hub: Arc<dyn Wake>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            r = listen_once(&database, &hub, &metrics) => r,
            () = shutdown.cancelled() => return,
        };
        metrics.listen_connected.set(0);
        // Whatever happened, notifications may have been lost: re-check all.
        hub.wake_all();
        match result {
            Ok(()) => tracing::warn!("LISTEN connection closed; reconnecting"),
            Err(e) => tracing::warn!(error = ?e, "LISTEN connection failed; reconnecting"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = MIN_BACKOFF;
        }
        metrics.listen_reconnects.inc();
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The channel to LISTEN on: `ds.notify_channel()`, or the public channel
/// of an extension without that function.
async fn channel(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    match client.query_one("SELECT ds.notify_channel()", &[]).await {
        Ok(row) => row.try_get(0),
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => {
            tracing::warn!(
                channel = CHANNEL,
                "ds.notify_channel() does not exist (an extension without private \
                 notifications): listening on the public channel"
            );
            Ok(CHANNEL.to_owned())
        }
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            tracing::error!(
                error = %e,
                "the sidecar may not call ds.notify_channel(): run `GRANT EXECUTE ON FUNCTION \
                 ds.notify_channel() TO <the sidecar's role>`; live reads only see changes \
                 after their timeout until then (retrying)"
            );
            Err(e)
        }
        Err(e) => Err(e),
    }
}

async fn listen_once(
    database: &tokio_postgres::Config,
    hub: &Arc<dyn Wake>,
    metrics: &Metrics,
) -> Result<(), tokio_postgres::Error> {
    let limit = crate::failover::connect_limit(database);
    let Ok(connected) = tokio::time::timeout(limit, database.connect(NoTls)).await else {
        tracing::warn!(?limit, "LISTEN connection attempt timed out");
        return Ok(());
    };
    let (client, mut connection) = connected?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // The connection must be driven while the channel is asked for.
    let setup = async {
        let channel = channel(&client).await?;
        client.batch_execute(&format!("LISTEN {}", quote_ident(&channel))).await?;
        Ok::<_, tokio_postgres::Error>(channel)
    };
    tokio::pin!(setup);
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut setup, if !listening => {
                let channel = r?;
                listening = true;
                metrics.listen_connected.set(1);
                tracing::info!(%channel, "listening for stream changes");
                // Anything committed before LISTEN took effect was not announced.
                hub.wake_all();
            }
            msg = messages.next() => match msg {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    metrics.notifications.inc();
                    hub.wake_from_payload(n.payload());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn woken(sub: &mut Subscription) -> bool {
        let fut = sub.changed();
        futures_util::FutureExt::now_or_never(fut).is_some()
    }

    #[tokio::test]
    async fn wakes_only_the_named_path() {
        let hub = Arc::new(TailHub::new(100));
        let mut a = hub.subscribe("a").unwrap();
        let mut b = hub.subscribe("b b").unwrap();
        assert!(!woken(&mut a));
        hub.wake_from_payload("0000000000000000_0000000000000004 b b");
        assert!(!woken(&mut a));
        assert!(woken(&mut b));
        assert!(!woken(&mut b), "a wake-up is consumed once");
        hub.wake_from_payload("- a");
        assert!(woken(&mut a));
    }

    #[tokio::test]
    async fn multi_line_and_garbage_payloads() {
        let hub = Arc::new(TailHub::new(100));
        let mut a = hub.subscribe("a").unwrap();
        let mut b = hub.subscribe("b").unwrap();
        hub.wake_from_payload("1 a\n2 b");
        assert!(woken(&mut a) && woken(&mut b));
        hub.wake_from_payload("garbage");
        assert!(woken(&mut a) && woken(&mut b));
    }

    #[tokio::test]
    async fn wake_all_and_wake_before_wait() {
        let hub = Arc::new(TailHub::new(100));
        let mut a = hub.subscribe("a").unwrap();
        hub.wake("a");
        // A wake between subscribe and wait is not lost.
        assert!(woken(&mut a));
        hub.wake_all();
        assert!(woken(&mut a));
    }

    #[tokio::test]
    async fn the_announcement_of_our_own_commit_wakes_nobody_twice() {
        let hub = Arc::new(TailHub::new(100));
        let mut a = hub.subscribe("a").unwrap();
        hub.wake_committed("a", Offset(4), false);
        assert!(woken(&mut a));
        let seq = hub.seq();
        hub.wake_from_payload("0000000000000000_0000000000000004 a");
        assert!(!woken(&mut a), "the same state was announced");
        assert_eq!(hub.seq(), seq);
        // Anything else still wakes: a later tail, a closure at the same
        // tail, and the same state announced a second time.
        hub.wake_committed("a", Offset(4), false);
        assert!(woken(&mut a));
        hub.wake_from_payload("! 0000000000000000_0000000000000004 a");
        assert!(woken(&mut a), "closed at the same tail");
        hub.wake_from_payload("! 0000000000000000_0000000000000004 a");
        assert!(woken(&mut a));
        hub.wake_committed("a", Offset(4), false);
        hub.wake_from_payload("0000000000000000_0000000000000009 a");
        assert!(woken(&mut a), "a later tail");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("durable_streams"), "\"durable_streams\"");
        assert_eq!(quote_ident("a\"b; NOTIFY x"), "\"a\"\"b; NOTIFY x\"");
    }

    #[test]
    fn entries_are_removed_with_the_last_subscriber() {
        let hub = Arc::new(TailHub::new(100));
        let a1 = hub.subscribe("a").unwrap();
        let a2 = hub.subscribe("a").unwrap();
        assert_eq!(hub.watched_paths(), 1);
        drop(a1);
        assert_eq!(hub.watched_paths(), 1);
        drop(a2);
        assert_eq!(hub.watched_paths(), 0);
        hub.wake("a");
        assert_eq!(hub.watched_paths(), 0);
    }

    #[test]
    fn bounds_subscribers_per_path() {
        let hub = Arc::new(TailHub::new(2));
        let a1 = hub.subscribe("a").unwrap();
        let _a2 = hub.subscribe("a").unwrap();
        assert_eq!(hub.subscribe("a").err(), Some(PathFull));
        assert!(hub.subscribe("b").is_ok(), "other paths are unaffected");
        drop(a1);
        assert!(hub.subscribe("a").is_ok());
    }
}
