//! `ds.enqueue`: an append that takes no stream lock, for hot streams that
//! many transactions write at once (the transactional outbox).
//!
//! `ds.append` locks its stream's row until commit, so appenders of one
//! stream commit one after another. `ds.enqueue` only inserts its messages
//! into `ds.pending` under its transaction id and returns nothing: the
//! offsets are given after commit, by the sequencer worker
//! (`sequencer.rs`) or by the next locking append to the stream, whichever
//! comes first (`apply::sequence_pending`). Transactions are sequenced per
//! batch in the order of their last write (the WAL insert position each
//! row records, then xid), each one's messages together and in its order:
//! a transaction that began after another committed writes after that
//! commit record, and so does one that waited for another's row lock
//! (change capture relies on that for per-row commit order).
//!
//! Closing or deleting a stream must not race an enqueue in flight (its
//! messages would land after the close). Enqueuers therefore hold a shared
//! lock on the stream's path (a heavyweight advisory-type lock in a space of
//! our own, so no user advisory lock collides) until they end, and
//! closers take it exclusively, then sequence what committed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ds_core::acl::Privilege;
use ds_core::content_type::{self, Mode};
use ds_core::json::Purpose;
use ds_core::{Error as CoreError, limits};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{PgAtomic, pg_shmem_init};

use crate::acl;
use crate::append::messages_for;
use crate::apply::LockWait;
use crate::error::{DsError, DsResult};
use crate::gucs;
use crate::quota::Quotas;
use crate::storage::{self, Lock};

/// The sequencer's latch (a pointer into shared memory), 0 while none runs.
static SEQUENCER_LATCH: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"durable_streams_sequencer_latch") };
/// The database the sequencer serves.
static SEQUENCER_DATABASE: PgAtomic<AtomicU32> =
    unsafe { PgAtomic::new(c"durable_streams_sequencer_database") };
/// Enqueuing transactions that reached pre-commit (their rows are about to
/// become visible), and those of them that have ended since.
static PRE_COMMITTED: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"durable_streams_enqueue_pre_committed") };
static ENDED: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"durable_streams_enqueue_ended") };
/// Bumped by every quota change (`ds.set_quota`, `ds.set_stream_quota`):
/// `KNOWN` entries from before are not trusted to be quota-free.
static QUOTA_EPOCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"durable_streams_quota_epoch") };
/// Bumped by everyone who locks enqueuers out of a path (closes, deletes,
/// expiry), as soon as they hold that lock: a `KNOWN` entry cached before
/// may describe a stream that is closed or gone by the time an enqueuer
/// gets the path lock again, and is checked against the table instead.
static STATE_EPOCH: PgAtomic<AtomicU64> = unsafe { PgAtomic::new(c"durable_streams_state_epoch") };
/// One more than `PRE_COMMITTED` as of the last sequencer round that left
/// nothing pending: while it still matches `PRE_COMMITTED`, no committed
/// enqueue waits for an offset and a locking append need not look (0, as
/// shared memory starts: unknown, always look).
static SEQUENCED_THROUGH: PgAtomic<AtomicU64> =
    unsafe { PgAtomic::new(c"durable_streams_enqueue_sequenced_through") };

thread_local! {
    /// Order of this backend's enqueued messages (unique within a
    /// transaction, which is all `ds.pending`'s key needs).
    static NEXT_SEQ: Cell<i64> = const { Cell::new(0) };
    /// Whether this transaction enqueued (its commit wakes the sequencer).
    static ENQUEUED: Cell<bool> = const { Cell::new(false) };
    /// Whether this transaction changed a quota (see `quota_changed`).
    static QUOTA_CHANGED: Cell<bool> = const { Cell::new(false) };
    /// Whether this transaction counted itself in `PRE_COMMITTED`.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
    static CALLBACK: Cell<bool> = const { Cell::new(false) };
    /// Path → what this backend knows of a quota-free stream it enqueued
    /// into: id and type never change for a stream, so a hit needs one
    /// INSERT, as long as no quota changed since (`QUOTA_EPOCH`). That
    /// INSERT also checks the stream is still there, open and live, unless
    /// nobody locked enqueuers out of any path since (`STATE_EPOCH`) and
    /// the stream cannot expire by itself (no TTL or expiry time).
    static KNOWN: RefCell<HashMap<String, Known>> = RefCell::new(HashMap::new());
}

#[derive(Clone)]
struct Known {
    stream_id: i64,
    content_type: String,
    quota_epoch: u64,
    state_epoch: Option<u64>,
    /// Has a TTL or an expiry time: may expire without anyone locking.
    expires: bool,
}

impl Known {
    /// Whether the stream is surely as the entry recorded it: under our
    /// path lock, an unchanged `STATE_EPOCH` means no close, delete or
    /// expiry of any stream since the entry was made (a TTL stream may
    /// expire without anyone locking, so it is never trusted).
    fn unchanged(&self) -> bool {
        !self.expires && self.state_epoch.is_some() && state_epoch() == self.state_epoch
    }
}

/// The current `STATE_EPOCH` (None without shared memory: never trusted).
fn state_epoch() -> Option<u64> {
    PRELOADED.load(Ordering::Relaxed).then(|| STATE_EPOCH.get().load(Ordering::Acquire))
}

/// Streams `KNOWN` remembers at most (then it starts over).
const KNOWN_CAPACITY: usize = 1024;

/// Whether shared memory exists (the library was preloaded).
static PRELOADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `field4` of our lock tags: "ds". SQL advisory locks use 1 and 2.
const LOCK_SPACE: u16 = 0x6473;

/// Allocates the shared state; only from `_PG_init` during preload.
pub fn init_shared_memory() {
    pg_shmem_init!(SEQUENCER_LATCH);
    pg_shmem_init!(SEQUENCER_DATABASE);
    pg_shmem_init!(PRE_COMMITTED);
    pg_shmem_init!(ENDED);
    pg_shmem_init!(SEQUENCED_THROUGH);
    pg_shmem_init!(QUOTA_EPOCH);
    pg_shmem_init!(STATE_EPOCH);
    PRELOADED.store(true, Ordering::Relaxed);
}

/// This transaction changes a quota: once it commits, every backend's
/// `KNOWN` streams are checked in full again (bumped after the commit, so
/// a backend that reads the new epoch also sees the new quota).
pub fn quota_changed() {
    if PRELOADED.load(Ordering::Relaxed) {
        QUOTA_CHANGED.with(|q| q.set(true));
        register_callback();
    }
}

fn quota_epoch() -> Option<u64> {
    PRELOADED.load(Ordering::Relaxed).then(|| QUOTA_EPOCH.get().load(Ordering::Acquire))
}

/// Whether committed `ds.enqueue` appends may be waiting for offsets (a
/// locking append must sequence them first). False only when the
/// sequencer has proven the contrary since the last enqueue pre-committed.
pub fn may_have_pending() -> bool {
    if !PRELOADED.load(Ordering::Relaxed) {
        return true;
    }
    let through = SEQUENCED_THROUGH.get().load(Ordering::Acquire);
    through == 0 || through - 1 != PRE_COMMITTED.get().load(Ordering::Acquire)
}

/// Sequencer side, before a round's snapshot: the enqueues that round is
/// sure to see, if every one that pre-committed has also ended.
pub fn quiet_point() -> Option<u64> {
    // ENDED first: ENDED <= PRE_COMMITTED at every instant, so equality of
    // the two reads means nobody was between pre-commit and its end.
    let ended = ENDED.get().load(Ordering::Acquire);
    let pre = PRE_COMMITTED.get().load(Ordering::Acquire);
    (ended == pre).then_some(pre)
}

/// Sequencer side, after a committed round that left nothing pending and
/// began at `quiet` (from `quiet_point`).
pub fn sequenced_through(quiet: u64) {
    SEQUENCED_THROUGH.get().store(quiet + 1, Ordering::Release);
}

/// Sequencer side: registers its latch for `MyDatabaseId`.
pub fn register_sequencer() {
    // SAFETY: called in the worker after it connected to its database.
    unsafe {
        SEQUENCER_DATABASE.get().store(pg_sys::MyDatabaseId.to_u32(), Ordering::Relaxed);
        SEQUENCER_LATCH.get().store(pg_sys::MyLatch as u64, Ordering::Release);
    }
}

/// Sequencer side: on a clean exit, so enqueuers fall back to locking.
pub fn unregister_sequencer() {
    SEQUENCER_LATCH.get().store(0, Ordering::Release);
}

fn sequencer_serves_this_database() -> bool {
    if !PRELOADED.load(Ordering::Relaxed) {
        return false;
    }
    // SAFETY: MyDatabaseId is set once the backend is connected.
    let here = unsafe { pg_sys::MyDatabaseId }.to_u32();
    SEQUENCER_LATCH.get().load(Ordering::Acquire) != 0
        && SEQUENCER_DATABASE.get().load(Ordering::Relaxed) == here
}

fn wake_sequencer() {
    let latch = SEQUENCER_LATCH.get().load(Ordering::Acquire);
    if latch != 0 {
        // SAFETY: the sequencer registered its own latch, in shared memory.
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// The lock tag of `path` in this database (FNV-1a of the path: a collision
/// only makes two paths' enqueuers and closers wait for each other).
fn lock_tag(path: &str) -> pg_sys::LOCKTAG {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    extension_lock_tag(LOCK_SPACE, hash)
}

/// A lock tag of ours in this database: `key` in tag space `space` (advisory
/// lock tags whose `field4` SQL advisory locks never use).
pub(crate) fn extension_lock_tag(space: u16, key: u64) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set once the backend is connected.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: (key >> 32) as u32,
        locktag_field3: key as u32,
        locktag_field4: space,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    }
}

/// Waits until no `ds.enqueue` into `path` is in flight and keeps new ones
/// out until this transaction ends. With `LockWait::SkipLocked`, returns
/// false instead of waiting.
pub fn lock_out_enqueuers(path: &str, wait: LockWait) -> bool {
    let tag = lock_tag(path);
    let dont_wait = wait == LockWait::SkipLocked;
    // SAFETY: a transaction-level heavyweight lock on a tag we own.
    let got = unsafe {
        pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false, dont_wait)
    };
    let locked = got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL;
    if locked && PRELOADED.load(Ordering::Relaxed) {
        // Before anything changes: an enqueuer that gets the path lock after
        // this transaction ends sees the new epoch (and one that aborts
        // only costs others a look at the table).
        STATE_EPOCH.get().fetch_add(1, Ordering::AcqRel);
    }
    locked
}

fn register_callback() {
    if CALLBACK.with(Cell::get) {
        return;
    }
    // SAFETY: registering a callback for the rest of this backend's life.
    unsafe { pg_sys::RegisterXactCallback(Some(on_xact_event), std::ptr::null_mut()) };
    CALLBACK.with(|c| c.set(true));
}

/// Pre-commit: counted as about to make rows visible. Commit: the
/// sequencer has work. A transaction that enqueued cannot be prepared
/// (two-phase commit): its rows would become visible at a COMMIT PREPARED
/// that nobody counts, and a locking append could then be ordered before
/// them although it began after.
#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT if ENQUEUED.with(Cell::get) && PRELOADED.load(Ordering::Relaxed) => {
            PRE_COMMITTED.get().fetch_add(1, Ordering::AcqRel);
            COUNTED.with(|c| c.set(true));
        }
        XACT_EVENT_PRE_PREPARE if ENQUEUED.with(Cell::get) => {
            ENQUEUED.with(|e| e.set(false));
            pgrx::error!(
                "durable_streams: a transaction that called ds.enqueue cannot be prepared \
                 (PREPARE TRANSACTION); use ds.append in two-phase transactions"
            );
        }
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT | XACT_EVENT_PREPARE => {
            if QUOTA_CHANGED.with(|q| q.replace(false)) && event == XACT_EVENT_COMMIT {
                QUOTA_EPOCH.get().fetch_add(1, Ordering::AcqRel);
            }
            if COUNTED.with(|c| c.replace(false)) {
                ENDED.get().fetch_add(1, Ordering::AcqRel);
            }
            if ENQUEUED.with(|e| e.replace(false)) && event == XACT_EVENT_COMMIT {
                wake_sequencer();
            }
        }
        _ => {}
    }
}

/// Whether this transaction can enqueue without locking: a sequencer
/// serves the database, and the isolation level is READ COMMITTED (a
/// snapshot older than the statement could miss a close that committed
/// while this transaction waited for the path lock).
pub fn lock_free_possible() -> bool {
    // SAFETY: plain read of the session's isolation level.
    let read_committed = unsafe { pg_sys::XactIsoLevel } <= pg_sys::XACT_READ_COMMITTED as i32;
    read_committed && sequencer_serves_this_database()
}

fn enqueue(path: &str, data: &[u8], json_only: bool) -> DsResult<()> {
    enqueue_as(path, Payload::Body { data, json_only }, None)
}

/// What one enqueue appends.
pub(crate) enum Payload<'a> {
    /// A request body, split into messages by the stream's content type;
    /// `json_only`: the stream must be a JSON stream (a jsonb argument).
    Body { data: &'a [u8], json_only: bool },
    /// JSON messages the extension built itself (change capture), already
    /// compact and valid: stored as they are, for a JSON stream only, after
    /// the size and depth limits a body of them would meet.
    BuiltJson(&'a [String]),
}

impl Payload<'_> {
    fn json_only(&self) -> bool {
        match self {
            Payload::Body { json_only, .. } => *json_only,
            Payload::BuiltJson(_) => true,
        }
    }

    /// The stored messages for a stream of `content_type` (in `mode`).
    fn messages(&self, mode: Mode, content_type: &str) -> Result<Vec<Vec<u8>>, CoreError> {
        match self {
            Payload::Body { data, .. } => messages_for(mode, content_type, data, Purpose::Append),
            Payload::BuiltJson(messages) => {
                let bytes = messages.iter().map(String::len).sum::<usize>() + messages.len() + 1;
                limits::validate_body_size(bytes, gucs::max_append_bytes())?;
                let json_limits = gucs::json_limits();
                if messages.len() > json_limits.max_messages {
                    return Err(CoreError::TooManyMessages { max: json_limits.max_messages });
                }
                for m in messages.iter() {
                    ds_core::json::check_built_message(m, json_limits)?;
                    debug_assert_eq!(
                        ds_core::json::split_messages(m.as_bytes(), Purpose::Append, json_limits)
                            .ok(),
                        Some(vec![m.clone().into_bytes()]),
                        "a built message is stored as an append of it would be"
                    );
                }
                Ok(messages.iter().map(|m| m.clone().into_bytes()).collect())
            }
        }
    }
}

/// `ds.enqueue` with the privileges of `as_role` (None: the caller); the
/// extension's own writers (change capture) pass its owner.
pub(crate) fn enqueue_as(
    path: &str,
    payload: Payload<'_>,
    as_role: Option<pg_sys::Oid>,
) -> DsResult<()> {
    storage::require_primary("ds.enqueue")?;
    limits::validate_path(path)?;
    crate::registry::refuse_reserved(path)?;
    let json_only = payload.json_only();
    if let Payload::Body { data: [], .. } | Payload::BuiltJson([]) = payload {
        return Err(CoreError::EmptyAppend.into());
    }
    if !lock_free_possible() {
        // Same outcome, ordered now: the locking append.
        let body = match &payload {
            Payload::Body { data, .. } => std::borrow::Cow::Borrowed(*data),
            Payload::BuiltJson([one]) => std::borrow::Cow::Borrowed(one.as_bytes()),
            Payload::BuiltJson(many) => std::borrow::Cow::Owned(ds_core::json::join_messages(
                many.iter().map(|m| m.as_bytes()),
            )),
        };
        crate::append::simple_append_as(path, &body, json_only, as_role)?;
        return Ok(());
    }
    let tag = lock_tag(path);
    // SAFETY: a transaction-level heavyweight lock on a tag we own.
    unsafe { pg_sys::LockAcquire(&tag, pg_sys::ShareLock as pg_sys::LOCKMODE, false, false) };
    let role = as_role.unwrap_or_else(acl::caller);
    if acl::exempt_without_sql(role) && enqueue_known(path, &payload)? {
        return Ok(());
    }
    Spi::connect_mut(|client| {
        acl::require(client, role, path, Privilege::Append)?;
        if let Some(known) = KNOWN.with(|k| k.borrow().get(path).cloned()) {
            let mode = content_type::mode(&known.content_type)?;
            if quota_epoch() == Some(known.quota_epoch) && (!json_only || mode == Mode::Json) {
                if known.unchanged() {
                    // The stream is still there, with this content type.
                    let messages = payload.messages(mode, &known.content_type)?;
                    let seqs = next_seqs(messages.len());
                    storage::insert_pending(client, known.stream_id, seqs, messages)?;
                    enqueued();
                    return Ok(());
                }
                // It may be gone (or another stream by now): a body it would
                // refuse is judged by the full path, not by this entry.
                if let Ok(messages) = payload.messages(mode, &known.content_type) {
                    let seqs = next_seqs(messages.len());
                    if storage::insert_pending_if_open(
                        client,
                        path,
                        known.stream_id,
                        seqs,
                        messages,
                    )? {
                        enqueued();
                        return Ok(());
                    }
                }
            }
            // Closed, deleted, under a quota...: the full path says which.
            KNOWN.with(|k| k.borrow_mut().remove(path));
        }
        // Read after the lock: a close that committed meanwhile is seen.
        // The epoch first: a close after this read bumps it.
        let states = state_epoch();
        let stream = storage::find_stream(client, path, Lock::None)?
            .filter(|s| !s.expired)
            .ok_or_else(|| DsError::NotFound(path.to_owned()))?;
        if stream.soft_deleted {
            return Err(DsError::Gone(path.to_owned()));
        }
        // The body against the stream's type first, as `ds.append` checks it.
        let mode = content_type::mode(&stream.content_type)?;
        if json_only && mode != Mode::Json {
            return Err(DsError::ContentTypeMismatch {
                path: path.to_owned(),
                stream_type: stream.content_type,
                given: "application/json (jsonb argument)".into(),
            });
        }
        let messages = payload.messages(mode, &stream.content_type)?;
        if stream.closed {
            return Err(DsError::Closed {
                path: path.to_owned(),
                final_offset: stream.tail.to_string(),
            });
        }
        let bytes: i64 = messages.iter().map(|m| m.len() as i64).sum();
        // Read before the quota check: a change after it invalidates the entry.
        let epoch = quota_epoch();
        let quota_free = !stream.owner_has_quota && stream.max_bytes.is_none();
        let owners: Vec<_> =
            stream.owner_role.filter(|_| stream.owner_has_quota).into_iter().collect();
        let mut quotas = Quotas::load(client, &owners)?;
        quotas.charge_bytes(path, &stream, bytes).map_err(DsError::QuotaExceeded)?;
        let seqs = next_seqs(messages.len());
        storage::insert_pending(client, stream.stream_id, seqs, messages)?;
        enqueued();
        if let (true, Some(epoch)) = (quota_free, epoch) {
            KNOWN.with(|k| {
                let mut known = k.borrow_mut();
                if known.len() >= KNOWN_CAPACITY {
                    known.clear();
                }
                let expires = stream.ttl_seconds.is_some() || stream.expires_at.is_some();
                known.insert(
                    path.to_owned(),
                    Known {
                        stream_id: stream.stream_id,
                        content_type: stream.content_type,
                        quota_epoch: epoch,
                        state_epoch: states,
                        expires,
                    },
                );
            });
        }
        Ok(())
    })
}

/// The hot path, without SQL: a stream `KNOWN` since nothing changed (no
/// quota, no close, delete or expiry of any stream), for a caller exempt
/// from path checks. False if that does not hold (nothing written).
fn enqueue_known(path: &str, payload: &Payload<'_>) -> DsResult<bool> {
    let Some(known) = KNOWN.with(|k| k.borrow().get(path).cloned()) else { return Ok(false) };
    let mode = content_type::mode(&known.content_type)?;
    if quota_epoch() != Some(known.quota_epoch)
        || !known.unchanged()
        || (payload.json_only() && mode != Mode::Json)
    {
        return Ok(false);
    }
    let messages = payload.messages(mode, &known.content_type)?;
    let seqs = next_seqs(messages.len());
    if !storage::insert_pending_directly(known.stream_id, &seqs, &messages) {
        return Ok(false);
    }
    enqueued();
    Ok(true)
}

/// Enqueues `messages` (stored form) to the stream `stream_id` at `path` on
/// the extension's own behalf (stream registries): no privilege, quota or
/// state check, the change they record was checked. Only when
/// [`lock_free_possible`].
pub fn enqueue_unchecked(
    client: &mut SpiClient<'_>,
    path: &str,
    stream_id: i64,
    messages: Vec<Vec<u8>>,
) -> DsResult<()> {
    let tag = lock_tag(path);
    // SAFETY: a transaction-level heavyweight lock on a tag we own.
    unsafe { pg_sys::LockAcquire(&tag, pg_sys::ShareLock as pg_sys::LOCKMODE, false, false) };
    let seqs = next_seqs(messages.len());
    storage::insert_pending(client, stream_id, seqs, messages)?;
    enqueued();
    Ok(())
}

/// The next `n` numbers of this backend's enqueue order.
fn next_seqs(n: usize) -> Vec<i64> {
    NEXT_SEQ.with(|next| {
        let first = next.get() + 1;
        next.set(next.get() + n as i64);
        (first..=next.get()).collect()
    })
}

/// This transaction enqueued: its commit wakes the sequencer.
fn enqueued() {
    register_callback();
    ENQUEUED.with(|e| e.set(true));
}

/// Appends bytes without locking the stream: the offset is given after
/// commit (see the module docs), so nothing is returned.
#[pg_extern(name = "enqueue", security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn enqueue_bytea(path: &str, data: &[u8]) -> Result<(), ErrorReport> {
    Ok(enqueue(path, data, false)?)
}

/// Appends text (UTF-8 bytes) without locking the stream.
#[pg_extern(name = "enqueue", security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn enqueue_text(path: &str, data: &str) -> Result<(), ErrorReport> {
    Ok(enqueue(path, data.as_bytes(), false)?)
}

/// Appends JSON to a JSON stream without locking it (a top-level array is
/// one level of messages, as with `ds.append`).
#[pg_extern(name = "enqueue", security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn enqueue_jsonb(path: &str, data: crate::jsonb_text::JsonbText) -> Result<(), ErrorReport> {
    Ok(enqueue(path, &data.0, true)?)
}
