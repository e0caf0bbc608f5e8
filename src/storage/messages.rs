//! `ds.messages` rows of single-message appends written without the
//! executor (see `direct.rs`).

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

/// Inserts the message `data` of `stream_id` at `start_pos`; false (nothing
/// written) if `ds.messages` is not the table this code knows, for the
/// caller to use SQL instead.
pub fn insert(stream_id: i64, start_pos: i64, data: &[u8]) -> bool {
    let bytea = pgrx::rust_byte_slice_to_bytea(data);
    let mut rows = [vec![
        pg_sys::Datum::from(stream_id),
        pg_sys::Datum::from(start_pos),
        pg_sys::Datum::from(bytea.as_ptr()),
    ]];
    // SAFETY: datums of the columns' types, alive (`bytea`) until it returns.
    unsafe { direct::insert(&MESSAGES, &mut rows) }
}
