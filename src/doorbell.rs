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

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{PGRXSharedMemory, PgLwLock, PgXactCallbackEvent, register_xact_callback};

use crate::error::DsResult;
use ds_core::notification::Announcement;

use crate::storage;

/// Stream ids waiting for the worker; beyond this the worker announces "*".
const CAPACITY: usize = 1024;
/// Distinct streams one transaction remembers before it announces "*".
const PER_TRANSACTION: usize = 64;

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

thread_local! {
    /// Streams this backend's open transaction advanced; `None` when its
    /// commit callback is not registered yet. `(streams, overflow)`.
    static IN_TRANSACTION: RefCell<Option<(Vec<Advanced>, bool)>> = const { RefCell::new(None) };
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
    IN_TRANSACTION.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (streams, overflow) = slot.get_or_insert_with(|| {
            register_xact_callback(PgXactCallbackEvent::Commit, ring_after_commit);
            register_xact_callback(PgXactCallbackEvent::Abort, forget);
            (Vec::new(), false)
        });
        let advanced = Advanced { stream_id, tail: tail.as_i64(), closed };
        match streams.iter().position(|s| s.stream_id == stream_id) {
            Some(i) => streams[i].merge(advanced),
            None if streams.len() < PER_TRANSACTION => streams.push(advanced),
            None => *overflow = true,
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

fn forget() {
    IN_TRANSACTION.with(|cell| cell.borrow_mut().take());
}

/// Commit callback: must neither fail nor panic (the transaction is over).
fn ring_after_commit() {
    let Some((streams, overflow)) = IN_TRANSACTION.with(|cell| cell.borrow_mut().take()) else {
        return;
    };
    let latch = {
        let mut shared = PENDING.exclusive();
        shared.overflow |= overflow;
        for advanced in streams {
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
    let s = *PENDING.share();
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
