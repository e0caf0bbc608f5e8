//! Deferred tail writes: many appends to one stream in one transaction write
//! its `ds.streams` row twice at most (the first append, and once just
//! before commit), not once per append (see `ds_core::deferred` for why).
//!
//! The first append of a transaction to a stream writes the row as always
//! (locking it until the end of the transaction); later ones only advance
//! the tail remembered here. Every read of a stream row in this backend
//! sees the remembered tail (`overlay`), and a pre-commit callback writes
//! the changed tails in one statement. That callback runs before the
//! transaction's commit record: if it fails, the transaction aborts, so a
//! committed stream row always holds its true tail.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use ds_core::deferred::{DeferredTails, Tail};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::error::DsResult;

use crate::storage::{self, StreamRow};

thread_local! {
    /// Per stream: its tail, and the row as this transaction last wrote it
    /// (with its path), so later appends need not look it up or lock it.
    static TAILS: RefCell<DeferredTails<(String, StreamRow)>> =
        RefCell::new(DeferredTails::default());
    /// Path → stream id of the rows in `TAILS` (checked against the row).
    static PATHS: RefCell<HashMap<String, i64>> = RefCell::new(HashMap::new());
    /// The role the rows were written as (the functions' owner, which owns
    /// the tables): the pre-commit write runs outside those functions, as
    /// whatever role the session has then, and must write as this one.
    static WRITER: Cell<Option<pg_sys::Oid>> = const { Cell::new(None) };
    static CALLBACKS: Cell<bool> = const { Cell::new(false) };
}

fn current_subxact() -> u32 {
    // SAFETY: plain read of the current subtransaction's id.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

/// The tail this transaction left `stream_id` at, if it wrote its row.
pub fn get(stream_id: i64) -> Option<Tail> {
    TAILS.with(|t| t.borrow().get(stream_id))
}

/// Gives `row` the tail this transaction advanced it to (its stored row
/// may be behind until commit).
pub fn overlay(row: &mut StreamRow) {
    if let Some(t) = get(row.stream_id) {
        row.tail = ds_core::Offset::from_i64(t.current);
    }
}

/// The row of `row.stream_id` (at `path`) was just written, as `row`: this
/// transaction holds it locked until it ends.
pub fn stored(path: &str, row: &StreamRow) {
    register_callbacks();
    // SAFETY: plain read; inside a SECURITY DEFINER function this is its owner.
    WRITER.with(|w| w.set(Some(unsafe { pg_sys::GetUserId() })));
    let owner = row.owner_role.map(|o| o.to_u32());
    let kept = Some((path.to_owned(), row.clone()));
    TAILS.with(|t| {
        t.borrow_mut().stored(current_subxact(), row.stream_id, row.tail.as_i64(), owner, kept)
    });
    PATHS.with(|p| p.borrow_mut().insert(path.to_owned(), row.stream_id));
}

/// The row of the stream at `path` as this transaction wrote it (and holds
/// it locked), with its current tail; `None`: look it up and lock it.
pub fn written_row(path: &str) -> Option<StreamRow> {
    let id = PATHS.with(|p| p.borrow().get(path).copied())?;
    TAILS.with(|t| {
        let t = t.borrow();
        let (kept_path, row) = t.row(id)?;
        let mut row = row.clone();
        row.tail = ds_core::Offset::from_i64(t.get(id)?.current);
        (kept_path == path).then_some(row)
    })
}

/// The stream's row was written in some other way (forks, deletion, TTL):
/// the next append reads it again.
pub fn forget_row(stream_id: i64) {
    TAILS.with(|t| t.borrow_mut().forget_row(current_subxact(), stream_id));
}

/// Quotas changed: every stream's row is read again.
pub fn forget_rows() {
    TAILS.with(|t| t.borrow_mut().forget_rows(current_subxact()));
}

/// Advances `stream_id` to `tail` without writing its row, if this
/// transaction already wrote it; false means the caller must write it.
pub fn advance(stream_id: i64, tail: ds_core::Offset) -> bool {
    TAILS.with(|t| t.borrow_mut().advance(current_subxact(), stream_id, tail.as_i64()))
}

/// Bytes appended to streams of `owner` that their rows do not show yet
/// (for quota usage read in the same transaction).
pub fn unstored_bytes_of(owner: pg_sys::Oid) -> i64 {
    TAILS.with(|t| t.borrow().unstored_bytes_of(owner.to_u32()))
}

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

/// Writes every remembered tail that its row does not hold yet, now, in
/// the current (sub)transaction: for statements that read `tail_pos` of
/// many streams in SQL (rotation, statistics) in a transaction that
/// appended.
pub fn write_now(client: &mut SpiClient<'_>) -> DsResult<()> {
    let unstored = TAILS.with(|t| t.borrow().unstored());
    if unstored.is_empty() {
        return Ok(());
    }
    let (ids, tails): (Vec<i64>, Vec<i64>) = unstored.into_iter().unzip();
    storage::write_tails(client, ids, tails)?;
    TAILS.with(|t| t.borrow_mut().mark_stored(current_subxact()));
    Ok(())
}

/// At pre-commit: writes every remembered tail its row does not hold yet.
fn write_unstored() {
    if TAILS.with(|t| t.borrow().unstored().is_empty()) {
        return;
    }
    let Some(writer) = WRITER.with(Cell::get) else {
        pgrx::error!("durable_streams: stream tails to write before commit, but no writer role");
    };
    let (mut user, mut context) = (pg_sys::Oid::INVALID, 0);
    // SAFETY: the standard save / switch / restore of the current user, as
    // SECURITY DEFINER does it; an error in between aborts the transaction,
    // which restores both. Pre-commit has no active snapshot any more; the
    // rows are this transaction's own, so any current snapshot sees them.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            writer,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let written = Spi::connect_mut(write_now);
    // SAFETY: undoes the two changes above, in reverse order.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::SetUserIdAndSecContext(user, context);
    }
    if let Err(e) = written {
        // Raising here aborts the transaction: its appends are not committed
        // with a stale tail.
        pgrx::error!("durable_streams: could not write stream tails before commit: {e}");
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        // The last moment database access is allowed; deferred triggers have
        // fired, so no user code can append after this.
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => write_unstored(),
        XACT_EVENT_COMMIT
        | XACT_EVENT_ABORT
        | XACT_EVENT_PREPARE
        | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT => {
            TAILS.with(|t| t.borrow_mut().clear());
            WRITER.with(|w| w.set(None));
            PATHS.with(|p| p.borrow_mut().clear());
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact_event(
    event: pg_sys::SubXactEvent::Type,
    subxact: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    TAILS.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_empty() {
            return;
        }
        match event {
            SUBXACT_EVENT_ABORT_SUB => t.abort_sub(subxact),
            SUBXACT_EVENT_COMMIT_SUB => t.commit_sub(subxact, parent),
            _ => {}
        }
    });
}
