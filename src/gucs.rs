//! Configuration settings (GUCs) of the extension, all under `ds.*`.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Largest body one append or create may carry, in bytes. Default 64 MiB;
/// Postgres caps a bytea at 1 GiB. Superuser-only so users cannot lift it.
pub static MAX_APPEND_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024 * 1024);

/// Byte budget of one `ds.read_chunk` call when the caller passes none.
/// Default 1 MiB: big enough for throughput, small enough for one response.
pub static READ_CHUNK_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// Database the background worker connects to (it serves streams there).
/// Postmaster-only: the worker connects once at start.
pub static WORKER_DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// Registers the settings; called first in `_PG_init`. `preloading` tells
/// whether the postmaster is loading us: only then can the worker's
/// start-up-only settings exist (Postgres refuses them later).
pub fn init(preloading: bool) {
    GucRegistry::define_int_guc(
        c"ds.max_append_bytes",
        c"Largest body accepted by one append or create, in bytes.",
        c"Bodies over this size are rejected with SQLSTATE 54000 (HTTP 413).",
        &MAX_APPEND_BYTES,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ds.read_chunk_bytes",
        c"Default byte budget of one ds.read_chunk call.",
        c"A chunk always holds at least one stored message, even a larger one.",
        &READ_CHUNK_BYTES,
        1024,
        i32::MAX,
        GucContext::Userset,
        GucFlags::default(),
    );
    if preloading {
        define_worker_gucs();
    }
    // SAFETY: called from _PG_init, in the postmaster or a backend loading us.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"ds".as_ptr()) };
}

fn define_worker_gucs() {
    GucRegistry::define_string_guc(
        c"ds.database",
        c"Database whose streams the durable_streams background worker serves.",
        c"Appends in other databases announce themselves with a plain pg_notify each.",
        &WORKER_DATABASE,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// The configured maximum body size.
pub fn max_append_bytes() -> usize {
    usize::try_from(MAX_APPEND_BYTES.get()).unwrap_or(usize::MAX)
}

/// The default read budget.
pub fn read_chunk_bytes() -> i64 {
    i64::from(READ_CHUNK_BYTES.get())
}

/// The worker's database name.
pub fn worker_database() -> String {
    WORKER_DATABASE
        .get()
        .and_then(|s| s.into_string().ok())
        .unwrap_or_else(|| "postgres".to_owned())
}
