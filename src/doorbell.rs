//! The doorbell: how appends announce themselves without taking Postgres'
//! cluster-wide NOTIFY lock on every commit.
//!
//! `NOTIFY` holds a cluster-wide lock from pre-commit until after commit, so
//! every notifying transaction commits alone (measured: README, *Notifications*).
//! Instead, an appending transaction only remembers which streams it advanced
//! (id, new tail, closed); its commit callback merges them into a bounded set
//! in shared memory and sets the worker's latch. The worker (`worker.rs`) then
//! announces every stream that advanced, with the tail its last commit left,
//! in as few notifications as fit (< 8000 bytes each), without reading the
//! tables (it only looks a path up the first time it meets a stream id).
//!
//! Both sets are bounded (`PER_TRANSACTION`, `CAPACITY`) and O(1) per stream,
//! so a group-commit batch over thousands of streams costs no more per stream
//! than a single append. A stream that does not fit marks an *overflow*: the
//! worker then compares the streams' tails in the tables with the last state
//! it announced for each and announces exactly those that differ (`*`, "wake
//! everybody", only after a restart or promotion, when nothing better is
//! known).
//!
//! Without `shared_preload_libraries` (no shared memory), or when no worker
//! serves this database, appends fall back to a plain `pg_notify` each.
//!
//! Subtransactions: each remembered stream is tagged with the subtransaction
//! that advanced it; `ROLLBACK TO SAVEPOINT` (or a PL/pgSQL exception block)
//! drops that subtransaction's entries, `RELEASE` hands them to the parent.
//!
//! Two-phase commit: at `PREPARE TRANSACTION` nothing is announced; the
//! entries move to shared memory under the transaction's id. The worker
//! looks those ids up in the commit log whenever it wakes: a committed one's
//! streams are announced, an aborted one's dropped. Every commit in a
//! preloaded server sets the worker's latch while such entries exist, so a
//! `COMMIT PREPARED` (from any session) is announced at once. Prepared
//! transactions whose entries could not be kept (no room, or prepared before
//! this server started) are "untracked": while there are any, the worker
//! compares the tables with what it announced (as after an overflow)
//! whenever this database's number of prepared transactions drops. No utility hook is involved, so no statement's errors pass through
//! this library.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{PGRXSharedMemory, PgAtomic, PgLwLock};

use crate::error::DsResult;
use ds_core::doorbell::PendingSet;
use ds_core::notification::Announcement;

use crate::storage;

/// Streams waiting for the worker. Beyond this the committing transaction
/// marks an overflow and the worker finds the changed streams in the tables.
const CAPACITY: usize = 8192;
/// Hash slots of the shared set (a power of two, twice `CAPACITY`).
const SLOTS: usize = 2 * CAPACITY;
/// Distinct streams one transaction remembers before it marks an overflow
/// (more could not fit into the shared set anyway).
const PER_TRANSACTION: usize = CAPACITY;
/// Entries (stream x subtransaction) one transaction keeps before it marks
/// an overflow instead (bounds nested savepoints that each append).
const ENTRIES_PER_TRANSACTION: usize = 2 * CAPACITY;
/// Stream entries of prepared transactions waiting for `COMMIT PREPARED`.
const PREPARED_CAPACITY: usize = 128;

pub use ds_core::doorbell::Advanced;

/// One stream a prepared transaction advanced (or, with `everything`, the
/// marker of a prepared transaction that overflowed its per-transaction set).
#[derive(Copy, Clone)]
struct PreparedEntry {
    used: bool,
    everything: bool,
    /// The prepared transaction's id.
    xid: u32,
    advanced: Advanced,
}

impl PreparedEntry {
    const EMPTY: PreparedEntry = PreparedEntry {
        used: false,
        everything: false,
        xid: 0,
        advanced: Advanced { stream_id: 0, tail: 0, closed: false },
    };
}

/// Shared state between appending backends and the worker.
#[derive(Copy, Clone)]
pub struct Pending {
    /// The worker's latch (a pointer into shared memory), 0 when none runs.
    worker_latch: usize,
    /// Database the worker serves.
    database: u32,
    /// Set when streams were dropped because a set was full: the worker
    /// then compares the tables with what it announced.
    overflow: bool,
    /// Worker statistics, for `ds.worker_stats()`.
    passes: i64,
    last_pass_unix_ms: i64,
    segments_written: i64,
    streams_expired: i64,
    streams_trimmed: i64,
    bytes_trimmed: i64,
    errors: i64,
    streams: PendingSet<CAPACITY, SLOTS>,
    /// Prepared transactions' streams, by transaction id, until they end.
    prepared: [PreparedEntry; PREPARED_CAPACITY],
    /// Some prepared transaction's streams are not in `prepared` (no room,
    /// or prepared before this server started). Starts set; the worker
    /// clears it when its database has no prepared transaction.
    prepared_untracked: bool,
    /// Bumped whenever `prepared_untracked` is set (see `clear_untracked`).
    untracked_generation: u64,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            worker_latch: 0,
            database: 0,
            overflow: false,
            passes: 0,
            last_pass_unix_ms: 0,
            segments_written: 0,
            streams_expired: 0,
            streams_trimmed: 0,
            bytes_trimmed: 0,
            errors: 0,
            streams: PendingSet::new(),
            prepared: [PreparedEntry::EMPTY; PREPARED_CAPACITY],
            prepared_untracked: true,
            untracked_generation: 0,
        }
    }
}

// SAFETY: plain old data without pointers into process-local memory (the
// latch address is in shared memory, identical in every backend).
unsafe impl PGRXSharedMemory for Pending {}

// SAFETY: the name is unique to this extension; initialised in `_PG_init`.
static PENDING: PgLwLock<Pending> = unsafe { PgLwLock::new(c"durable_streams_doorbell") };

/// Used slots of `Pending::prepared`, readable without the lock: every
/// commit checks it to wake the worker after a `COMMIT PREPARED`.
static PREPARED_USED: PgAtomic<AtomicU32> =
    // SAFETY: the name is unique to this extension; initialised in `_PG_init`.
    unsafe { PgAtomic::new(c"durable_streams_prepared_used") };

/// True in every process forked from a postmaster that preloaded us.
static PRELOADED: AtomicBool = AtomicBool::new(false);

/// One stream advanced by one (sub)transaction of this backend.
#[derive(Copy, Clone, Debug)]
struct Entry {
    subxact: pg_sys::SubTransactionId,
    advanced: Advanced,
}

/// What this backend's open transaction will announce.
#[derive(Default)]
struct Local {
    entries: Vec<Entry>,
    /// Where each (subtransaction, stream) is in `entries`: a batch over
    /// thousands of streams must not search the list per stream.
    index: HashMap<(pg_sys::SubTransactionId, i64), usize>,
    /// Entries per stream (the bound counts distinct streams).
    per_stream: HashMap<i64, u32>,
    /// Some stream was not remembered: the worker must look at the tables.
    overflow: bool,
}

impl Local {
    /// Remembers that `subxact` advanced a stream (merged with what it
    /// already advanced there), or marks an overflow beyond the bounds.
    fn add(&mut self, subxact: pg_sys::SubTransactionId, advanced: Advanced) {
        if let Some(&i) = self.index.get(&(subxact, advanced.stream_id)) {
            self.entries[i].advanced.merge(advanced);
            return;
        }
        let known = self.per_stream.contains_key(&advanced.stream_id);
        if self.entries.len() >= ENTRIES_PER_TRANSACTION
            || (!known && self.per_stream.len() >= PER_TRANSACTION)
        {
            self.overflow = true;
            return;
        }
        self.index.insert((subxact, advanced.stream_id), self.entries.len());
        *self.per_stream.entry(advanced.stream_id).or_default() += 1;
        self.entries.push(Entry { subxact, advanced });
    }

    /// Keeps the entries `keep` says yes to, each under the subtransaction
    /// it returns (merging entries that end up under the same one).
    fn remap(&mut self, keep: impl Fn(&Entry) -> Option<pg_sys::SubTransactionId>) {
        let entries = std::mem::take(&mut self.entries);
        self.index.clear();
        self.per_stream.clear();
        for e in entries {
            if let Some(subxact) = keep(&e) {
                self.add(subxact, e.advanced);
            }
        }
    }

    /// Everything to announce, one entry per stream (tails only grow).
    fn merged(entries: Vec<Entry>) -> Vec<Advanced> {
        let mut out: Vec<Advanced> = Vec::with_capacity(entries.len());
        let mut at: HashMap<i64, usize> = HashMap::with_capacity(entries.len());
        for e in entries {
            match at.get(&e.advanced.stream_id) {
                Some(&i) => out[i].merge(e.advanced),
                None => {
                    at.insert(e.advanced.stream_id, out.len());
                    out.push(e.advanced);
                }
            }
        }
        out
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
    /// Whether this backend registered its transaction callbacks.
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
}

/// Allocates the shared state; only from `_PG_init` during preload.
pub fn init_shared_memory() {
    pgrx::pg_shmem_init!(PENDING);
    pgrx::pg_shmem_init!(PREPARED_USED);
    PRELOADED.store(true, Ordering::Relaxed);
    // Registered in the postmaster, so every backend has them: a commit
    // must be able to wake the worker after a COMMIT PREPARED even in a
    // session that never appended.
    register_callbacks();
}

/// Announces that `stream_id` (at `path`) advanced to `tail` (and is now
/// `closed` or not).
pub fn stream_advanced(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    path: &str,
    tail: ds_core::Offset,
    closed: bool,
) -> DsResult<()> {
    if !crate::gucs::NOTIFY.get() {
        return Ok(());
    }
    if !worker_serves_this_database() {
        return storage::notify(
            client,
            &Announcement::Advanced { path: path.to_owned(), tail, closed }.line(),
        );
    }
    register_callbacks();
    // SAFETY: plain read of the current subtransaction's id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    let advanced = Advanced { stream_id, tail: tail.as_i64(), closed };
    LOCAL.with(|cell| cell.borrow_mut().add(subxact, advanced));
    Ok(())
}

fn worker_serves_this_database() -> bool {
    if !PRELOADED.load(Ordering::Relaxed) {
        return false;
    }
    let shared = PENDING.share();
    // SAFETY: MyDatabaseId is set once the backend is connected.
    shared.worker_latch != 0 && shared.database == unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// Registers this backend's transaction and subtransaction callbacks, once.
/// They stay registered for the backend's life and cost nothing while the
/// transaction remembered no stream.
fn register_callbacks() {
    if CALLBACKS.with(Cell::get) {
        return;
    }
    // SAFETY: registering callbacks for the rest of this backend's life.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact_event), std::ptr::null_mut());
    }
    CALLBACKS.with(|c| c.set(true));
}

/// Transaction end: announce at commit, hand over at prepare, forget at
/// abort. Must neither fail nor panic (the transaction is over).
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT => {
            let local = LOCAL.with(|cell| cell.take());
            if !local.entries.is_empty() || local.overflow {
                ring(&Local::merged(local.entries), local.overflow);
            } else if PRELOADED.load(Ordering::Relaxed)
                && PREPARED_USED.get().load(Ordering::Relaxed) > 0
            {
                // Perhaps a COMMIT PREPARED: let the worker look.
                wake_worker();
            }
        }
        XACT_EVENT_PREPARE => {
            let local = LOCAL.with(|cell| cell.take());
            if !local.entries.is_empty() || local.overflow {
                keep_prepared(local);
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PARALLEL_COMMIT => {
            LOCAL.with(|cell| cell.take());
        }
        _ => {}
    }
}

/// Subtransaction end: a rolled-back savepoint's streams are not announced;
/// a released one's belong to its parent from now on.
#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    LOCAL.with(|cell| {
        let mut local = cell.borrow_mut();
        if !matches!(event, SUBXACT_EVENT_ABORT_SUB | SUBXACT_EVENT_COMMIT_SUB)
            || !local.entries.iter().any(|e| e.subxact == subxact)
        {
            return;
        }
        let aborted = event == SUBXACT_EVENT_ABORT_SUB;
        local.remap(|e| match e.subxact == subxact {
            true if aborted => None,
            true => Some(parent),
            false => Some(e.subxact),
        });
    });
}

/// Hands committed streams to the worker and wakes it.
fn ring(streams: &[Advanced], overflow: bool) {
    let latch = {
        let mut shared = PENDING.exclusive();
        shared.overflow |= overflow;
        for &advanced in streams {
            if !shared.streams.add(advanced) {
                shared.overflow = true;
            }
        }
        shared.worker_latch
    };
    set_latch(latch);
}

fn set_latch(latch: usize) {
    if latch != 0 {
        // SAFETY: the worker registered its own latch, which lives in shared memory.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

fn wake_worker() {
    let latch = PENDING.share().worker_latch;
    set_latch(latch);
}

/// At PREPARE: keeps the transaction's streams in shared memory under its id.
fn keep_prepared(local: Local) {
    // SAFETY: plain read; at XACT_EVENT_PREPARE the transaction still has its id.
    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() };
    let mut shared = PENDING.exclusive();
    if xid == pg_sys::InvalidTransactionId {
        mark_untracked(&mut shared);
        return;
    }
    let mut wanted: Vec<(bool, Advanced)> =
        Local::merged(local.entries).into_iter().map(|a| (false, a)).collect();
    if local.overflow {
        wanted.push((true, Advanced::default()));
    }
    let free = shared.prepared.iter().filter(|e| !e.used).count();
    if free < wanted.len() {
        mark_untracked(&mut shared);
        return;
    }
    let taken = wanted.len();
    let mut slots = shared.prepared.iter_mut().filter(|e| !e.used);
    for (everything, advanced) in wanted {
        let slot = slots.next().expect("counted above");
        *slot = PreparedEntry { used: true, everything, xid: xid.into_inner(), advanced };
    }
    PREPARED_USED.get().fetch_add(taken as u32, Ordering::Relaxed);
}

fn mark_untracked(shared: &mut Pending) {
    shared.prepared_untracked = true;
    shared.untracked_generation += 1;
}

/// Whether any prepared transaction's streams are kept (see
/// [`take_finished_prepared`]): when none are, the worker needs no
/// transaction to look them up.
pub fn any_prepared() -> bool {
    PREPARED_USED.get().load(Ordering::Relaxed) > 0
}

/// Worker side: the streams of prepared transactions that committed since
/// the last look (and whether one of them overflowed: look at the tables); the
/// entries of those that ended either way are freed.
pub fn take_finished_prepared() -> (Vec<Advanced>, bool) {
    if !any_prepared() {
        return (Vec::new(), false);
    }
    let mut xids: Vec<u32> =
        PENDING.share().prepared.iter().filter(|e| e.used).map(|e| e.xid).collect();
    xids.sort_unstable();
    xids.dedup();
    // Commit-log lookups without holding our lock.
    let ended: Vec<(u32, bool)> = xids
        .into_iter()
        .filter_map(|xid| {
            let id = pg_sys::TransactionId::from(xid);
            // SAFETY: commit-log lookups of a transaction id we saw prepared.
            unsafe {
                if pg_sys::TransactionIdDidCommit(id) {
                    Some((xid, true))
                } else if pg_sys::TransactionIdDidAbort(id) {
                    Some((xid, false))
                } else {
                    None
                }
            }
        })
        .collect();
    let (mut streams, mut everything, mut freed) = (Vec::new(), false, 0u32);
    if !ended.is_empty() {
        let mut shared = PENDING.exclusive();
        for e in shared.prepared.iter_mut().filter(|e| e.used) {
            if let Some(&(_, committed)) = ended.iter().find(|(x, _)| *x == e.xid) {
                if committed {
                    everything |= e.everything;
                    if !e.everything {
                        streams.push(e.advanced);
                    }
                }
                *e = PreparedEntry::EMPTY;
                freed += 1;
            }
        }
    }
    PREPARED_USED.get().fetch_sub(freed, Ordering::Relaxed);
    (streams, everything)
}

/// Worker side: the generation of the untracked flag, to pass to
/// [`clear_untracked`] after checking that no prepared transaction exists.
pub fn untracked_generation() -> Option<u64> {
    let shared = PENDING.share();
    shared.prepared_untracked.then_some(shared.untracked_generation)
}

/// Worker side: clears the untracked flag unless it was set again since
/// `generation` was read.
pub fn clear_untracked(generation: u64) {
    let mut shared = PENDING.exclusive();
    if shared.untracked_generation == generation {
        shared.prepared_untracked = false;
    }
}

/// Worker side: registers the worker's latch and database.
pub fn register_worker() {
    let mut shared = PENDING.exclusive();
    // SAFETY: called in the worker after it connected to its database.
    unsafe {
        shared.worker_latch = pg_sys::MyLatch as usize;
        shared.database = pg_sys::MyDatabaseId.to_u32();
    }
}

/// Worker side: unregisters on a clean exit, so backends fall back to pg_notify.
pub fn unregister_worker() {
    PENDING.exclusive().worker_latch = 0;
}

/// Worker side: takes the pending streams and the overflow flag.
pub fn take_pending() -> (Vec<Advanced>, bool) {
    let mut shared = PENDING.exclusive();
    let streams = shared.streams.take();
    let overflow = std::mem::take(&mut shared.overflow);
    (streams, overflow)
}

/// What one maintenance pass did.
#[derive(Default)]
pub struct PassReport {
    pub segments: i64,
    pub expired: i64,
    /// Streams a retention trim cut, and the stream bytes it dropped.
    pub trimmed: i64,
    pub trimmed_bytes: i64,
    pub errors: i64,
}

/// Worker side: adds one maintenance pass to the shared statistics.
pub fn record_pass(report: &PassReport) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut shared = PENDING.exclusive();
    shared.passes += 1;
    shared.last_pass_unix_ms = now_ms;
    shared.segments_written += report.segments;
    shared.streams_expired += report.expired;
    shared.streams_trimmed += report.trimmed;
    shared.bytes_trimmed += report.trimmed_bytes;
    shared.errors += report.errors;
}

/// Statistics of the background worker; no row without `shared_preload_libraries`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn worker_stats() -> TableIterator<
    'static,
    (
        name!(running, bool),
        name!(database_oid, i64),
        name!(passes, i64),
        name!(last_pass, Option<TimestampWithTimeZone>),
        name!(segments_written, i64),
        name!(streams_expired, i64),
        name!(errors, i64),
        name!(streams_trimmed, i64),
        name!(bytes_trimmed, i64),
    ),
> {
    if !PRELOADED.load(Ordering::Relaxed) {
        return TableIterator::new(Vec::new());
    }
    let s = {
        let shared = PENDING.share();
        Stats {
            worker_latch: shared.worker_latch,
            database: shared.database,
            passes: shared.passes,
            last_pass_unix_ms: shared.last_pass_unix_ms,
            segments_written: shared.segments_written,
            streams_expired: shared.streams_expired,
            streams_trimmed: shared.streams_trimmed,
            bytes_trimmed: shared.bytes_trimmed,
            errors: shared.errors,
        }
    };
    let last_pass = (s.last_pass_unix_ms > 0).then(|| {
        TimestampWithTimeZone::try_from(
            // Postgres epoch is 2000-01-01; microseconds.
            (s.last_pass_unix_ms - 946_684_800_000) * 1000,
        )
        .ok()
    });
    TableIterator::once((
        s.worker_latch != 0,
        i64::from(s.database),
        s.passes,
        last_pass.flatten(),
        s.segments_written,
        s.streams_expired,
        s.errors,
        s.streams_trimmed,
        s.bytes_trimmed,
    ))
}

/// The counters `ds.worker_stats()` shows (copied out of the lock).
struct Stats {
    worker_latch: usize,
    database: u32,
    passes: i64,
    last_pass_unix_ms: i64,
    segments_written: i64,
    streams_expired: i64,
    streams_trimmed: i64,
    bytes_trimmed: i64,
    errors: i64,
}
