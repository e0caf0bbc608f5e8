//! The doorbell: how appends announce themselves without taking Postgres'
//! cluster-wide NOTIFY lock on every commit.
//!
//! `NOTIFY` holds a cluster-wide lock from pre-commit until after commit, so
//! every notifying transaction commits alone (DESIGN.md, "Live tailing").
//! Instead, an appending transaction only remembers which streams it advanced
//! (id, new tail, closed); its commit callback merges them into a bounded set
//! in shared memory and sets the worker's latch. The worker (`worker.rs`) then
//! sends ONE notification per wake-up naming every stream that advanced, with
//! the tail its last commit left, without reading the tables (it only looks a
//! path up the first time it meets a stream id).
//!
//! Without `shared_preload_libraries` (no shared memory), or when no worker
//! serves this database, appends fall back to a plain `pg_notify` each.
//!
//! Subtransactions: each remembered stream is tagged with the subtransaction
//! that advanced it; `ROLLBACK TO SAVEPOINT` (or a PL/pgSQL exception block)
//! drops that subtransaction's entries, `RELEASE` hands them to the parent.
//!
//! Two-phase commit: at `PREPARE TRANSACTION` nothing is announced; the
//! entries move to shared memory under the transaction's GID (learnt by a
//! utility hook from the `PREPARE TRANSACTION` statement), and the backend
//! that runs `COMMIT PREPARED` (any backend: the hook runs everywhere when
//! preloaded) hands them to the worker once the commit is done; `ROLLBACK
//! PREPARED` drops them. Entries that could not be kept (no room, GID
//! unknown, or a prepared transaction older than this server start) make
//! the next `COMMIT PREPARED` of an unknown GID announce `*`.

use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{PGRXSharedMemory, PgLwLock};

use crate::error::DsResult;
use ds_core::notification::Announcement;

use crate::storage;

/// Stream ids waiting for the worker; beyond this the worker announces "*".
const CAPACITY: usize = 1024;
/// Distinct streams one transaction remembers before it announces "*".
const PER_TRANSACTION: usize = 64;
/// Entries (stream x subtransaction) one transaction keeps before it
/// announces "*" instead (bounds nested savepoints that each append).
const ENTRIES_PER_TRANSACTION: usize = 1024;
/// Stream entries of prepared transactions waiting for `COMMIT PREPARED`.
const PREPARED_CAPACITY: usize = 128;
/// Postgres' GIDSIZE: longest transaction identifier, with its NUL.
const GID_SIZE: usize = 200;

/// One stream's latest committed state, as announced.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Advanced {
    pub stream_id: i64,
    pub tail: i64,
    pub closed: bool,
}

impl Advanced {
    /// Folds a later (or concurrent) commit of the same stream into this one:
    /// tails only grow and a closed stream stays closed.
    fn merge(&mut self, other: Advanced) {
        self.tail = self.tail.max(other.tail);
        self.closed |= other.closed;
    }
}

/// One stream a prepared transaction advanced (or, with `everything`, the
/// marker of a prepared transaction that overflowed its per-transaction set).
#[derive(Copy, Clone)]
struct PreparedEntry {
    used: bool,
    everything: bool,
    gid_len: u8,
    gid: [u8; GID_SIZE],
    advanced: Advanced,
}

impl PreparedEntry {
    const EMPTY: PreparedEntry = PreparedEntry {
        used: false,
        everything: false,
        gid_len: 0,
        gid: [0; GID_SIZE],
        advanced: Advanced { stream_id: 0, tail: 0, closed: false },
    };

    fn is(&self, gid: &[u8]) -> bool {
        self.used && &self.gid[..usize::from(self.gid_len)] == gid
    }
}

/// Shared state between appending backends and the worker.
#[derive(Copy, Clone)]
pub struct Pending {
    /// The worker's latch (a pointer into shared memory), 0 when none runs.
    worker_latch: usize,
    /// Database the worker serves.
    database: u32,
    /// Set when ids were dropped because the set was full.
    overflow: bool,
    /// Worker statistics, for `ds.worker_stats()`.
    passes: i64,
    last_pass_unix_ms: i64,
    segments_written: i64,
    streams_expired: i64,
    errors: i64,
    len: usize,
    streams: [Advanced; CAPACITY],
    /// Prepared transactions' streams, by GID, until COMMIT/ROLLBACK PREPARED.
    prepared: [PreparedEntry; PREPARED_CAPACITY],
    /// Some prepared transaction's streams are not in `prepared` (no room,
    /// GID unknown, or prepared before this server started): a COMMIT
    /// PREPARED of a GID not found then announces "*". Starts set; the
    /// worker clears it when its database has no prepared transaction.
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
            errors: 0,
            len: 0,
            streams: [Advanced { stream_id: 0, tail: 0, closed: false }; CAPACITY],
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
    /// Too many streams: announce "*".
    overflow: bool,
    /// GID of a `PREPARE TRANSACTION` being executed (from the utility hook).
    prepare_gid: Option<Vec<u8>>,
}

impl Local {
    /// Everything to announce, one entry per stream (tails only grow).
    fn merged(entries: Vec<Entry>) -> Vec<Advanced> {
        let mut out: Vec<Advanced> = Vec::with_capacity(entries.len());
        for e in entries {
            match out.iter_mut().find(|a| a.stream_id == e.advanced.stream_id) {
                Some(a) => a.merge(e.advanced),
                None => out.push(e.advanced),
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
    PRELOADED.store(true, Ordering::Relaxed);
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
    LOCAL.with(|cell| {
        let mut local = cell.borrow_mut();
        if let Some(e) = local
            .entries
            .iter_mut()
            .find(|e| e.subxact == subxact && e.advanced.stream_id == stream_id)
        {
            e.advanced.merge(advanced);
            return;
        }
        let known = local.entries.iter().any(|e| e.advanced.stream_id == stream_id);
        let streams = || {
            let mut ids: Vec<i64> = local.entries.iter().map(|e| e.advanced.stream_id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        };
        if local.entries.len() >= ENTRIES_PER_TRANSACTION
            || (!known && streams() >= PER_TRANSACTION)
        {
            local.overflow = true;
        } else {
            local.entries.push(Entry { subxact, advanced });
        }
    });
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
        match event {
            SUBXACT_EVENT_ABORT_SUB => local.entries.retain(|e| e.subxact != subxact),
            SUBXACT_EVENT_COMMIT_SUB => {
                if !local.entries.iter().any(|e| e.subxact == subxact) {
                    return;
                }
                let entries = std::mem::take(&mut local.entries);
                for mut e in entries {
                    if e.subxact == subxact {
                        e.subxact = parent;
                    }
                    match local.entries.iter_mut().find(|x| {
                        x.subxact == e.subxact && x.advanced.stream_id == e.advanced.stream_id
                    }) {
                        Some(x) => x.advanced.merge(e.advanced),
                        None => local.entries.push(e),
                    }
                }
            }
            _ => {}
        }
    });
}

/// Hands committed streams to the worker and wakes it.
fn ring(streams: &[Advanced], overflow: bool) {
    let latch = {
        let mut shared = PENDING.exclusive();
        shared.overflow |= overflow;
        for &advanced in streams {
            let len = shared.len;
            match shared.streams[..len].iter().position(|s| s.stream_id == advanced.stream_id) {
                Some(i) => shared.streams[i].merge(advanced),
                None if len < CAPACITY => {
                    shared.streams[len] = advanced;
                    shared.len += 1;
                }
                None => shared.overflow = true,
            }
        }
        shared.worker_latch
    };
    if latch != 0 {
        // SAFETY: the worker registered its own latch, which lives in shared memory.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// At PREPARE: keeps the transaction's streams in shared memory under its GID.
fn keep_prepared(local: Local) {
    let mut shared = PENDING.exclusive();
    let Some(gid) = local.prepare_gid.filter(|g| g.len() < GID_SIZE) else {
        mark_untracked(&mut shared);
        return;
    };
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
    let mut slots = shared.prepared.iter_mut().filter(|e| !e.used);
    for (everything, advanced) in wanted {
        let slot = slots.next().expect("counted above");
        slot.used = true;
        slot.everything = everything;
        slot.gid_len = gid.len() as u8;
        slot.gid[..gid.len()].copy_from_slice(&gid);
        slot.advanced = advanced;
    }
}

fn mark_untracked(shared: &mut Pending) {
    shared.prepared_untracked = true;
    shared.untracked_generation += 1;
}

/// Utility hook side, before `PREPARE TRANSACTION gid` runs: remembers the
/// GID for the PREPARE callback.
fn preparing(gid: &CStr) {
    LOCAL.with(|cell| cell.borrow_mut().prepare_gid = Some(gid.to_bytes().to_vec()));
}

/// Utility hook side, after `COMMIT PREPARED gid` (`committed`) or `ROLLBACK
/// PREPARED gid` succeeded: announces the prepared transaction's streams, or
/// drops them.
fn finished_prepared(gid: &CStr, committed: bool) {
    if !PRELOADED.load(Ordering::Relaxed) {
        return;
    }
    let gid = gid.to_bytes();
    let (streams, everything) = {
        let mut shared = PENDING.exclusive();
        let mut streams = Vec::new();
        let (mut found, mut everything) = (false, false);
        for e in shared.prepared.iter_mut().filter(|e| e.is(gid)) {
            found = true;
            everything |= e.everything;
            if !e.everything {
                streams.push(e.advanced);
            }
            *e = PreparedEntry::EMPTY;
        }
        if !found && shared.prepared_untracked {
            everything = true;
        }
        (streams, everything)
    };
    if committed && (everything || !streams.is_empty()) && worker_serves_this_database() {
        ring(&streams, everything);
    }
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

/// The utility hook that follows two-phase commit (installed when preloaded).
static mut PREV_UTILITY_HOOK: pg_sys::ProcessUtility_hook_type = None;

/// Installs the utility hook; only from `_PG_init` during preload.
pub fn install_utility_hook() {
    // SAFETY: single-threaded postmaster start-up; the previous hook is chained.
    unsafe {
        PREV_UTILITY_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(utility_hook);
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn utility_hook(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    use pg_sys::TransactionStmtKind::*;
    // SAFETY: Postgres passes a valid statement; a TransactionStmt's gid is
    // NULL or a NUL-terminated string living as long as the statement.
    let two_phase = unsafe {
        let stmt = (*pstmt).utilityStmt;
        if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_TransactionStmt {
            let t = stmt.cast::<pg_sys::TransactionStmt>();
            let kind = (*t).kind;
            let is_2pc = matches!(
                kind,
                TRANS_STMT_PREPARE | TRANS_STMT_COMMIT_PREPARED | TRANS_STMT_ROLLBACK_PREPARED
            );
            (is_2pc && !(*t).gid.is_null()).then(|| (kind, CStr::from_ptr((*t).gid).to_owned()))
        } else {
            None
        }
    };
    if let Some((TRANS_STMT_PREPARE, gid)) = &two_phase {
        preparing(gid);
    }
    // SAFETY: forwarding the arguments we were given, unchanged.
    unsafe {
        match PREV_UTILITY_HOOK {
            Some(prev) => {
                prev(pstmt, query_string, read_only_tree, context, params, query_env, dest, qc)
            }
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
    match &two_phase {
        Some((TRANS_STMT_COMMIT_PREPARED, gid)) => finished_prepared(gid, true),
        Some((TRANS_STMT_ROLLBACK_PREPARED, gid)) => finished_prepared(gid, false),
        _ => {}
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
    let ids = shared.streams[..shared.len].to_vec();
    let overflow = shared.overflow;
    shared.len = 0;
    shared.overflow = false;
    (ids, overflow)
}

/// Worker side: adds one maintenance pass to the shared statistics.
pub fn record_pass(segments: i64, expired: i64, errors: i64) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut shared = PENDING.exclusive();
    shared.passes += 1;
    shared.last_pass_unix_ms = now_ms;
    shared.segments_written += segments;
    shared.streams_expired += expired;
    shared.errors += errors;
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
    errors: i64,
}
