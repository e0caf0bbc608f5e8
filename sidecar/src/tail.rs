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
//! (re)connect and every [`CHANNEL_RECHECK`] (the extension dropped and
//! created again announces on a new one); an extension without that
//! function announces on the public `durable_streams`. A notification only says "this path may have
//! changed": waiters always re-read with `ds.read_chunk`. Notifications sent
//! while the connection is down are lost, so after every (re)connect every
//! waiter is woken to re-check the database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
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
    /// The bytes of this process's latest committed append to the path,
    /// for waiters at exactly its start (see [`Fresh`]).
    fresh: Option<Arc<Fresh>>,
    /// The latest state (tail, closed) any wake-up of this entry named:
    /// our own commits' answers reach [`TailHub::wake_appended`] in any
    /// order, and one older than this must neither replace [`Fresh`] nor
    /// set `echo` (see there).
    latest: Option<(Offset, bool)>,
}

/// The body of an append this process committed, with where it starts and
/// ends: waiters whose next read would start exactly at `start` take it
/// instead of reading it back from the database (one SQL round trip less
/// between a commit and an SSE event). Committed bytes at an offset never
/// change, so it stays correct whatever else happens to the stream; a later
/// append wakes the waiters again. Bounded: bodies up to
/// [`FRESH_MAX_BODY`], at most [`FRESH_MAX_TOTAL`] bytes over all paths.
pub struct Fresh {
    pub start: Offset,
    pub body: Bytes,
    pub tail: Offset,
    pub closed: bool,
    /// What the first waiter to take it built from it (SSE sessions render
    /// the events of one chunk once for all of them).
    pub chunk: OnceLock<crate::db::Chunk>,
}

/// Largest append body kept as [`Fresh`].
pub const FRESH_MAX_BODY: usize = 64 * 1024;
/// Most bytes kept as [`Fresh`] over all paths.
pub const FRESH_MAX_TOTAL: usize = 16 * 1024 * 1024;

/// In-process fan-out of "stream changed" wake-ups.
pub struct TailHub {
    paths: Mutex<HashMap<String, Entry>>,
    everyone: watch::Sender<u64>,
    max_per_path: usize,
    /// Wake-ups so far (any path): a read that starts after this counter
    /// reached N has seen every change announced by wake-ups 1..=N.
    seq: AtomicU64,
    /// Bytes held in [`Fresh`] bodies (changed under the `paths` lock).
    fresh_bytes: AtomicUsize,
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
            fresh_bytes: AtomicUsize::new(0),
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
            fresh: None,
            latest: None,
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
            entry.latest = None;
            // Perhaps deleted: nobody takes the old stream's bytes any more.
            self.set_fresh(entry, None);
            entry.tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// [`Self::wake_committed`] for an append of `body` that ended at
    /// `tail`: waiters at its start may take the body (see [`Fresh`]).
    ///
    /// Two commits' answers can arrive here in either order (each request's
    /// handler calls this when it runs). A state older than one already
    /// named only wakes: offered as [`Fresh`], it would tell a waiter that
    /// took it that it had reached the tail while a later commit, whose
    /// wake-up that waiter already consumed, lies beyond it, and the waiter
    /// would sleep until the next append (the e2e test `fresh_reads` caught
    /// one missing its last message).
    pub fn wake_appended(&self, path: &str, body: Bytes, tail: Offset, closed: bool) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = paths.get_mut(path) {
            if entry.latest.is_some_and(|latest| latest > (tail, closed)) {
                entry.tx.send_modify(|v| *v = v.wrapping_add(1));
                return;
            }
            entry.latest = Some((tail, closed));
            entry.echo = Some((tail, closed));
            let start = u64::try_from(body.len()).ok().and_then(|n| tail.0.checked_sub(n));
            let fits = body.len() <= FRESH_MAX_BODY
                && self
                    .fresh_bytes
                    .load(Ordering::Relaxed)
                    .saturating_sub(entry.fresh.as_ref().map_or(0, |f| f.body.len()))
                    + body.len()
                    <= FRESH_MAX_TOTAL;
            let fresh = match start {
                Some(start) if fits && !body.is_empty() => Some(Arc::new(Fresh {
                    start: Offset(start),
                    body,
                    tail,
                    closed,
                    chunk: OnceLock::new(),
                })),
                _ => None,
            };
            self.set_fresh(entry, fresh);
            entry.tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// The latest append of `path` this process committed, if it starts
    /// exactly at `from`.
    pub fn fresh(&self, path: &str, from: Offset) -> Option<Arc<Fresh>> {
        let paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        paths.get(path)?.fresh.as_ref().filter(|f| f.start == from).cloned()
    }

    /// Bytes held as [`Fresh`] bodies now.
    pub fn fresh_bytes(&self) -> usize {
        self.fresh_bytes.load(Ordering::Relaxed)
    }

    /// Replaces `entry`'s fresh append, keeping the byte count (the caller
    /// holds the `paths` lock).
    fn set_fresh(&self, entry: &mut Entry, fresh: Option<Arc<Fresh>>) {
        let added = fresh.as_ref().map_or(0, |f| f.body.len());
        let removed = std::mem::replace(&mut entry.fresh, fresh).map_or(0, |f| f.body.len());
        self.fresh_bytes.fetch_add(added, Ordering::Relaxed);
        self.fresh_bytes.fetch_sub(removed, Ordering::Relaxed);
    }

    /// Wakes the subscribers of `path` after a commit of this process that
    /// left the stream at `tail`, `closed` or not; the notification of that
    /// same state will then be skipped.
    /// No body is kept for it (a JSON append, a close, a replica setup).
    pub fn wake_committed(&self, path: &str, tail: Offset, closed: bool) {
        self.wake_appended(path, Bytes::new(), tail, closed);
    }

    /// Wakes the subscribers of `path` for an announced state, unless they
    /// were already woken for exactly that state by [`Self::wake_committed`].
    /// A later state than our own latest commit's (someone else appended
    /// since) retires [`Fresh`]: it no longer reaches the tail.
    fn wake_announced(&self, path: &str, tail: Offset, closed: bool) {
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = paths.get_mut(path) else { return };
        if entry.echo.take() == Some((tail, closed)) {
            return;
        }
        if entry.latest.is_none_or(|latest| latest < (tail, closed)) {
            entry.latest = Some((tail, closed));
            self.set_fresh(entry, None);
        }
        self.seq.fetch_add(1, Ordering::SeqCst);
        entry.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Wakes every subscriber of every path. What they were told before
    /// is forgotten (this follows a (re)connect of the LISTEN connection or
    /// an announcement of `*`: commits may have gone unnamed), so every
    /// waiter reads the database.
    pub fn wake_all(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
        let mut paths = self.paths.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in paths.values_mut() {
            entry.echo = None;
            entry.latest = None;
            self.set_fresh(entry, None);
        }
        drop(paths);
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
                self.set_fresh(entry, None);
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
            Ok(Ended::Closed) => tracing::warn!("LISTEN connection closed; reconnecting"),
            Ok(Ended::ChannelChanged) => tracing::warn!(
                "the notification channel changed (the extension was dropped and created \
                 again?); listening on the new one"
            ),
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

/// What `ds.notify_channel()` answers, or `None` when there is no such
/// function (an extension without private notifications, or none at all).
/// Asking first whether it exists keeps an old extension's server log free
/// of an error every [`CHANNEL_RECHECK`].
async fn ask_channel(
    client: &tokio_postgres::Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("SELECT pg_catalog.to_regprocedure('ds.notify_channel()') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(None);
    }
    match client.query_one("SELECT ds.notify_channel()", &[]).await {
        Ok(row) => row.try_get(0).map(Some),
        // Dropped between the two statements.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The channel to LISTEN on: `ds.notify_channel()`, or the public channel
/// of an extension without that function.
async fn channel(client: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    match ask_channel(client).await {
        Ok(Some(channel)) => Ok(channel),
        Ok(None) => {
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

/// How often the LISTEN connection asks `ds.notify_channel()` again: the
/// name changes when the extension is dropped and created again, and
/// nothing is announced on the old one after that.
pub const CHANNEL_RECHECK: Duration = Duration::from_secs(10);

/// Why a LISTEN connection ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The server closed it (or connecting timed out).
    Closed,
    /// `ds.notify_channel()` names another channel now.
    ChannelChanged,
}

/// Whether `now` (what `ds.notify_channel()` answered) means the channel we
/// listen on is no longer the one announcements go to.
fn channel_changed(
    listening: &str,
    now: Result<Option<String>, tokio_postgres::Error>,
) -> Result<bool, tokio_postgres::Error> {
    match now {
        Ok(Some(name)) => Ok(name != listening),
        // The function is gone (the extension is being dropped or was
        // replaced by one without it): not the channel we listen on.
        Ok(None) => Ok(listening != CHANNEL),
        Err(e) => Err(e),
    }
}

async fn listen_once(
    database: &tokio_postgres::Config,
    hub: &Arc<dyn Wake>,
    metrics: &Metrics,
) -> Result<Ended, tokio_postgres::Error> {
    let limit = crate::failover::connect_limit(database);
    let Ok(connected) = tokio::time::timeout(limit, database.connect(NoTls)).await else {
        tracing::warn!(?limit, "LISTEN connection attempt timed out");
        return Ok(Ended::Closed);
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
    let mut listening: Option<String> = None;
    let mut recheck = tokio::time::interval(CHANNEL_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At most one recheck in flight; the connection is driven meanwhile.
    let mut asking: Option<BoxFuture<'_, Result<Option<String>, tokio_postgres::Error>>> = None;
    loop {
        tokio::select! {
            r = &mut setup, if listening.is_none() => {
                let channel = r?;
                metrics.listen_connected.set(1);
                tracing::info!(%channel, "listening for stream changes");
                listening = Some(channel);
                recheck.reset();
                // Anything committed before LISTEN took effect was not announced.
                hub.wake_all();
            }
            _ = recheck.tick(), if listening.is_some() && asking.is_none() => {
                let client = &client;
                asking = Some(Box::pin(ask_channel(client)));
            }
            now = async { asking.as_mut().expect("guarded").await }, if asking.is_some() => {
                asking = None;
                if channel_changed(listening.as_deref().unwrap_or_default(), now)? {
                    return Ok(Ended::ChannelChanged);
                }
            }
            msg = messages.next() => match msg {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    metrics.notifications.inc();
                    hub.wake_from_payload(n.payload());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(Ended::Closed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_channel_name_means_listening_again() {
        let listening = "durable_streams_0123";
        assert!(!channel_changed(listening, Ok(Some(listening.to_owned()))).unwrap());
        assert!(channel_changed(listening, Ok(Some("durable_streams_4567".to_owned()))).unwrap());
        // An extension without private channels announces on the public one.
        assert!(!channel_changed(CHANNEL, Ok(Some(CHANNEL.to_owned()))).unwrap());
        assert!(!channel_changed(CHANNEL, Ok(None)).unwrap());
        assert!(channel_changed(listening, Ok(None)).unwrap(), "the function is gone");
    }

    fn woken(sub: &mut Subscription) -> bool {
        let fut = sub.changed();
        futures_util::FutureExt::now_or_never(fut).is_some()
    }

    #[tokio::test]
    async fn an_append_is_offered_at_its_start_only_and_within_bounds() {
        let hub = Arc::new(TailHub::new(100));
        let mut sub = hub.subscribe("a").unwrap();
        // Nobody waits on "b": nothing is kept for it.
        hub.wake_appended("b", Bytes::from_static(b"xyz"), Offset(3), false);
        assert!(hub.fresh("b", Offset(0)).is_none());
        hub.wake_appended("a", Bytes::from_static(b"abcd"), Offset(10), true);
        assert!(woken(&mut sub), "an append wakes its waiters");
        let fresh = hub.fresh("a", Offset(6)).expect("offered at its start");
        assert_eq!((&fresh.body[..], fresh.tail, fresh.closed), (&b"abcd"[..], Offset(10), true));
        assert!(hub.fresh("a", Offset(5)).is_none(), "not at any other offset");
        assert_eq!(hub.fresh_bytes(), 4);
        // Too big a body is not kept; the next append replaces the last.
        hub.wake_appended("a", Bytes::from(vec![b'x'; FRESH_MAX_BODY + 1]), Offset(1 << 20), false);
        assert!(hub.fresh("a", Offset((1 << 20) - FRESH_MAX_BODY as u64 - 1)).is_none());
        assert_eq!(hub.fresh_bytes(), 0);
        hub.wake_appended("a", Bytes::from_static(b"ef"), Offset((1 << 20) + 2), false);
        assert!(hub.fresh("a", Offset(1 << 20)).is_some());
        // A wake-up without a body (a deletion, say) forgets it.
        hub.wake("a");
        assert!(hub.fresh("a", Offset(1 << 20)).is_none());
        assert_eq!(hub.fresh_bytes(), 0);
        // The last waiter leaving frees it too.
        hub.wake_appended("a", Bytes::from_static(b"gh"), Offset(14), false);
        assert_eq!(hub.fresh_bytes(), 2);
        drop(sub);
        assert_eq!(hub.fresh_bytes(), 0);
    }

    #[tokio::test]
    async fn fresh_appends_are_bounded_in_bytes_over_all_paths() {
        let hub = Arc::new(TailHub::new(100));
        let paths = FRESH_MAX_TOTAL / FRESH_MAX_BODY + 2;
        let subs: Vec<_> = (0..paths).map(|i| hub.subscribe(&i.to_string()).unwrap()).collect();
        let body = Bytes::from(vec![b'x'; FRESH_MAX_BODY]);
        for i in 0..paths {
            hub.wake_appended(&i.to_string(), body.clone(), Offset(FRESH_MAX_BODY as u64), false);
        }
        assert_eq!(hub.fresh_bytes(), FRESH_MAX_TOTAL, "kept until the total is reached");
        assert!(hub.fresh(&(paths - 1).to_string(), Offset(0)).is_none());
        drop(subs);
        assert_eq!(hub.fresh_bytes(), 0);
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

    /// Two batches commit [0, 4) and then [4, 8); their handlers report in
    /// the other order, and the announcement of 8 comes in between. A waiter
    /// that wakes only after all of it must not take [0, 4) as the tail.
    #[tokio::test]
    async fn an_older_commit_reported_late_is_never_offered_as_the_tail() {
        let hub = Arc::new(TailHub::new(100));
        let mut sub = hub.subscribe("a").unwrap();
        hub.wake_appended("a", Bytes::from_static(b"efgh"), Offset(8), false);
        hub.wake_from_payload("0000000000000000_0000000000000008 a");
        hub.wake_appended("a", Bytes::from_static(b"abcd"), Offset(4), false);
        assert!(woken(&mut sub));
        assert!(hub.fresh("a", Offset(0)).is_none(), "the older append is not offered");
        assert!(hub.fresh("a", Offset(4)).is_some(), "the latest still is");
        assert_eq!(hub.fresh_bytes(), 4);
    }

    /// Someone else's commit after ours: our append no longer ends at the
    /// tail, so it is not offered (the waiter reads the database instead).
    #[tokio::test]
    async fn a_later_announced_state_retires_our_append() {
        let hub = Arc::new(TailHub::new(100));
        let mut sub = hub.subscribe("a").unwrap();
        hub.wake_appended("a", Bytes::from_static(b"abcd"), Offset(4), false);
        hub.wake_from_payload("0000000000000000_0000000000000009 a");
        assert!(woken(&mut sub));
        assert!(hub.fresh("a", Offset(0)).is_none());
        assert_eq!(hub.fresh_bytes(), 0);
        // An announcement older than our own commit leaves it offered.
        hub.wake_appended("a", Bytes::from_static(b"efgh"), Offset(13), false);
        hub.wake_from_payload("0000000000000000_0000000000000011 a");
        assert!(hub.fresh("a", Offset(9)).is_some());
        // So does a lost LISTEN connection's wake-up of everybody not.
        hub.wake_all();
        assert!(woken(&mut sub));
        assert!(hub.fresh("a", Offset(9)).is_none());
        assert_eq!(hub.fresh_bytes(), 0);
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
