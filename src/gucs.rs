//! Configuration settings (GUCs) of the extension, all under `ds.*`.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Largest body one append or create may carry, in bytes. Default 64 MiB;
/// Postgres caps a bytea at 1 GiB. Superuser-only so users cannot lift it.
pub static MAX_APPEND_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024 * 1024);

/// Byte budget of one `ds.read_chunk` call when the caller passes none.
/// Default 1 MiB: big enough for throughput, small enough for one response.
pub static READ_CHUNK_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// Most messages one append (or create body) may carry; more is 54000.
/// Each message is a row and a heap allocation, so a 16 MiB body of `1,`
/// would otherwise cost millions of rows and about 1 GB of backend memory.
pub static MAX_MESSAGES_PER_APPEND: GucSetting<i32> = GucSetting::<i32>::new(100_000);

/// Deepest JSON nesting accepted, counted as read back (see `ds_core::json::Limits`).
pub static JSON_MAX_DEPTH: GucSetting<i32> =
    GucSetting::<i32>::new(ds_core::json::DEFAULT_MAX_DEPTH as i32);

/// Most rows one `ds.read` returns (also its default when no `max_rows`).
pub static READ_MAX_ROWS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Most bytes one `ds.read_chunk` (or `ds.read`) call collects.
pub static READ_CHUNK_MAX_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024 * 1024);

/// Whether a backend tunes glibc malloc for large reads (see `lib.rs`).
pub static TUNE_MALLOC: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Whether appends announce themselves at all (doorbell or pg_notify).
/// Off only for measuring what announcing costs; live readers then rely on
/// their own timeouts.
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Whether `ds.*` functions check path grants (`ds.grant`). Off restores
/// the behaviour of releases without them: EXECUTE on a function is enough.
/// Superuser-only, so no role can switch its own checks off.
pub static PATH_CHECKS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Whether stream creations, forks, deletions and expiries are recorded in
/// the stream registries (`ds.create_registry`). Superuser-only: a role must
/// not hide its changes from a registry by switching it off.
pub static REGISTRY: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Target size of one segment, in bytes (rotation packs full segments only).
pub static SEGMENT_TARGET_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// Bytes at the tail of each stream that stay in the hot log (live readers
/// read them; rotation never touches them).
pub static HOT_TAIL_BYTES: GucSetting<i32> = GucSetting::<i32>::new(1024 * 1024);

/// Most bytes one rotation of one stream packs (bounds a pass's transaction).
pub static ROTATION_MAX_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024 * 1024);

/// Milliseconds between the worker's maintenance passes.
pub static ROTATION_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Seconds an idle producer's state is kept; 0 keeps it as long as the stream.
pub static PRODUCER_TTL_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Debug hook for crash tests: a rotation sleeps this long between writing a
/// segment and deleting the rows it replaces (inside its transaction).
pub static DEBUG_ROTATION_PAUSE_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

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
    GucRegistry::define_int_guc(
        c"ds.max_messages_per_append",
        c"Most messages one append or create body may carry.",
        c"More is rejected with SQLSTATE 54000 (HTTP 413). Also caps the messages one ds.read_chunk collects and the messages a fork sub-offset may skip.",
        &MAX_MESSAGES_PER_APPEND,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ds.json_max_depth",
        c"Deepest nesting of JSON arrays and objects accepted, counted as read back.",
        c"A read wraps messages in one array, which counts; deeper bodies are rejected with SQLSTATE 22P02 (HTTP 400).",
        &JSON_MAX_DEPTH,
        1,
        ds_core::json::MAX_MAX_DEPTH as i32,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ds.read_max_rows",
        c"Most rows one ds.read call returns (its default when max_rows is NULL).",
        c"Callers page on with the last row's next_offset.",
        &READ_MAX_ROWS,
        1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"ds.read_chunk_max_bytes",
        c"Most bytes one ds.read_chunk or ds.read call collects (at least one message).",
        c"Larger max_bytes arguments are clamped to it.",
        &READ_CHUNK_MAX_BYTES,
        1024,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"ds.tune_malloc",
        c"Whether reading backends tune glibc malloc to keep large buffers (default off).",
        c"When on, a backend's first ds.read_chunk or ds.read raises the mmap threshold to 16 MiB and the trim threshold to 32 MiB.",
        &TUNE_MALLOC,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"ds.notify",
        c"Whether appends announce themselves to LISTENers (default on).",
        c"Turn off only to measure the cost of announcing; live readers then miss appends until they re-read.",
        &NOTIFY,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"ds.path_checks",
        c"Whether ds.* functions check the acting role's path grants (default on).",
        c"Off: any role with EXECUTE on a function may use it on every stream, as before path grants existed.",
        &PATH_CHECKS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"ds.registry",
        c"Whether stream changes are recorded in the stream registries (default off).",
        c"On: every create, fork, delete and expiry is appended to the registries of its path's prefixes (ds.create_registry) in the same transaction.",
        &REGISTRY,
        GucContext::Suset,
        GucFlags::default(),
    );
    let ints: [(
        &'static std::ffi::CStr,
        &'static std::ffi::CStr,
        &'static GucSetting<i32>,
        i32,
        GucFlags,
    ); 6] = [
        (
            c"ds.segment_target_bytes",
            c"Target size of one segment, in bytes.",
            &SEGMENT_TARGET_BYTES,
            1,
            GucFlags::UNIT_BYTE,
        ),
        (
            c"ds.hot_tail_bytes",
            c"Bytes at each stream's tail that rotation leaves in the hot log.",
            &HOT_TAIL_BYTES,
            0,
            GucFlags::UNIT_BYTE,
        ),
        (
            c"ds.rotation_max_bytes",
            c"Most bytes one rotation of one stream packs.",
            &ROTATION_MAX_BYTES,
            1,
            GucFlags::UNIT_BYTE,
        ),
        (
            c"ds.rotation_interval_ms",
            c"Milliseconds between the worker's maintenance passes.",
            &ROTATION_INTERVAL_MS,
            100,
            GucFlags::UNIT_MS,
        ),
        (
            c"ds.producer_ttl_seconds",
            c"Seconds idle producer state is kept; 0 keeps it while the stream exists.",
            &PRODUCER_TTL_SECONDS,
            0,
            GucFlags::UNIT_S,
        ),
        (
            c"ds.debug_rotation_pause_ms",
            c"Debug only: pause inside a rotation between segment write and row delete.",
            &DEBUG_ROTATION_PAUSE_MS,
            0,
            GucFlags::UNIT_MS,
        ),
    ];
    for (name, short, setting, min, flags) in ints {
        GucRegistry::define_int_guc(
            name,
            short,
            c"Superuser-settable; the worker re-reads it on SIGHUP (see README).",
            setting,
            min,
            i32::MAX,
            GucContext::Suset,
            flags,
        );
    }
    crate::retention::define_gucs();
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

/// Whether path grants are checked.
pub fn path_checks() -> bool {
    PATH_CHECKS.get()
}

pub fn registry() -> bool {
    REGISTRY.get()
}

/// The configured maximum body size.
pub fn max_append_bytes() -> usize {
    usize::try_from(MAX_APPEND_BYTES.get()).unwrap_or(usize::MAX)
}

/// Bounds of one JSON body, as configured.
pub fn json_limits() -> ds_core::json::Limits {
    ds_core::json::Limits {
        max_depth: usize::try_from(JSON_MAX_DEPTH.get()).unwrap_or(1),
        max_messages: max_messages(),
    }
}

/// Most messages per append, per read chunk, per fork sub-offset scan.
pub fn max_messages() -> usize {
    usize::try_from(MAX_MESSAGES_PER_APPEND.get()).unwrap_or(1)
}

/// Most rows of one `ds.read`.
pub fn read_max_rows() -> i64 {
    i64::from(READ_MAX_ROWS.get())
}

/// Most bytes of one read call.
pub fn read_chunk_max_bytes() -> i64 {
    i64::from(READ_CHUNK_MAX_BYTES.get())
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

/// Most messages in one segment (and rows one rotation of a stream loads).
pub const SEGMENT_MAX_MESSAGES: i64 = 100_000;

/// Rotation settings as read now.
pub fn rotation() -> RotationSettings {
    RotationSettings {
        hot_tail: i64::from(HOT_TAIL_BYTES.get()),
        target: i64::from(SEGMENT_TARGET_BYTES.get()),
        max_bytes: i64::from(ROTATION_MAX_BYTES.get()),
        max_rows: SEGMENT_MAX_MESSAGES,
        pause: std::time::Duration::from_millis(
            u64::try_from(DEBUG_ROTATION_PAUSE_MS.get()).unwrap_or(0),
        ),
    }
}

/// See the GUCs above.
#[derive(Debug, Clone, Copy)]
pub struct RotationSettings {
    pub hot_tail: i64,
    pub target: i64,
    pub max_bytes: i64,
    /// Most rows one rotation loads, and most messages in one segment.
    pub max_rows: i64,
    pub pause: std::time::Duration,
}
