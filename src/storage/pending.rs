//! Rows of `ds.pending` written without the executor.
//!
//! Every `ds.enqueue` (and so every captured row change) writes one row per
//! message. Through SPI each costs an executor start and end (plan check,
//! ModifyTable and result set-up, index opening) on top of the heap and
//! index insert itself; here the row is formed and inserted directly, as
//! Postgres writes its own catalog rows (`CatalogTupleInsert`: heap insert,
//! then every index, unique ones checked). Same MVCC, WAL and TOAST as an
//! INSERT; `ds.pending` has no triggers, rules, policies, CHECK constraints
//! or expression indexes, and the shape check below falls back to SQL if a
//! later version (or anyone) changes the table.

use pgrx::pg_guard;
use pgrx::pg_sys;

/// `ds.pending`'s columns, in order, as this code forms its rows.
const SHAPE: [(&str, pg_sys::Oid); 5] = [
    ("stream_id", pg_sys::INT8OID),
    ("xid", pg_sys::XID8OID),
    ("seq", pg_sys::INT8OID),
    ("lsn", pg_sys::PG_LSNOID),
    ("data", pg_sys::BYTEAOID),
];

/// Indexes of `ds.pending`.
const INDEXES: i32 = 2;

std::thread_local! {
    /// `ds.pending`'s oid once its shape was checked; forgotten on any
    /// relcache invalidation of it (DDL on the table or its indexes, its
    /// drop) or of every relation.
    static CHECKED: std::cell::Cell<Option<pg_sys::Oid>> = const { std::cell::Cell::new(None) };
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    CHECKED.with(|c| {
        if relid == pg_sys::InvalidOid || c.get() == Some(relid) {
            c.set(None);
        }
    });
}

/// `ds.pending` (opened with RowExclusiveLock), or None if it does not have
/// the shape this module writes.
///
/// SAFETY: inside a transaction.
unsafe fn open_checked() -> Option<pg_sys::Relation> {
    if !CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers a callback for this backend's lifetime.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(
                Some(on_relcache_invalidation),
                pg_sys::Datum::from(0),
            )
        };
    }
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    // SAFETY: catalog lookups and a relation open, as an INSERT does.
    unsafe {
        if let Some(relid) = CHECKED.with(|c| c.get()) {
            // Locking it processes pending invalidations: a change since
            // the check clears CHECKED before we look again.
            let rel = pg_sys::table_open(relid, lock);
            if CHECKED.with(|c| c.get()) == Some(relid) {
                return Some(rel);
            }
            pg_sys::table_close(rel, lock);
        }
        let namespace = pg_sys::get_namespace_oid(c"ds".as_ptr(), true);
        if namespace == pg_sys::InvalidOid {
            return None;
        }
        let relid = pg_sys::get_relname_relid(c"pending".as_ptr(), namespace);
        if relid == pg_sys::InvalidOid {
            return None;
        }
        let rel = pg_sys::table_open(relid, lock);
        if !has_shape(rel) {
            pg_sys::table_close(rel, lock);
            return None;
        }
        CHECKED.with(|c| c.set(Some(relid)));
        Some(rel)
    }
}

/// Inserts one row per (seq, data) for `stream_id` under this transaction's
/// id; false (nothing written) if `ds.pending` is not the table this code
/// knows, for the caller to use SQL instead.
pub fn insert(stream_id: i64, seqs: &[i64], datas: &[Vec<u8>]) -> bool {
    // SAFETY: the relation stays locked until the transaction ends, as an
    // INSERT's would, and every datum passed to heap_form_tuple lives until
    // the insert is done.
    unsafe {
        let Some(rel) = open_checked() else { return false };
        // As the column defaults would: the transaction's id (assigned now
        // if it has none) and where WAL is (see `ds.pending`).
        let xid = pg_sys::GetTopFullTransactionId().value;
        for (seq, data) in seqs.iter().zip(datas) {
            let lsn = pg_sys::GetXLogInsertRecPtr();
            let bytea = pgrx::rust_byte_slice_to_bytea(data);
            let mut values = [
                pg_sys::Datum::from(stream_id),
                pg_sys::Datum::from(xid),
                pg_sys::Datum::from(*seq),
                pg_sys::Datum::from(lsn),
                pg_sys::Datum::from(bytea.as_ptr()),
            ];
            let mut nulls = [false; 5];
            let tuple =
                pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::CatalogTupleInsert(rel, tuple);
            pg_sys::heap_freetuple(tuple);
        }
        pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        // Later statements of this transaction see the rows, as after an
        // INSERT through SPI.
        pg_sys::CommandCounterIncrement();
    }
    true
}

/// Whether `rel` has exactly the columns of [`SHAPE`], no dropped ones, and
/// nothing an INSERT would run that `CatalogTupleInsert` does not.
///
/// SAFETY: `rel` must be an open relation.
unsafe fn has_shape(rel: pg_sys::Relation) -> bool {
    unsafe {
        let desc = (*rel).rd_att;
        let form = (*rel).rd_rel;
        if (*desc).natts as usize != SHAPE.len()
            || !(*rel).trigdesc.is_null()
            || (*form).relhasrules
            || (*form).relrowsecurity
            || (*form).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
            || !(*desc).constr.is_null() && (*(*desc).constr).num_check > 0
        {
            return false;
        }
        // CatalogTupleInsert forms index rows from plain columns only: no
        // expression or partial index (ours are the primary key and
        // `pending_xid`), none deferred or excluding.
        let indexes = pg_sys::RelationGetIndexList(rel);
        let count = pg_sys::list_length(indexes);
        let mut plain = count == INDEXES;
        for i in 0..count {
            let index = pg_sys::index_open(
                pg_sys::list_nth_oid(indexes, i),
                pg_sys::AccessShareLock as pg_sys::LOCKMODE,
            );
            let form = (*index).rd_index;
            plain = plain
                && (*form).indimmediate
                && !(*form).indisexclusion
                && pg_sys::RelationGetIndexExpressions(index).is_null()
                && pg_sys::RelationGetIndexPredicate(index).is_null();
            pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
        pg_sys::list_free(indexes);
        if !plain {
            return false;
        }
        let attrs = (*desc).attrs.as_slice(SHAPE.len());
        attrs.iter().zip(SHAPE).all(|(a, (name, ty))| {
            !a.attisdropped
                && a.atttypid == ty
                && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes()
        })
    }
}
