//! Rows of `ds.pending` written without the executor.
//!
//! Every `ds.enqueue` (and so every captured row change) writes one row per
//! message. Through SPI each costs an executor start and end (plan check,
//! ModifyTable and result set-up, index opening and `IndexInfo` building)
//! on top of the heap and index inserts themselves; here the row is formed
//! and inserted directly: a heap insert, then one `index_insert` per index
//! (unique ones checked), as Postgres writes its own catalog rows. Same
//! MVCC, WAL and TOAST as an INSERT. `ds.pending` has no triggers, rules,
//! policies, CHECK constraints or expression indexes; the shape check below
//! falls back to SQL if a later version (or anyone) changes the table.

use std::cell::RefCell;
use std::rc::Rc;

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

/// Indexes of `ds.pending`: the primary key and `pending_xid`.
const INDEXES: i32 = 2;

/// `ds.pending` as checked: its oid and how to fill each index.
struct Checked {
    relid: pg_sys::Oid,
    indexes: Vec<Index>,
}

/// A plain btree index: the table columns (0-based) of its keys, in order.
struct Index {
    oid: pg_sys::Oid,
    columns: Vec<usize>,
    unique: bool,
}

std::thread_local! {
    /// Forgotten on any relcache invalidation of the table or one of its
    /// indexes (DDL, drop), or of every relation.
    static CHECKED: RefCell<Option<Rc<Checked>>> = const { RefCell::new(None) };
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    CHECKED.with(|c| {
        let mut checked = c.borrow_mut();
        let hit = checked.as_ref().is_some_and(|k| {
            relid == pg_sys::InvalidOid
                || k.relid == relid
                || k.indexes.iter().any(|i| i.oid == relid)
        });
        if hit {
            *checked = None;
        }
    });
}

/// Runs `f` on `ds.pending` (opened with RowExclusiveLock, kept until the
/// transaction ends) and its indexes; None if the table does not have the
/// shape this module writes.
///
/// SAFETY: inside a transaction.
unsafe fn with_checked<R>(f: impl FnOnce(pg_sys::Relation, &Checked) -> R) -> Option<R> {
    if !CALLBACK.with(|c| c.replace(true)) {
        // SAFETY: registers a callback for this backend's lifetime.
        unsafe {
            pg_sys::CacheRegisterRelcacheCallback(
                Some(on_relcache_invalidation),
                pg_sys::Datum::from(0),
            )
        };
    }
    // SAFETY: catalog lookups and a relation open, as an INSERT does.
    let (rel, checked) = unsafe { open_checked()? };
    // Not borrowed from CHECKED while `f` runs: opening the indexes may
    // process invalidations, whose callback clears it.
    let out = f(rel, &checked);
    // SAFETY: the lock stays until the transaction ends.
    unsafe { pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE) };
    Some(out)
}

/// `ds.pending`, opened, and how it was checked (again if anything changed).
///
/// SAFETY: inside a transaction.
unsafe fn open_checked() -> Option<(pg_sys::Relation, Rc<Checked>)> {
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    unsafe {
        if let Some(known) = CHECKED.with(|c| c.borrow().clone()) {
            // Locking it processes pending invalidations: a change since
            // the check clears CHECKED before we look again. With the lock
            // held, no other session can change the table or its indexes.
            let rel = pg_sys::table_open(known.relid, lock);
            if CHECKED.with(|c| c.borrow().as_ref().is_some_and(|now| Rc::ptr_eq(now, &known))) {
                return Some((rel, known));
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
        let Some(indexes) = checked_indexes(rel) else {
            pg_sys::table_close(rel, lock);
            return None;
        };
        let checked = Rc::new(Checked { relid, indexes });
        CHECKED.with(|c| *c.borrow_mut() = Some(Rc::clone(&checked)));
        Some((rel, checked))
    }
}

/// Inserts one row per (seq, data) for `stream_id` under this transaction's
/// id; false (nothing written) if `ds.pending` is not the table this code
/// knows, for the caller to use SQL instead.
pub fn insert(stream_id: i64, seqs: &[i64], datas: &[Vec<u8>]) -> bool {
    // SAFETY: every datum passed to heap_form_tuple and index_insert lives
    // until they return; indexes are opened (and locked until the
    // transaction ends) as an INSERT opens them.
    let done = unsafe {
        with_checked(|rel, checked| {
            // As the column defaults would: the transaction's id (assigned
            // now if it has none) and where WAL is (see `ds.pending`).
            let xid = pg_sys::GetTopFullTransactionId().value;
            let indexes: Vec<pg_sys::Relation> = checked
                .indexes
                .iter()
                .map(|i| pg_sys::index_open(i.oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE))
                .collect();
            for (seq, data) in seqs.iter().zip(datas) {
                let bytea = pgrx::rust_byte_slice_to_bytea(data);
                let mut values = [
                    pg_sys::Datum::from(stream_id),
                    pg_sys::Datum::from(xid),
                    pg_sys::Datum::from(*seq),
                    pg_sys::Datum::from(pg_sys::GetXLogInsertRecPtr()),
                    pg_sys::Datum::from(bytea.as_ptr()),
                ];
                let mut nulls = [false; 5];
                let tuple =
                    pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
                pg_sys::simple_heap_insert(rel, tuple);
                for (index, rel_index) in checked.indexes.iter().zip(&indexes) {
                    let mut keys: Vec<pg_sys::Datum> =
                        index.columns.iter().map(|&c| values[c]).collect();
                    let mut key_nulls = vec![false; keys.len()];
                    pg_sys::index_insert(
                        *rel_index,
                        keys.as_mut_ptr(),
                        key_nulls.as_mut_ptr(),
                        &mut (*tuple).t_self,
                        rel,
                        if index.unique {
                            pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                        } else {
                            pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                        },
                        false,
                        // btree's insert does not use it (checked: btree only).
                        std::ptr::null_mut(),
                    );
                }
                pg_sys::heap_freetuple(tuple);
            }
            for rel_index in indexes {
                pg_sys::index_close(rel_index, pg_sys::NoLock as pg_sys::LOCKMODE);
            }
        })
    };
    if done.is_none() {
        return false;
    }
    // SAFETY: later statements of this transaction see the rows, as after
    // an INSERT through SPI.
    unsafe { pg_sys::CommandCounterIncrement() };
    true
}

/// The indexes of `rel` if it has exactly the columns of [`SHAPE`], no
/// dropped ones, nothing an INSERT would run that this module does not
/// (triggers, rules, policies, CHECKs), and [`INDEXES`] plain btree indexes
/// on its columns (no expressions, no predicate, nothing deferred).
///
/// SAFETY: `rel` must be an open relation.
unsafe fn checked_indexes(rel: pg_sys::Relation) -> Option<Vec<Index>> {
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
            return None;
        }
        let attrs = (*desc).attrs.as_slice(SHAPE.len());
        let columns_match = attrs.iter().zip(SHAPE).all(|(a, (name, ty))| {
            !a.attisdropped
                && a.atttypid == ty
                && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes()
        });
        if !columns_match {
            return None;
        }
        let list = pg_sys::RelationGetIndexList(rel);
        let count = pg_sys::list_length(list);
        let mut indexes = Vec::new();
        for i in 0..count {
            let oid = pg_sys::list_nth_oid(list, i);
            let index = pg_sys::index_open(oid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            let form = (*index).rd_index;
            let natts = (*form).indnatts as usize;
            let plain = (*(*index).rd_rel).relam == pg_sys::BTREE_AM_OID
                && (*form).indimmediate
                && !(*form).indisexclusion
                && (*form).indisready
                && (*form).indnkeyatts as usize == natts
                && pg_sys::RelationGetIndexExpressions(index).is_null()
                && pg_sys::RelationGetIndexPredicate(index).is_null();
            let keys = (*form).indkey.values.as_slice(natts);
            if plain && keys.iter().all(|&k| k >= 1 && (k as usize) <= SHAPE.len()) {
                indexes.push(Index {
                    oid,
                    columns: keys.iter().map(|&k| k as usize - 1).collect(),
                    unique: (*form).indisunique,
                });
            }
            pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
        pg_sys::list_free(list);
        (count == INDEXES && indexes.len() == INDEXES as usize).then_some(indexes)
    }
}
