//! `ds.pending` rows written without the executor (see `direct.rs`).

use pgrx::pg_sys;

use super::direct::{self, Shape};

/// `ds.pending`: its columns, in order, and its indexes (the primary key and
/// `pending_xid`).
static PENDING: Shape = Shape {
    name: c"pending",
    columns: &[
        ("stream_id", pg_sys::INT8OID),
        ("xid", pg_sys::XID8OID),
        ("seq", pg_sys::INT8OID),
        ("lsn", pg_sys::PG_LSNOID),
        ("data", pg_sys::BYTEAOID),
    ],
    indexes: 2,
    checked: &direct::PENDING_CHECKED,
};

/// Inserts one row per (seq, data) for `stream_id` under this transaction's
/// id; false (nothing written) if `ds.pending` is not the table this code
/// knows, for the caller to use SQL instead.
pub fn insert(stream_id: i64, seqs: &[i64], datas: &[Vec<u8>]) -> bool {
    // As the column defaults would: the transaction's id (assigned now if
    // it has none) and where WAL is (see `ds.pending`).
    // SAFETY: plain reads of the transaction's and WAL's state.
    let xid = unsafe { pg_sys::GetTopFullTransactionId().value };
    let byteas: Vec<_> = datas.iter().map(|d| pgrx::rust_byte_slice_to_bytea(d)).collect();
    let mut rows: Vec<Vec<pg_sys::Datum>> = seqs
        .iter()
        .zip(&byteas)
        .map(|(seq, bytea)| {
            vec![
                pg_sys::Datum::from(stream_id),
                pg_sys::Datum::from(xid),
                pg_sys::Datum::from(*seq),
                // SAFETY: reads WAL's insert position.
                pg_sys::Datum::from(unsafe { pg_sys::GetXLogInsertRecPtr() }),
                pg_sys::Datum::from(bytea.as_ptr()),
            ]
        })
        .collect();
    // SAFETY: datums of the columns' types, alive (`byteas`) until it returns.
    unsafe { direct::insert(&PENDING, &mut rows) }
}
