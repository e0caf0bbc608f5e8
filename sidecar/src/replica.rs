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

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Notify, watch};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db::{Chunk, Db, DbError, Head};
use crate::tail::{TailHub, Wake};

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

/// A WAL position (`pg_lsn`), ordered as Postgres orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Lsn(pub u64);

impl FromStr for Lsn {
    type Err = String;

    /// Parses Postgres' text form, `XXXXXXXX/XXXXXXXX` (hex, 1 to 8 digits each).
    fn from_str(s: &str) -> Result<Lsn, String> {
        let bad = || format!("not a WAL position (expected hex/hex): {s:?}");
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(p, 16).map_err(|_| bad())
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The (role, path) pairs whose sliding TTL a standby read should have
/// restarted, deduplicated and bounded in count and bytes: beyond either
/// bound new pairs are dropped (and counted) until the next flush.
#[derive(Debug)]
pub struct TouchSet {
    entries: HashSet<(Option<String>, String)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

/// What [`TouchSet::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new pair.
    New,
    /// Already there.
    Known,
    /// The set is full: dropped.
    Dropped,
}

impl TouchSet {
    /// An empty set holding at most `max_entries` pairs and `max_bytes`.
    pub fn new(max_entries: usize, max_bytes: usize) -> TouchSet {
        TouchSet { entries: HashSet::new(), bytes: 0, max_entries, max_bytes }
    }

    /// Remembers that `role` read `path`.
    pub fn insert(&mut self, role: Option<&str>, path: &str) -> Inserted {
        let key = (role.map(str::to_owned), path.to_owned());
        if self.entries.contains(&key) {
            return Inserted::Known;
        }
        let size = path.len() + role.map_or(0, str::len);
        if self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            return Inserted::Dropped;
        }
        self.bytes += size;
        self.entries.insert(key);
        Inserted::New
    }

    /// Takes everything out (the set is empty afterwards).
    pub fn take(&mut self) -> Vec<(Option<String>, String)> {
        self.bytes = 0;
        self.entries.drain().collect()
    }

    /// Number of pairs held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of roles and paths held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Labels of `replica_reads`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TargetLabels {
    /// `replica` or `primary` (a fallback).
    pub target: &'static str,
}

/// Labels of `replica_fallbacks`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `lag` (did not replay in time), `down` (unreachable or failing),
    /// `none` (no healthy standby to pick) or `unsuitable` (the standby
    /// refused this read as read-only).
    pub reason: &'static str,
}

/// Metrics of read routing (registered with the sidecar's registry).
#[derive(Default)]
pub struct ReplicaMetrics {
    /// Reads by where they were served.
    pub reads: Family<TargetLabels, Counter>,
    /// Reads sent to the primary instead of a standby, by reason.
    pub fallbacks: Family<ReasonLabels, Counter>,
    /// Standby reads that had to wait for replay.
    pub replay_waits: Counter,
    /// Standbys currently taking reads.
    pub up: Gauge,
    /// Sliding-TTL restarts forwarded to the primary.
    pub touches_forwarded: Counter,
    /// Sliding-TTL restarts dropped because the set was full.
    pub touches_dropped: Counter,
    /// Failed `ds.touch` flushes.
    pub touch_errors: Counter,
}

impl ReplicaMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("replica_reads", "Reads by where they were served", self.reads.clone());
        registry.register(
            "replica_fallbacks",
            "Reads sent to the primary instead of a standby, by reason",
            self.fallbacks.clone(),
        );
        registry.register(
            "replica_replay_waits",
            "Standby reads that waited for the standby to replay",
            self.replay_waits.clone(),
        );
        registry.register("replicas_up", "Standbys currently taking reads", self.up.clone());
        registry.register(
            "replica_touches_forwarded",
            "Sliding-TTL restarts forwarded to the primary",
            self.touches_forwarded.clone(),
        );
        registry.register(
            "replica_touches_dropped",
            "Sliding-TTL restarts dropped because the pending set was full",
            self.touches_dropped.clone(),
        );
        registry.register(
            "replica_touch_errors",
            "Failed ds.touch flushes to the primary",
            self.touch_errors.clone(),
        );
    }
}

/// The highest primary WAL position this sidecar knows about, advanced by
/// coalesced reads of `pg_current_wal_lsn()`.
#[derive(Default)]
pub struct PrimaryClock {
    watermark: AtomicU64,
    requested: AtomicU64,
    served: AtomicU64,
    lock: tokio::sync::Mutex<()>,
}

impl PrimaryClock {
    /// The watermark now.
    pub fn watermark(&self) -> Lsn {
        Lsn(self.watermark.load(Ordering::SeqCst))
    }

    /// Raises the watermark to `lsn` (never lowers it).
    pub fn raise(&self, lsn: Lsn) {
        self.watermark.fetch_max(lsn.0, Ordering::SeqCst);
    }

    /// Raises the watermark to a primary position read after this call
    /// began. Concurrent callers share one query: a caller that finds a
    /// query running waits for it to end, then either finds that a later
    /// query already covered it or runs the next one for everybody waiting.
    pub async fn advance(&self, primary: &Db) -> Result<Lsn, DbError> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = self.lock.lock().await;
        if self.served.load(Ordering::SeqCst) >= ticket {
            return Ok(self.watermark());
        }
        let covers = self.requested.load(Ordering::SeqCst);
        let text = primary.current_wal_lsn().await?;
        let lsn = text.parse::<Lsn>().map_err(|_| DbError::Shape("pg_current_wal_lsn"))?;
        self.raise(lsn);
        self.served.store(covers, Ordering::SeqCst);
        Ok(lsn)
    }
}

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

/// The probe of one standby: its replay position, fast while reads wait.
async fn probe(router: Arc<Router>, r: Arc<Replica>, shutdown: CancellationToken) {
    const REPLAYED: &str = "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() \
         THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END)::text";
    let query_timeout = Duration::from_secs(5);
    loop {
        let connected = tokio::select! {
            c = tokio::time::timeout(query_timeout, r.probe.connect(NoTls)) => c,
            () = shutdown.cancelled() => return,
        };
        let client = match connected {
            Ok(Ok((client, connection))) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
            Ok(Err(e)) => {
                tracing::debug!(replica = %r.name, error = %e, "probe cannot connect");
                r.set_up(false, router.m());
                tokio::select! {
                    () = tokio::time::sleep(IDLE_PROBE) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
            Err(_) => {
                r.set_up(false, router.m());
                continue;
            }
        };
        loop {
            let answer = tokio::select! {
                a = tokio::time::timeout(query_timeout, client.query_one(REPLAYED, &[])) => a,
                () = shutdown.cancelled() => return,
            };
            let text: Option<String> = match answer {
                Ok(Ok(row)) => row.get(0),
                Ok(Err(e)) => {
                    tracing::warn!(replica = %r.name, error = %e, "probe failed; reconnecting");
                    r.set_up(false, router.m());
                    break;
                }
                Err(_) => {
                    tracing::warn!(replica = %r.name, "probe timed out; reconnecting");
                    r.set_up(false, router.m());
                    break;
                }
            };
            let at = text.as_deref().and_then(|t| t.parse::<Lsn>().ok()).unwrap_or_default();
            r.replayed.send_if_modified(|v| {
                let newer = at.0 > *v;
                *v = (*v).max(at.0);
                newer
            });
            r.set_up(true, router.m());
            if r.waiters.load(Ordering::SeqCst) > 0 {
                tokio::select! {
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                    () = shutdown.cancelled() => return,
                }
            } else {
                tokio::select! {
                    () = r.poke.notified() => {}
                    () = tokio::time::sleep(IDLE_PROBE) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = shutdown.cancelled() => return,
        }
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

#[derive(Default)]
struct Pending {
    payloads: Vec<String>,
    bytes: usize,
    everything: bool,
}

/// Stands between the LISTEN connection and the hub: holds what the
/// primary announced until the watermark has passed it, then wakes the
/// waiters (whose standby reads then wait for replay). Never blocks the
/// LISTEN connection; bounded (an overflow becomes "wake everyone").
#[derive(Default)]
pub struct WakeGate {
    pending: Mutex<Pending>,
    ready: Notify,
}

impl Wake for WakeGate {
    fn wake_from_payload(&self, payload: &str) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if !p.everything {
            if p.payloads.len() >= GATE_MAX_PAYLOADS || p.bytes + payload.len() > GATE_MAX_BYTES {
                p.payloads = Vec::new();
                p.bytes = 0;
                p.everything = true;
            } else {
                p.bytes += payload.len();
                p.payloads.push(payload.to_owned());
            }
        }
        drop(p);
        self.ready.notify_one();
    }

    fn wake_all(&self) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.payloads = Vec::new();
        p.bytes = 0;
        p.everything = true;
        drop(p);
        self.ready.notify_one();
    }
}

/// Delivers what the gate holds, once per coalesced batch: reads the
/// primary's position, raises the watermark, wakes.
async fn run_gate(
    gate: Arc<WakeGate>,
    router: Arc<Router>,
    hub: Arc<TailHub>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = gate.ready.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let p = std::mem::take(&mut *gate.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if p.payloads.is_empty() && !p.everything {
            continue;
        }
        // Woken even if this fails: the standbys serve what they have, and
        // the next wake-up or the long-poll timeout catches up.
        router.wrote().await;
        for payload in &p.payloads {
            hub.wake_from_payload(payload);
        }
        if p.everything {
            hub.wake_all();
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
        .map(|r| tokio::spawn(probe(Arc::clone(router), Arc::clone(r), shutdown.clone())))
        .collect();
    tasks.push(tokio::spawn(flush_touches(Arc::clone(router), shutdown.clone())));
    tasks.push(tokio::spawn(run_gate(
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
    fn lsns_parse_print_and_order_like_postgres() {
        let a: Lsn = "0/16B3748".parse().unwrap();
        assert_eq!(a, Lsn(0x16B_3748));
        assert_eq!(a.to_string(), "0/16B3748");
        let b: Lsn = "1/0".parse().unwrap();
        assert_eq!(b, Lsn(1 << 32));
        assert!(b > a, "the high part counts first");
        assert!("0/16B3749".parse::<Lsn>().unwrap() > a);
        assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!("ffffffff/ffffffff".parse::<Lsn>().unwrap().to_string(), "FFFFFFFF/FFFFFFFF");
        for bad in ["", "/", "0/", "/0", "0", "0/1/2", "g/0", "100000000/0", "-1/0", " 0/1", "0/+1"]
        {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_touch_set_dedups_and_is_bounded_in_count_and_bytes() {
        let mut s = TouchSet::new(3, 20);
        assert_eq!(s.insert(None, "a"), Inserted::New);
        assert_eq!(s.insert(None, "a"), Inserted::Known);
        assert_eq!(s.insert(Some("r"), "a"), Inserted::New, "per role");
        assert_eq!((s.len(), s.bytes()), (2, 3));
        assert_eq!(s.insert(None, "0123456789abcdefg"), Inserted::New);
        assert_eq!(s.insert(None, "b"), Inserted::Dropped, "count bound");
        assert_eq!(s.insert(None, "a"), Inserted::Known, "known pairs are not dropped");
        let taken = s.take();
        assert_eq!(taken.len(), 3);
        assert!(s.is_empty() && s.bytes() == 0);
        assert_eq!(s.insert(None, "0123456789"), Inserted::New);
        assert_eq!(s.insert(None, "0123456789a"), Inserted::Dropped, "byte bound");
        assert_eq!(s.insert(None, "x"), Inserted::New);
    }

    #[tokio::test]
    async fn the_gate_holds_payloads_and_collapses_an_overflow() {
        let gate = WakeGate::default();
        gate.wake_from_payload("1 a");
        gate.wake_from_payload("2 b");
        {
            let p = gate.pending.lock().unwrap();
            assert_eq!(p.payloads, ["1 a", "2 b"]);
            assert!(!p.everything);
        }
        // The wake is not lost even though nobody waited yet.
        tokio::time::timeout(Duration::from_secs(1), gate.ready.notified()).await.unwrap();
        for i in 0..GATE_MAX_PAYLOADS {
            gate.wake_from_payload(&format!("{i} x"));
        }
        let p = std::mem::take(&mut *gate.pending.lock().unwrap());
        assert!(p.everything && p.payloads.is_empty(), "overflow became wake-everyone");
        gate.wake_all();
        assert!(gate.pending.lock().unwrap().everything);
    }

    #[test]
    fn protocol_answers_are_not_replica_trouble() {
        assert_eq!(failure(&DbError::Shape("x")), Failure::Answer);
    }

    #[tokio::test]
    async fn the_watermark_only_rises() {
        let c = PrimaryClock::default();
        c.raise(Lsn(10));
        c.raise(Lsn(5));
        assert_eq!(c.watermark(), Lsn(10));
    }
}
