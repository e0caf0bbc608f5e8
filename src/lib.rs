//! durable_streams: Durable Streams (append-only, offset-addressed streams)
//! stored in PostgreSQL, with the protocol's semantics as SQL functions in
//! schema `ds`. Protocol rules live in `ds_core`; this crate is the glue
//! between them, SPI and the SQL surface.

// `ErrorReport` is the error type pgrx needs at the SQL boundary to raise a
// specific SQLSTATE; it is large, and that is fine on an error path.
#![allow(clippy::result_large_err)]
// pgrx needs `RETURNS TABLE` row types spelled inline in the signature.
#![allow(clippy::type_complexity)]

use pgrx::prelude::*;

mod acl;
mod append;
mod apply;
mod capture;
mod doorbell;
mod enqueue;
mod error;
mod gucs;
mod jsonb_text;
mod maintenance;
mod quota;
mod read;
mod registry;
mod retention;
mod sequencer;
mod storage;
mod streams;
mod subscriptions;
mod tails;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

/// Called when the library is loaded (at server start when preloaded).
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: read-only flag set by the postmaster while it loads libraries.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    keep_backtraces_out_of_errors();
    gucs::init(preloading);
    if preloading {
        doorbell::init_shared_memory();
        enqueue::init_shared_memory();
        worker::register();
        sequencer::register();
    }
}

/// Keeps Rust backtraces out of the errors clients get. pgrx attaches a
/// captured `std::backtrace::Backtrace` to the DETAIL of an error raised
/// inside a statement our code ran (a user's trigger on `ds.messages`, a
/// failed index insert), and `capture()` captures whenever `RUST_BACKTRACE`
/// is set in the postmaster's environment, as it often is on a Rust
/// developer's machine: the client then got 30 lines of our function names
/// as the error's detail. `RUST_LIB_BACKTRACE`, which `capture()` reads
/// first, turns that off without touching panic messages in the server log
/// (those follow `RUST_BACKTRACE`). An operator's own `RUST_LIB_BACKTRACE`
/// is left alone.
fn keep_backtraces_out_of_errors() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: `_PG_init` runs in the single-threaded postmaster or
        // backend while it loads this library; nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
}

/// Whether this backend tuned malloc (see [`tune_malloc_if_enabled`]).
static MALLOC_TUNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// With `ds.tune_malloc` on, lets glibc keep freed large blocks of THIS
/// backend instead of returning them to the OS; called by the reads, so only
/// backends that read streams are affected, and only once.
///
/// A catch-up read handles its chunk (1 MiB by default) several times:
/// detoasted, returned as `bytea`, materialised, sent. Postgres mallocs each
/// copy and frees it at the end of the call, and by default glibc gives the
/// memory back (trims the heap) right away, so every read page-faults its
/// buffers in again: measured at about half the backend's CPU on a 64 MiB
/// catch-up. Tuned, blocks below 16 MiB come from the heap, and up to 32 MiB
/// of free heap is kept per backend for the next call. Off by default: it is
/// a process-wide allocator setting, which an extension should not change
/// for backends unasked.
pub(crate) fn tune_malloc_if_enabled() {
    use std::sync::atomic::Ordering;
    if !gucs::TUNE_MALLOC.get() || MALLOC_TUNED.swap(true, Ordering::Relaxed) {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: std::os::raw::c_int = -1;
        const M_MMAP_THRESHOLD: std::os::raw::c_int = -3;
        unsafe extern "C" {
            fn mallopt(
                param: std::os::raw::c_int,
                value: std::os::raw::c_int,
            ) -> std::os::raw::c_int;
        }
        // SAFETY: mallopt only changes allocator tuning; glibc declares it so.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 16 << 20);
            mallopt(M_TRIM_THRESHOLD, 32 << 20);
        }
    }
}

/// Whether this backend has called `mallopt` (for tests).
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn malloc_tuned() -> bool {
    MALLOC_TUNED.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
