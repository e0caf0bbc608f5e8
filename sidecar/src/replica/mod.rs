//! Read replicas: reads served by hot standbys (`--read-database-url`),
//! writes and LISTEN on the primary (`--database-url`).
//!
//! Routing: every read (`ds.read_chunk` of catch-up, long-poll and SSE, and
//! `ds.head`) goes to the next healthy standby, round-robin; everything that
//! writes stays on the primary, and so does the LISTEN connection (NOTIFY
//! does not reach standbys).
//!
//! Gating (monotonic reads): the sidecar keeps a *watermark*, the highest
//! primary WAL position it knows about: read with `pg_current_wal_lsn()`
//! on the primary after each of its own writes (before the client gets its
//! answer) and after each (coalesced) batch of notifications, before the
//! waiters are woken ([`WakeGate`]). Each of those reads starts after the
//! commit it covers, so the commit is at or below it. A standby read first
//! waits until that standby's `pg_last_wal_replay_lsn()` has reached the
//! watermark. So a woken waiter never re-reads a standby that has not yet
//! replayed what woke it (which would lose the wake-up), and a read through
//! this sidecar never returns less than the sidecar already acknowledged
//! (read-your-writes through one sidecar; other sidecars' writes are seen
//! once the standby replays them).
//!
//! Waiting is bounded: a standby that has not reached the watermark within
//! `--max-replica-lag-ms`, or that is down, is skipped, and the read goes to
//! the primary (fallback; counted in `replica_fallbacks`). A lagging
//! standby takes reads again once it has replayed what it was waited for;
//! a down one once its probe connects again. Each standby has one probe
//! connection that asks its replay position every [`POLL_INTERVAL`] while
//! some read waits for it, and every [`IDLE_PROBE`] otherwise.
//!
//! Sliding TTLs: a standby cannot write, so the extension skips the TTL
//! restart there; the sidecar remembers the (role, path) of every read a
//! standby served in a bounded set ([`TouchSet`]) and forwards them to the
//! primary with `ds.touch(paths, as_roles)` every [`TOUCH_INTERVAL`].

mod gate;
mod lsn;
mod metrics;
mod probe;
mod touch;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::{Chunk, Db, DbError, Head};
use crate::tail::TailHub;

pub use gate::WakeGate;
pub use lsn::{Lsn, PrimaryClock};
pub use metrics::{ReasonLabels, ReplicaMetrics, TargetLabels};
pub use touch::{Inserted, TouchSet};

/// Probe interval while a read waits for a standby to replay.
pub const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Probe interval while nobody waits (health, and lag recovery).
pub const IDLE_PROBE: Duration = Duration::from_secs(1);
/// How often forwarded sliding-TTL restarts are flushed to the primary.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(1);
/// Most distinct (role, path) pairs remembered between flushes.
pub const TOUCH_MAX_ENTRIES: usize = 10_000;
/// Most bytes of roles and paths remembered between flushes.
pub const TOUCH_MAX_BYTES: usize = 1 << 20;
/// Most paths in one `ds.touch` call.
const TOUCH_CALL_PATHS: usize = 1_000;
/// Most notification payloads (and bytes) held while the primary's position
/// is being read; beyond that they collapse into one "wake everyone".
const GATE_MAX_PAYLOADS: usize = 1_024;
const GATE_MAX_BYTES: usize = 1 << 20;
/// Longest wait for the primary's WAL position.
const CLOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// One standby.
pub struct Replica {
    /// `host:port/db` for logs (never the password).
    pub name: String,
    db: Db,
    probe: tokio_postgres::Config,
    replayed: watch::Sender<u64>,
    waiters: AtomicUsize,
    poke: Notify,
    up: AtomicBool,
    /// When a read gave up waiting: the position it waited for; the standby
    /// takes reads again once it has replayed that far (0: not lagging).
    lagging_behind: AtomicU64,
}

impl Replica {
    fn replayed(&self) -> Lsn {
        Lsn(*self.replayed.borrow())
    }

    fn usable(&self) -> bool {
        self.up.load(Ordering::SeqCst)
            && self.replayed().0 >= self.lagging_behind.load(Ordering::SeqCst)
    }

    fn set_up(&self, up: bool, metrics: &ReplicaMetrics) {
        if self.up.swap(up, Ordering::SeqCst) != up {
            if up {
                metrics.up.inc();
                tracing::info!(replica = %self.name, "read replica up");
            } else {
                metrics.up.dec();
                tracing::warn!(replica = %self.name, "read replica down; reads go elsewhere");
            }
        }
    }

    /// Waits until this standby has replayed `target`, at most `max`.
    async fn caught_up(&self, target: Lsn, max: Duration, metrics: &ReplicaMetrics) -> bool {
        if self.replayed() >= target {
            return true;
        }
        metrics.replay_waits.inc();
        let _waiting = Waiting::new(self);
        self.poke.notify_one();
        let mut rx = self.replayed.subscribe();
        tokio::time::timeout(max, rx.wait_for(|&at| at >= target.0)).await.is_ok_and(|r| r.is_ok())
    }
}

/// Counts a read waiting for a standby's replay (the probe polls fast while
/// any does), also when the waiting read is dropped.
struct Waiting<'a>(&'a Replica);

impl<'a> Waiting<'a> {
    fn new(r: &'a Replica) -> Waiting<'a> {
        r.waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(r)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a failed standby read says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The answer to the request (404, 403, a bad offset): the primary
    /// would give the same.
    Answer,
    /// The standby is in trouble: take it out, read from the primary.
    Down,
    /// The standby cannot serve this read (an extension from before
    /// standby reads tried to restart a TTL: 25006): read from the primary.
    Unsuitable,
}

fn failure(e: &DbError) -> Failure {
    match e {
        DbError::Pool(_) => Failure::Down,
        DbError::Postgres(e) | DbError::Role { source: e, .. } => match e.code() {
            None => Failure::Down,
            Some(code) if code.code().starts_with("25") => Failure::Unsuitable,
            // Connection exceptions, conflicts with recovery (40001),
            // shutdown / cannot connect now, out of resources, system errors.
            Some(code)
                if ["08", "40", "53", "57", "58", "XX"]
                    .iter()
                    .any(|class| code.code().starts_with(class)) =>
            {
                Failure::Down
            }
            Some(_) => Failure::Answer,
        },
        DbError::Shape(_) | DbError::Batch(_) => Failure::Answer,
        // A read-only refusal (the pool dropped that connection): as 25006.
        DbError::Unavailable(crate::failover::Outage::ReadOnly, _) => Failure::Unsuitable,
        DbError::Unavailable(..) => Failure::Down,
    }
}

/// Where reads go: the standbys, and the primary as fallback.
pub struct Router {
    replicas: Vec<Arc<Replica>>,
    next: AtomicUsize,
    primary: Db,
    clock: PrimaryClock,
    max_lag: Duration,
    touches: Mutex<TouchSet>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// `host:port/db` of a connection config, for logs.
fn describe(pg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = pg.get_ports().iter().map(u16::to_string).collect();
    format!("{}:{}/{}", hosts.join(","), ports.join(","), pg.get_dbname().unwrap_or(""))
}

impl Router {
    /// The router of `config.read_database_urls` (`None` without any);
    /// `primary` is the pool of `--database-url`. Fails on a URL that does
    /// not parse, naming the flag and its position.
    pub fn new(
        config: &Config,
        primary: Db,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Arc<Router>>, String> {
        if config.read_database_urls.is_empty() {
            return Ok(None);
        }
        let mut replicas = Vec::new();
        for (i, url) in config.read_database_urls.iter().enumerate() {
            let bad = |e: crate::db::UrlError| {
                format!(
                    "--read-database-url #{} is not a valid Postgres URL or connection string \
                     ({e}); expected e.g. postgresql://user@standby-host:5432/dbname",
                    i + 1
                )
            };
            let db = Db::for_url(config, url, "ds-sidecar-read").map_err(bad)?;
            let probe =
                crate::db::connection_config_for(config, url, "ds-sidecar-replay").map_err(bad)?;
            replicas.push(Arc::new(Replica {
                name: describe(&probe),
                db,
                probe,
                replayed: watch::channel(0).0,
                waiters: AtomicUsize::new(0),
                poke: Notify::new(),
                up: AtomicBool::new(false),
                lagging_behind: AtomicU64::new(0),
            }));
        }
        Ok(Some(Arc::new(Router {
            replicas,
            next: AtomicUsize::new(0),
            primary,
            clock: PrimaryClock::default(),
            max_lag: Duration::from_millis(config.max_replica_lag_ms),
            touches: Mutex::new(TouchSet::new(TOUCH_MAX_ENTRIES, TOUCH_MAX_BYTES)),
            metrics,
        })))
    }

    fn m(&self) -> &ReplicaMetrics {
        &self.metrics.replica
    }

    /// The watermark now (for tests and logs).
    pub fn watermark(&self) -> Lsn {
        self.clock.watermark()
    }

    /// After a write of this sidecar committed (before it is acknowledged):
    /// raises the watermark past it, so this sidecar's later reads see it.
    /// A failure is logged (the write stands; only read-your-writes through
    /// a standby is not assured for it).
    pub async fn wrote(&self) {
        match tokio::time::timeout(CLOCK_TIMEOUT, self.clock.advance(&self.primary)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not read the primary's WAL position"),
            Err(_) => tracing::warn!("timed out reading the primary's WAL position"),
        }
    }

    /// The next usable standby, round-robin.
    fn pick(&self) -> Option<&Arc<Replica>> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| &self.replicas[(start + i) % n]).find(|r| r.usable())
    }

    /// A standby that has replayed the watermark, or why there is none.
    async fn choose(&self) -> Result<&Arc<Replica>, &'static str> {
        let target = self.clock.watermark();
        let replica = self.pick().ok_or("none")?;
        if replica.caught_up(target, self.max_lag, self.m()).await {
            return Ok(replica);
        }
        replica.lagging_behind.fetch_max(target.0, Ordering::SeqCst);
        tracing::warn!(
            replica = %replica.name,
            waited_for = %target,
            replayed = %replica.replayed(),
            "read replica lags more than --max-replica-lag-ms; reading from the primary until it \
             catches up"
        );
        Err("lag")
    }

    fn fallback(&self, reason: &'static str) {
        self.m().fallbacks.get_or_create(&ReasonLabels { reason }).inc();
        self.m().reads.get_or_create(&TargetLabels { target: "primary" }).inc();
    }

    /// `ds.read_chunk` on a standby (see the module docs), else the primary.
    pub async fn read_chunk(
        &self,
        role: Option<&str>,
        path: &str,
        from: &str,
        max_bytes: Option<i64>,
    ) -> Result<Chunk, DbError> {
        match self.choose().await {
            Ok(replica) => match replica.db.read_chunk_here(role, path, from, max_bytes).await {
                Ok(chunk) => {
                    self.m().reads.get_or_create(&TargetLabels { target: "replica" }).inc();
                    self.touched(role, path);
                    return Ok(chunk);
                }
                Err(e) => self.failed(replica, e)?,
            },
            Err(reason) => self.fallback(reason),
        }
        self.primary.read_chunk_here(role, path, from, max_bytes).await
    }

    /// `ds.head` on a standby, else the primary.
    pub async fn head(&self, role: Option<&str>, path: &str) -> Result<Option<Head>, DbError> {
        match self.choose().await {
            Ok(replica) => match replica.db.head_here(role, path).await {
                Ok(head) => {
                    self.m().reads.get_or_create(&TargetLabels { target: "replica" }).inc();
                    return Ok(head);
                }
                Err(e) => self.failed(replica, e)?,
            },
            Err(reason) => self.fallback(reason),
        }
        self.primary.head_here(role, path).await
    }

    /// A standby read failed: `Err` when that is the request's answer, `Ok`
    /// when the primary should serve it instead.
    fn failed(&self, replica: &Replica, e: DbError) -> Result<(), DbError> {
        match failure(&e) {
            Failure::Answer => return Err(e),
            Failure::Down => {
                tracing::warn!(replica = %replica.name, error = %e, "read replica failed");
                replica.set_up(false, self.m());
                self.fallback("down");
            }
            Failure::Unsuitable => {
                tracing::warn!(replica = %replica.name, error = %e, "read replica cannot serve \
                               this read (is its extension older than the primary's?)");
                self.fallback("unsuitable");
            }
        }
        Ok(())
    }

    /// Remembers a standby read for the next `ds.touch` flush.
    fn touched(&self, role: Option<&str>, path: &str) {
        let inserted =
            self.touches.lock().unwrap_or_else(PoisonError::into_inner).insert(role, path);
        if inserted == Inserted::Dropped {
            self.m().touches_dropped.inc();
        }
    }

    /// Sends what [`Self::touched`] collected to the primary; errors are
    /// logged and the batch is dropped (the next reads collect it again).
    pub async fn flush_touches(&self) {
        let pending = self.touches.lock().unwrap_or_else(PoisonError::into_inner).take();
        for batch in pending.chunks(TOUCH_CALL_PATHS) {
            let paths: Vec<&str> = batch.iter().map(|(_, p)| p.as_str()).collect();
            let roles: Vec<Option<&str>> = batch.iter().map(|(r, _)| r.as_deref()).collect();
            match self.primary.touch(&paths, &roles).await {
                Ok(_) => {
                    self.m().touches_forwarded.inc_by(batch.len() as u64);
                }
                Err(e) => {
                    self.m().touch_errors.inc();
                    let hint = match e.sqlstate().map(|s| s.code()) {
                        Some("42883") => {
                            "the extension has no ds.touch: upgrade it (ALTER EXTENSION \
                             durable_streams UPDATE)"
                        }
                        Some("42501") => {
                            "run `GRANT EXECUTE ON FUNCTION ds.touch(text[], text[]) TO <the \
                             sidecar's role>`"
                        }
                        _ => "the sliding TTLs of streams read on standbys were not restarted",
                    };
                    tracing::warn!(error = %e, paths = batch.len(), hint, "ds.touch failed");
                }
            }
        }
    }

    /// Connects to every standby once at startup: a standby that answers
    /// but has no durable_streams extension is a configuration error; one
    /// that does not answer is only logged (reads use the primary until it
    /// does).
    pub async fn check(&self, timeout: Duration) -> Result<(), String> {
        for (i, r) in self.replicas.iter().enumerate() {
            let connected = tokio::time::timeout(timeout, r.probe.connect(NoTls)).await;
            let client = match connected {
                Ok(Ok((client, connection))) => {
                    tokio::spawn(connection);
                    client
                }
                Ok(Err(e)) => {
                    tracing::warn!(replica = %r.name, error = %e, "read replica unreachable at \
                                   startup; reads use the primary until it answers");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(replica = %r.name, "read replica did not answer at startup; \
                                   reads use the primary until it does");
                    continue;
                }
            };
            let asked = client.query_one(
                "SELECT pg_catalog.to_regprocedure('ds.read_chunk(text,text,bigint)') IS NOT \
                 NULL, pg_catalog.pg_is_in_recovery()",
                &[],
            );
            let row = tokio::time::timeout(timeout, asked)
                .await
                .map_err(|_| format!("--read-database-url #{} ({}): no answer", i + 1, r.name))?
                .map_err(|e| format!("--read-database-url #{} ({}): {e}", i + 1, r.name))?;
            let (has_extension, standby): (bool, bool) = (row.get(0), row.get(1));
            if !has_extension {
                return Err(format!(
                    "--read-database-url #{} ({}) has no durable_streams extension: point it at \
                     a hot standby of the --database-url database",
                    i + 1,
                    r.name
                ));
            }
            if !standby {
                tracing::warn!(replica = %r.name, "read replica is not in recovery (not a standby)");
            }
        }
        Ok(())
    }
}

/// Flushes forwarded TTL restarts every [`TOUCH_INTERVAL`], and once more
/// at shutdown.
async fn flush_touches(router: Arc<Router>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(TOUCH_INTERVAL) => router.flush_touches().await,
            () = shutdown.cancelled() => {
                router.flush_touches().await;
                return;
            }
        }
    }
}

/// Starts the probes, the TTL flusher and the wake gate; returns the gate
/// (what LISTEN must wake) and the tasks.
pub fn start(
    router: &Arc<Router>,
    hub: &Arc<TailHub>,
    shutdown: &CancellationToken,
) -> (Arc<WakeGate>, Vec<tokio::task::JoinHandle<()>>) {
    let gate = Arc::new(WakeGate::default());
    let mut tasks: Vec<_> = router
        .replicas
        .iter()
        .map(|r| tokio::spawn(probe::probe(Arc::clone(router), Arc::clone(r), shutdown.clone())))
        .collect();
    tasks.push(tokio::spawn(flush_touches(Arc::clone(router), shutdown.clone())));
    tasks.push(tokio::spawn(gate::run_gate(
        Arc::clone(&gate),
        Arc::clone(router),
        Arc::clone(hub),
        shutdown.clone(),
    )));
    (gate, tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_answers_are_not_replica_trouble() {
        assert_eq!(failure(&DbError::Shape("x")), Failure::Answer);
    }
}
