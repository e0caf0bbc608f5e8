//! `ds.messages` rows written without the executor (see `direct.rs`).

use pgrx::pg_sys;

use super::direct::{self, Shape};

/// `ds.messages`: its columns, in order, and its primary key.
static MESSAGES: Shape = Shape {
    name: c"messages",
    columns: &[
        ("stream_id", pg_sys::INT8OID),
        ("start_pos", pg_sys::INT8OID),
        ("data", pg_sys::BYTEAOID),
    ],
    indexes: 1,
    checked: &direct::MESSAGES_CHECKED,
};

/// Inserts the messages `(stream_ids[i], starts[i], datas[i])`; false
/// (nothing written) if `ds.messages` is not the table this code knows, for
/// the caller to use SQL instead.
pub fn insert(stream_ids: &[i64], starts: &[i64], datas: &[Vec<u8>]) -> bool {
    debug_assert!(stream_ids.len() == starts.len() && starts.len() == datas.len());
    let byteas: Vec<_> = datas.iter().map(|d| pgrx::rust_byte_slice_to_bytea(d)).collect();
    let mut rows: Vec<Vec<pg_sys::Datum>> = stream_ids
        .iter()
        .zip(starts)
        .zip(&byteas)
        .map(|((&id, &start), bytea)| {
            vec![
                pg_sys::Datum::from(id),
                pg_sys::Datum::from(start),
                pg_sys::Datum::from(bytea.as_ptr()),
            ]
        })
        .collect();
    // SAFETY: datums of the columns' types, alive (`byteas`) until it returns.
    unsafe { direct::insert(&MESSAGES, &mut rows) }
}
