//! Rows of the extension's own hot tables written without the executor.
//!
//! Every `ds.enqueue` (so every captured row change) writes a `ds.pending`
//! row, and every SQL append of one message a `ds.messages` row. Through
//! SPI each costs an executor start and end (plan check, ModifyTable and
//! result set-up, index opening and `IndexInfo` building) on top of the heap
//! and index inserts themselves: for 100,000 `ds.append` calls in one
//! statement the SPI insert was 55% of the time. Here the row is formed and
//! inserted directly: a heap insert, then one `index_insert` per index
//! (unique ones checked), as Postgres writes its own catalog rows. Same MVCC,
//! WAL and TOAST as an INSERT. The tables have no triggers, rules, policies,
//! CHECK constraints or expression indexes; the shape check below makes the
//! callers fall back to SQL if a later version (or anyone) changes a table.

use std::cell::RefCell;
use std::rc::Rc;
use std::thread::LocalKey;

use pgrx::pg_guard;
use pgrx::pg_sys;

/// A table this module writes: `ds.<name>` with exactly `columns` (name,
/// type, in order) and `indexes` plain btree indexes on its columns.
pub struct Shape {
    pub name: &'static std::ffi::CStr,
    pub columns: &'static [(&'static str, pg_sys::Oid)],
    pub indexes: usize,
    /// Where this backend keeps the table's check.
    pub checked: &'static LocalKey<RefCell<Option<Rc<Checked>>>>,
}

/// A table as checked: its oid and how to fill each index.
pub struct Checked {
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
    pub static PENDING_CHECKED: RefCell<Option<Rc<Checked>>> = const { RefCell::new(None) };
    pub static MESSAGES_CHECKED: RefCell<Option<Rc<Checked>>> = const { RefCell::new(None) };
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Every slot the invalidation callback clears.
const SLOTS: [&LocalKey<RefCell<Option<Rc<Checked>>>>; 2] = [&PENDING_CHECKED, &MESSAGES_CHECKED];

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    for slot in SLOTS {
        slot.with(|c| {
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
}

/// Inserts one row per entry of `rows` (each `shape.columns.len()` datums,
/// none NULL) into the table of `shape`; false (nothing written) if the
/// table does not have that shape, for the caller to use SQL instead.
///
/// SAFETY: inside a transaction; every datum must be of its column's type
/// and live until this returns.
pub unsafe fn insert(shape: &Shape, rows: &mut [Vec<pg_sys::Datum>]) -> bool {
    // SAFETY: a plain read of the transaction's state.
    if unsafe { pg_sys::XactReadOnly } {
        // The executor refuses writes in a READ ONLY transaction (25006);
        // this path has no executor, so SQL says it.
        return false;
    }
    // SAFETY: as the caller promises; indexes are opened (and locked until
    // the transaction ends) as an INSERT opens them.
    let done = unsafe {
        with_checked(shape, |rel, checked| {
            let indexes: Vec<pg_sys::Relation> = checked
                .indexes
                .iter()
                .map(|i| pg_sys::index_open(i.oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE))
                .collect();
            let mut nulls = vec![false; shape.columns.len()];
            for values in rows.iter_mut() {
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

/// Runs `f` on the table of `shape` (opened with RowExclusiveLock, kept
/// until the transaction ends) and its indexes; None if the table does not
/// have that shape.
///
/// SAFETY: inside a transaction.
unsafe fn with_checked<R>(
    shape: &Shape,
    f: impl FnOnce(pg_sys::Relation, &Checked) -> R,
) -> Option<R> {
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
    let (rel, checked) = unsafe { open_checked(shape)? };
    // Not borrowed from the slot while `f` runs: opening the indexes may
    // process invalidations, whose callback clears it.
    let out = f(rel, &checked);
    // SAFETY: the lock stays until the transaction ends.
    unsafe { pg_sys::table_close(rel, pg_sys::NoLock as pg_sys::LOCKMODE) };
    Some(out)
}

/// The table of `shape`, opened, and how it was checked (again if anything
/// changed).
///
/// SAFETY: inside a transaction.
unsafe fn open_checked(shape: &Shape) -> Option<(pg_sys::Relation, Rc<Checked>)> {
    let lock = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    unsafe {
        if let Some(known) = shape.checked.with(|c| c.borrow().clone()) {
            // Locking it processes pending invalidations: a change since
            // the check clears CHECKED before we look again. With the lock
            // held, no other session can change the table or its indexes.
            let rel = pg_sys::table_open(known.relid, lock);
            if shape
                .checked
                .with(|c| c.borrow().as_ref().is_some_and(|now| Rc::ptr_eq(now, &known)))
            {
                return Some((rel, known));
            }
            pg_sys::table_close(rel, lock);
        }
        let relid = super::ds_table(shape.name)?;
        let rel = pg_sys::table_open(relid, lock);
        let Some(indexes) = checked_indexes(shape, rel) else {
            pg_sys::table_close(rel, lock);
            return None;
        };
        let checked = Rc::new(Checked { relid, indexes });
        shape.checked.with(|c| *c.borrow_mut() = Some(Rc::clone(&checked)));
        Some((rel, checked))
    }
}

/// The indexes of `rel` if it has exactly the columns of `shape`, no
/// dropped ones, nothing an INSERT would run that this module does not
/// (triggers, rules, policies, CHECKs), and `shape.indexes` plain btree indexes
/// on its columns (no expressions, no predicate, nothing deferred).
///
/// SAFETY: `rel` must be an open relation.
unsafe fn checked_indexes(shape: &Shape, rel: pg_sys::Relation) -> Option<Vec<Index>> {
    unsafe {
        let desc = (*rel).rd_att;
        let form = (*rel).rd_rel;
        if (*desc).natts as usize != shape.columns.len()
            || !(*rel).trigdesc.is_null()
            || (*form).relhasrules
            || (*form).relrowsecurity
            || (*form).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
            || !(*desc).constr.is_null() && (*(*desc).constr).num_check > 0
        {
            return None;
        }
        let attrs = (*desc).attrs.as_slice(shape.columns.len());
        let columns_match = attrs.iter().zip(shape.columns).all(|(a, &(name, ty))| {
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
            if plain && keys.iter().all(|&k| k >= 1 && (k as usize) <= shape.columns.len()) {
                indexes.push(Index {
                    oid,
                    columns: keys.iter().map(|&k| k as usize - 1).collect(),
                    unique: (*form).indisunique,
                });
            }
            pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
        pg_sys::list_free(list);
        (count as usize == shape.indexes && indexes.len() == shape.indexes).then_some(indexes)
    }
}
