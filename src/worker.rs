//! The background worker, registered from `_PG_init` when the library is in
//! `shared_preload_libraries`. It rings the doorbell (`doorbell.rs`): per
//! wake-up, packed notifications naming every stream that advanced (after an
//! overflow: every stream whose tail in the tables differs from the one it
//! last announced); and every
//! `ds.rotation_interval_ms` it runs a maintenance pass (`maintenance.rs`):
//! rotation, expiry, producer-state retention. Each unit of work is its own
//! short transaction; an error is logged at WARNING and retried next pass.

use std::panic::{RefUnwindSafe, UnwindSafe};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;

use crate::error::DsResult;
use crate::{maintenance, storage};

use ds_core::doorbell::Announced;
use ds_core::notification::{self, Announcement, MAX_PAYLOAD};

use crate::doorbell::PassReport;
use crate::{doorbell, gucs};

/// Shortest time between two notifications of the doorbell (see its loop).
const MIN_RING_INTERVAL: Duration = Duration::from_millis(1);

/// How long the worker sleeps when nobody rings.
const IDLE_WAKE: Duration = Duration::from_secs(10);

/// How often a worker looks at the installed extension's version again.
const VERSION_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The version of this library; the catalog must be at the same version
/// before a worker touches it (see [`VersionGate`]).
const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Keeps a worker off a catalog of another version.
///
/// After a new package is installed and the server restarted, the new
/// library runs against the old catalog until someone runs `ALTER EXTENSION
/// durable_streams UPDATE`. The workers must not rotate, expire or announce
/// with assumptions about tables the update has not made yet, so until the
/// versions agree they do nothing: they log one WARNING saying what to run
/// and look again every [`VERSION_CHECK_INTERVAL`] (never crashing, so the
/// postmaster does not restart them in a loop). An extension that is not
/// installed (yet) is not a mismatch: each worker already waits for it.
#[derive(Default)]
pub(crate) struct VersionGate {
    checked: Option<Instant>,
    open: bool,
    /// The mismatching version last warned about (warn once per version).
    warned: Option<String>,
}

impl VersionGate {
    /// Whether the worker may act now; looks the catalog up at most once per
    /// [`VERSION_CHECK_INTERVAL`].
    pub(crate) fn open(&mut self, who: &str, database: &str) -> bool {
        if self.checked.is_some_and(|t| t.elapsed() < VERSION_CHECK_INTERVAL) {
            return self.open;
        }
        self.checked = Some(Instant::now());
        let installed = in_transaction("checking the extension's version", || {
            Ok(Spi::get_one::<String>(
                "SELECT (SELECT extversion::pg_catalog.text FROM pg_catalog.pg_extension \
                         WHERE extname OPERATOR(pg_catalog.=) 'durable_streams')",
            )?)
        });
        let Some(installed) = installed else {
            // The lookup failed (logged); try again later.
            self.open = false;
            return false;
        };
        match installed {
            Some(version) if version != LIBRARY_VERSION => {
                if self.warned.as_deref() != Some(version.as_str()) {
                    warning!(
                        "durable_streams {who}: the extension in database \"{database}\" is version {version} \
                         but the installed library is {LIBRARY_VERSION}; doing nothing until they agree. \
                         Run in that database: {}",
                        upgrade_advice(&version)
                    );
                    self.warned = Some(version);
                }
                self.open = false;
            }
            _ => {
                if self.warned.take().is_some() {
                    log!(
                        "durable_streams {who}: the extension in database \"{database}\" is now version {LIBRARY_VERSION}; resuming"
                    );
                }
                self.open = true;
            }
        }
        self.open
    }

    /// How long the worker may sleep before it should look again.
    pub(crate) fn recheck_in(&self) -> Duration {
        VERSION_CHECK_INTERVAL.saturating_sub(self.checked.map_or(Duration::ZERO, |t| t.elapsed()))
    }
}

/// What an operator runs to bring the catalog to the library's version.
fn upgrade_advice(installed: &str) -> String {
    if version_key(installed) < version_key(LIBRARY_VERSION) {
        "ALTER EXTENSION durable_streams UPDATE;".to_owned()
    } else {
        format!(
            "ALTER EXTENSION durable_streams UPDATE TO '{LIBRARY_VERSION}'; \
             (the library is older than the catalog: install the package of version {installed} instead, \
             unless a downgrade script exists)"
        )
    }
}

/// `major.minor.patch` as numbers, for ordering versions.
fn version_key(version: &str) -> Vec<u64> {
    version.split(['.', '-']).map(|part| part.parse().unwrap_or(0)).collect()
}

/// Registers the two workers with the postmaster: the doorbell must never
/// wait behind a long maintenance pass, so each has its own process.
pub fn register() {
    for (name, function) in [
        ("durable_streams doorbell", "durable_streams_doorbell_main"),
        ("durable_streams maintenance", "durable_streams_maintenance_main"),
    ] {
        BackgroundWorkerBuilder::new(name)
            .set_type(name)
            .set_function(function)
            .set_library("durable_streams")
            .enable_spi_access()
            .set_restart_time(Some(Duration::from_secs(5)))
            .load();
    }
}

/// Connects a worker to `ds.database`; returns the database name.
///
/// The workers connect as the bootstrap superuser: the extension can only be
/// installed by a superuser (`superuser = true` in the control file), so its
/// tables' owner is one too and a less privileged role could not maintain
/// them. What a superuser session could be tricked into running is closed
/// instead: `search_path` is pinned to `pg_catalog, pg_temp` at the highest
/// priority (no database or role setting, no reload can change it), and
/// every statement names its tables, functions and operators with their
/// schema (`storage.rs`), so objects a database owner creates in `public`
/// (say, `+(timestamptz, interval)`) are never resolved.
pub(crate) fn start_worker() -> String {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::worker_database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    in_transaction("pinning search_path", || {
        // SAFETY: a standard GUC assignment; PGC_S_OVERRIDE outranks every
        // other source (database and role settings, the config file, SET).
        unsafe {
            pg_sys::set_config_option(
                c"search_path".as_ptr(),
                c"pg_catalog, pg_temp".as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_OVERRIDE,
                pg_sys::GucAction::GUC_ACTION_SET,
                true,
                0,
                false,
            );
        }
        Ok(())
    });
    database
}

/// Whether SIGTERM arrived, ever: pgrx's `sigterm_received` (which
/// `wait_latch` calls too) clears the flag it reads, so a check in the
/// middle of a pass would otherwise swallow the signal and the worker's
/// loop would never see it (a fast shutdown then hung on the maintenance
/// worker).
static TERMINATING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn terminating() -> bool {
    use std::sync::atomic::Ordering;
    if BackgroundWorker::sigterm_received() {
        TERMINATING.store(true, Ordering::Relaxed);
    }
    TERMINATING.load(Ordering::Relaxed)
}

/// Waits for the latch or `timeout`; false once SIGTERM arrived (now or
/// before).
pub(crate) fn wait(timeout: Duration) -> bool {
    use std::sync::atomic::Ordering;
    if !BackgroundWorker::wait_latch(Some(timeout)) {
        TERMINATING.store(true, Ordering::Relaxed);
    }
    !terminating()
}

/// Ends a worker after SIGTERM with exit code 1, which the postmaster
/// restarts (after the worker's restart time) unless it is shutting down:
/// code 0, what returning from the entry point gives, unregisters the
/// worker, so a `pg_terminate_backend` of it stopped announcing,
/// sequencing or maintenance until the server restarted.
pub(crate) fn exit_to_be_restarted() -> ! {
    // SAFETY: the normal way out of a background worker.
    unsafe { pg_sys::proc_exit(1) }
}

/// Applies a pending SIGHUP (config reload).
pub(crate) fn reload_if_asked(who: &str) {
    if BackgroundWorker::sighup_received() {
        // SAFETY: standard config reload in a background worker.
        unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        log!("durable_streams {who}: configuration reloaded");
    }
}

/// Entry point of the doorbell worker: one round of notifications per wake-up.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn durable_streams_doorbell_main(_arg: pg_sys::Datum) {
    let database = start_worker();
    // A notification is a wake-up, not data: its transaction (NOTIFY takes
    // an xid) need not wait for a WAL flush of its own, which would cost one
    // fsync per ring on top of the appenders' commits.
    in_transaction("setting synchronous_commit", || {
        Spi::run("SET synchronous_commit TO off")?;
        Ok(())
    });
    doorbell::register_worker();
    log!(
        "durable_streams doorbell: announcing appends in database \"{database}\" on the channel ds.notify_channel() names"
    );
    // Hints may have been lost while no worker ran: the first ring says "*".
    let mut announce_everything = true;
    let mut last_ring = Instant::now() - MIN_RING_INTERVAL;
    let mut announced = Announced::new(MAX_KNOWN_STREAMS);
    // The oid of `ds.streams` as last seen (see `announce`).
    let mut streams_table = None;
    let mut untracked = UntrackedPrepared::default();
    let mut gate = VersionGate::default();
    // The first round runs at once: it checks the version and says "*".
    let mut wake = Duration::ZERO;
    while wait(wake) {
        reload_if_asked("doorbell");
        if !gate.open("doorbell", &database) {
            // Pending streams stay in shared memory (beyond its room they
            // become "*"); once the versions agree the first ring says "*".
            announce_everything = true;
            wake = gate.recheck_in().max(Duration::from_millis(100));
            continue;
        }
        wake = IDLE_WAKE;
        let untracked_ended = untracked.check();
        // Under load, ring at most once per MIN_RING_INTERVAL: the commits of
        // that interval share one notification, and the worker's own CPU stays
        // bounded. An idle stream's first append is announced at once.
        let since = last_ring.elapsed();
        if since < MIN_RING_INTERVAL {
            std::thread::sleep(MIN_RING_INTERVAL - since);
        }
        // A hot standby commits nothing of its own and cannot NOTIFY; once
        // promoted, its first ring says "*" (announce_everything stays set).
        if storage::in_recovery() {
            continue;
        }
        let (mut streams, overflow) = doorbell::take_pending();
        // Commit-log lookups need a transaction; without prepared
        // transactions to look up (nearly always) a ring spends none on it.
        let (prepared, prepared_overflow) = if doorbell::any_prepared() {
            in_transaction("looking up prepared transactions", || {
                Ok(doorbell::take_finished_prepared())
            })
            .unwrap_or_default()
        } else {
            (Vec::new(), false)
        };
        streams.extend(prepared);
        let overflow = overflow || prepared_overflow || untracked_ended;
        if streams.is_empty() && !overflow && !announce_everything {
            continue;
        }
        let ring = Ring { streams, overflow, everything: announce_everything };
        // A panic half-way leaves the record with correct entries only. On
        // failure the taken streams are lost: the next ring says "*".
        let record = std::panic::AssertUnwindSafe((&mut announced, &mut streams_table));
        let announced_ok = in_transaction("announcing stream changes", move || {
            let record = record; // the whole wrapper, not just its field
            let (announced, streams_table) = record.0;
            announce(&ring, announced, streams_table)
        });
        announce_everything = announced_ok != Some(true);
        last_ring = Instant::now();
    }
    doorbell::unregister_worker();
    log!("durable_streams doorbell: exiting");
    exit_to_be_restarted();
}

/// Prepared transactions whose streams the doorbell could not keep (see
/// `doorbell`): while there are any, a drop in this database's number of
/// prepared transactions means one of them may have committed, so the
/// worker announces `*`. Looked at once per second at most.
#[derive(Default)]
struct UntrackedPrepared {
    last_count: Option<i64>,
    checked: Option<Instant>,
}

impl UntrackedPrepared {
    /// Whether an untracked prepared transaction may have ended.
    fn check(&mut self) -> bool {
        let Some(generation) = doorbell::untracked_generation() else {
            self.last_count = None;
            return false;
        };
        if self.checked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return false;
        }
        self.checked = Some(Instant::now());
        let count = in_transaction("counting prepared transactions", || {
            Ok(Spi::get_one::<i64>(
                "SELECT pg_catalog.count(*) FROM pg_catalog.pg_prepared_xacts \
                 WHERE database OPERATOR(pg_catalog.=) pg_catalog.current_database()",
            )?
            .unwrap_or(0))
        });
        let Some(count) = count else { return false };
        let dropped = self.last_count.is_some_and(|last| count < last);
        self.last_count = Some(count);
        if count == 0 {
            doorbell::clear_untracked(generation);
            self.last_count = None;
        }
        dropped
    }
}

/// Entry point of the maintenance worker: a pass every `ds.rotation_interval_ms`.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn durable_streams_maintenance_main(_arg: pg_sys::Datum) {
    let database = start_worker();
    log!("durable_streams maintenance: rotating and expiring streams in database \"{database}\"");
    let mut next_pass = Instant::now();
    let mut cursors = Cursors::default();
    let mut gate = VersionGate::default();
    loop {
        let until_pass = next_pass.saturating_duration_since(Instant::now());
        if !wait(until_pass.min(IDLE_WAKE)) {
            break;
        }
        reload_if_asked("maintenance");
        if Instant::now() >= next_pass {
            if !gate.open("maintenance", &database) {
                next_pass = Instant::now() + gate.recheck_in().max(Duration::from_millis(100));
                continue;
            }
            maintenance_pass(&mut cursors);
            let interval = u64::try_from(gucs::ROTATION_INTERVAL_MS.get()).unwrap_or(10_000);
            next_pass = Instant::now() + Duration::from_millis(interval);
        }
    }
    log!("durable_streams maintenance: exiting");
    exit_to_be_restarted();
}

/// Where rotation and expiry continue at the next pass (round-robin).
#[derive(Default)]
struct Cursors {
    rotation: maintenance::Cursor,
    expiry: maintenance::Cursor,
    retention: maintenance::Cursor,
}

/// One maintenance pass: rotation, expiry, producer retention, each stream
/// in its own transaction so one failure costs only that stream's turn.
/// Candidates are taken round-robin by stream id (see `maintenance::Cursor`),
/// so streams that make no progress or keep failing never starve the others.
fn maintenance_pass(cursors: &mut Cursors) {
    const BATCH: i64 = 100;
    /// Subscriptions one pass looks at (the sidecar ticks as well).
    const TICK_SUBSCRIPTIONS: i32 = 1000;
    // A hot standby replays what the primary's worker does; it cannot write.
    if storage::in_recovery() {
        return;
    }
    let started = Instant::now();
    let mut report = PassReport::default();
    let installed = in_transaction("checking the extension", || {
        Ok(Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('ds.streams') IS NOT NULL")?
            .unwrap_or(false))
    });
    if installed != Some(true) {
        return;
    }
    let cursor = cursors.rotation;
    let candidates = in_transaction("listing rotation candidates", move || {
        let mut cursor = cursor;
        Spi::connect_mut(|c| {
            maintenance::rotation_candidates(c, &mut cursor, BATCH).map(|v| (v, cursor))
        })
    })
    .map(|(v, c)| {
        cursors.rotation = c;
        v
    });
    for stream_id in candidates.unwrap_or_default() {
        if terminating() {
            return;
        }
        reload_if_asked("maintenance");
        match in_transaction(&format!("rotating stream {stream_id}"), || {
            Spi::connect_mut(|c| maintenance::rotate_stream(c, stream_id, false))
        }) {
            Some(done) => report.segments += done.segments,
            None => report.errors += 1,
        }
    }
    trim_pass(cursors, &mut report);
    let cursor = cursors.expiry;
    let expired = in_transaction("listing expired streams", move || {
        let mut cursor = cursor;
        Spi::connect(|c| maintenance::expired_streams(c, &mut cursor, BATCH).map(|v| (v, cursor)))
    })
    .map(|(v, c)| {
        cursors.expiry = c;
        v
    });
    for (_, path) in expired.unwrap_or_default() {
        match in_transaction(&format!("expiring stream {path:?}"), || {
            Spi::connect_mut(|c| maintenance::expire(c, &path))
        }) {
            Some(true) => report.expired += 1,
            Some(false) => {}
            None => report.errors += 1,
        }
    }
    // Subscriptions: lease expiry and pull-wake wakes work without a sidecar.
    match in_transaction("waking subscriptions", || {
        Spi::connect_mut(|c| crate::subscriptions::tick(c, TICK_SUBSCRIPTIONS))
    }) {
        Some(_) => {}
        None => report.errors += 1,
    }
    if in_transaction("forgetting idle producers", || {
        Spi::connect_mut(maintenance::forget_idle_producers)
    })
    .is_none()
    {
        report.errors += 1;
    }
    match in_transaction("forgetting path grants of dropped roles", || {
        Spi::connect_mut(maintenance::forget_grants_of_dropped_roles)
    }) {
        Some(0) => {}
        Some(n) => log!("durable_streams maintenance: deleted {n} path grant(s) of dropped roles"),
        None => report.errors += 1,
    }
    doorbell::record_pass(&report);
    if report.segments > 0 || report.expired > 0 || report.trimmed > 0 || report.errors > 0 {
        debug1!(
            "durable_streams worker: pass wrote {} segment(s), expired {} stream(s), \
             trimmed {} stream(s) by {} bytes, {} error(s) in {:?}",
            report.segments,
            report.expired,
            report.trimmed,
            report.trimmed_bytes,
            report.errors,
            started.elapsed()
        );
    }
}

/// Retention: each candidate trimmed in its own transaction, skipping
/// streams another transaction holds (they come round again).
fn trim_pass(cursors: &mut Cursors, report: &mut PassReport) {
    const BATCH: i64 = 100;
    let cursor = cursors.retention;
    let candidates = in_transaction("listing retention candidates", move || {
        let mut cursor = cursor;
        Spi::connect_mut(|c| {
            crate::retention::candidates(c, &mut cursor, BATCH).map(|v| (v, cursor))
        })
    })
    .map(|(v, c)| {
        cursors.retention = c;
        v
    });
    for stream_id in candidates.unwrap_or_default() {
        if terminating() {
            return;
        }
        match in_transaction(&format!("trimming stream {stream_id}"), || {
            Spi::connect_mut(|c| crate::retention::trim_stream(c, stream_id, false))
        }) {
            Some(done) if done.dropped.bytes > 0 || done.dropped.segments > 0 => {
                report.trimmed += 1;
                report.trimmed_bytes += done.dropped.bytes;
            }
            Some(_) => {}
            None => report.errors += 1,
        }
    }
}

/// Runs `work` in its own transaction. An error (returned or raised) rolls
/// the transaction back, is logged at WARNING with `what`, and gives `None`.
pub(crate) fn in_transaction<R>(
    what: &str,
    work: impl FnOnce() -> DsResult<R> + UnwindSafe + RefUnwindSafe,
) -> Option<R> {
    // SAFETY: the standard start of a transaction in a background worker.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let outcome = PgTryBuilder::new(|| work().map_err(|e| e.to_string()))
        .catch_others(|caught| {
            Err(match caught {
                pg_sys::panic::CaughtError::PostgresError(e)
                | pg_sys::panic::CaughtError::ErrorReport(e)
                | pg_sys::panic::CaughtError::RustPanic { ereport: e, .. } => {
                    e.message().to_owned()
                }
            })
        })
        .execute();
    match outcome {
        Ok(value) => {
            // SAFETY: pairs with the Push/Start above.
            unsafe {
                pg_sys::PopActiveSnapshot();
                pg_sys::CommitTransactionCommand();
            }
            report_table_stats();
            Some(value)
        }
        Err(message) => {
            warning!("durable_streams worker: {what} failed, will retry next pass: {message}");
            // SAFETY: aborting the failed transaction releases its snapshot and locks.
            unsafe { pg_sys::AbortCurrentTransaction() };
            report_table_stats();
            None
        }
    }
}

/// Hands this worker's table statistics (rows inserted, deleted, ...) to
/// the cumulative statistics system, at most once a second. A background
/// worker must do it itself: without it, autovacuum would never learn of
/// the rows the sequencer and the maintenance worker delete, and would
/// leave `ds.pending` and `ds.messages` to bloat.
fn report_table_stats() {
    // SAFETY: between transactions, as Postgres' own idle loop calls it.
    unsafe { pg_sys::pgstat_report_stat(false) };
}

/// Streams whose path and last announced state the doorbell remembers
/// (emptied when full; a stream id never changes its path, a new stream at
/// the same path gets a new id, so an entry never goes stale).
const MAX_KNOWN_STREAMS: usize = 65_536;

/// Streams read per statement when comparing the tables after an overflow.
const SCAN_PAGE: i64 = 10_000;

/// Most streams announced from one comparison with the tables; beyond it
/// (a database with more changed or never-announced streams) the worker
/// says `*` instead.
const MAX_SCAN_ANNOUNCED: usize = 65_536;

/// What one wake-up of the doorbell announces.
struct Ring {
    /// Streams the doorbell's sets remembered.
    streams: Vec<doorbell::Advanced>,
    /// Some streams did not fit: compare the tables with what was announced.
    overflow: bool,
    /// Nothing is known (after a restart or promotion): say `*`.
    everything: bool,
}

/// Sends the notifications for one wake-up; false if the extension is not
/// installed in this database (yet), so nothing could be said.
fn announce(
    ring: &Ring,
    announced: &mut Announced,
    seen_streams_table: &mut Option<pg_sys::Oid>,
) -> DsResult<bool> {
    // The extension dropped and created again since the last ring (stream
    // ids start over, so the paths learned belong to other streams): forget
    // them and say `*`.
    let Some(streams) = storage::streams_table() else { return Ok(false) };
    let reinstalled = seen_streams_table.is_some_and(|seen| seen != streams);
    if reinstalled {
        *announced = Announced::new(MAX_KNOWN_STREAMS);
    }
    *seen_streams_table = Some(streams);
    Spi::connect_mut(|client| {
        let unknown = announced.unknown(ring.streams.iter().map(|s| s.stream_id));
        if !unknown.is_empty() {
            announced.reserve(unknown.len());
            for (id, path) in storage::stream_paths(client, &unknown)? {
                announced.learn_path(id, path);
            }
        }
        let mut lines = Vec::new();
        if ring.everything || reinstalled {
            lines.push(Announcement::Everything.line());
        } else if ring.overflow {
            match changed_in_tables(client, announced)? {
                Some(changed) => lines.extend(changed),
                None => lines.push(Announcement::Everything.line()),
            }
        }
        for s in &ring.streams {
            // Skipped: a stream without a path (gone: deleted, or expired and
            // kept for forks), or a state already announced (by a comparison
            // with the tables that ran after its commit).
            if !announced.should_announce(*s) {
                continue;
            }
            let path = announced.path(s.stream_id).expect("announced streams have a path");
            let tail = ds_core::Offset::from_i64(s.tail);
            lines.push(
                Announcement::Advanced { path: path.to_owned(), tail, closed: s.closed }.line(),
            );
        }
        for payload in notification::pack(&lines, MAX_PAYLOAD) {
            storage::notify(client, &payload)?;
        }
        Ok(true)
    })
}

/// After an overflow: the announcement lines of every stream whose state in
/// the tables differs from the one last announced (or that was never
/// announced), read page by page; `None` when there are more than
/// [`MAX_SCAN_ANNOUNCED`] of them.
fn changed_in_tables(
    client: &spi::SpiClient<'_>,
    announced: &mut Announced,
) -> DsResult<Option<Vec<String>>> {
    let mut lines = Vec::new();
    let mut after = 0;
    loop {
        let page = storage::stream_states_after(client, after, SCAN_PAGE)?;
        let last_page = (page.len() as i64) < SCAN_PAGE;
        for (stream_id, path, tail, closed) in page {
            after = stream_id;
            if announced.changed(doorbell::Advanced { stream_id, tail, closed }, &path) {
                if lines.len() == MAX_SCAN_ANNOUNCED {
                    return Ok(None);
                }
                let tail = ds_core::Offset::from_i64(tail);
                lines.push(Announcement::Advanced { path, tail, closed }.line());
            }
        }
        if last_page {
            return Ok(Some(lines));
        }
    }
}
