//! The extension's error type and the one table mapping errors to SQLSTATEs.
//!
//! Functions return `Result<_, ErrorReport>` at the `#[pg_extern]` boundary;
//! anything else would surface as SQLSTATE 22000 whatever it was.

use ds_core::Error as CoreError;
use pgrx::PgSqlErrorCode as Code;
use pgrx::pg_sys::panic::ErrorReport;
use thiserror::Error;

/// Everything a SQL call can fail with.
#[derive(Debug, Error)]
pub enum DsError {
    /// Malformed input (see `ds_core::Error`).
    #[error(transparent)]
    Invalid(#[from] CoreError),
    /// No stream at this path, or it expired.
    #[error("stream {0:?} does not exist")]
    NotFound(String),
    /// Deleted, but kept because forks still read it (HTTP 410).
    #[error("stream {0:?} was deleted; it is kept only for the forks that read it")]
    Gone(String),
    /// A read (or fork) from below the earliest retained offset: retention
    /// dropped that data (SQLSTATE SD410, HTTP 410).
    #[error(
        "offset {offset} of stream {path:?} is before its earliest retained offset {earliest} \
         (retention dropped the data before it): read from {earliest}, or from -1"
    )]
    NotRetained { path: String, offset: String, earliest: String },
    /// `ds.create` found a stream with a different configuration.
    #[error("stream {path:?} already exists with a different configuration ({differences})")]
    Conflict { path: String, differences: String },
    /// Append to a closed stream.
    #[error("stream {path:?} is closed at offset {final_offset}")]
    Closed { path: String, final_offset: String },
    /// Append with a content type other than the stream's.
    #[error("stream {path:?} has content type {stream_type}, not {given}")]
    ContentTypeMismatch { path: String, stream_type: String, given: String },
    /// A producer or Stream-Seq rule rejected the append (try_append reports these as data).
    #[error("append to {path:?} rejected: {outcome}")]
    Rejected { path: String, outcome: &'static str },
    /// The acting role lacks a path privilege (see `acl.rs`).
    #[error(
        "permission denied: role {role:?} lacks the {privilege} privilege on stream path {path:?}"
    )]
    Forbidden { role: String, path: String, privilege: ds_core::acl::Privilege },
    /// A write to a path reserved for a stream registry (see `registry.rs`).
    #[error(
        "stream path {0:?} is reserved for a stream registry: only the extension writes it \
         (ds.create_registry, ds.drop_registry)"
    )]
    Reserved(String),
    /// `ds.grant` / `ds.revoke` / `as_roles` named a role that does not exist.
    #[error("role {0:?} does not exist")]
    NoSuchRole(String),
    /// An append or create would exceed a storage quota (see `quota.rs`).
    #[error("{0}")]
    QuotaExceeded(String),
    /// A per-call resource limit (a GUC) was exceeded (HTTP 413).
    #[error("{0}")]
    LimitExceeded(String),
    /// A function that writes was called on a hot standby (read-only).
    #[error("{0}")]
    ReadOnly(String),
    /// A captured table's change cannot go to its stream (closed, deleted).
    #[error("{0}")]
    CaptureTarget(String),
    /// `ds.capture` of a table that is already captured.
    #[error("{0}")]
    AlreadyCaptured(String),
    /// A required argument was NULL.
    #[error("{0} must not be NULL")]
    NullArgument(&'static str),
    /// The acting role lacks a table privilege `ds.capture` needs.
    #[error("{0}")]
    TableForbidden(String),
    /// `ds.capture` of a table without a primary key and no key expression.
    #[error("{0}")]
    NoKey(String),
    /// An SPI call failed: a bug, never a client mistake.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<pgrx::spi::Error> for DsError {
    fn from(e: pgrx::spi::Error) -> Self {
        DsError::Internal(e.to_string())
    }
}

/// The SQLSTATE of a malformed-input error; also reported by `ds.try_append`.
pub fn core_sqlstate(e: &CoreError) -> Code {
    match e {
        CoreError::InvalidPath(_) => Code::ERRCODE_INVALID_NAME,
        CoreError::InvalidOffset(_) | CoreError::InvalidJson(_) | CoreError::JsonTooDeep { .. } => {
            Code::ERRCODE_INVALID_TEXT_REPRESENTATION
        }
        CoreError::InvalidUtf8(_) => Code::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
        CoreError::BodyTooLarge { .. } | CoreError::TooManyMessages { .. } => {
            Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED
        }
        CoreError::CorruptSegment(_) => Code::ERRCODE_DATA_CORRUPTED,
        CoreError::InvalidContentType(_)
        | CoreError::InvalidTtl(_)
        | CoreError::TtlTooLarge(_)
        | CoreError::ExpiresAtTooLate
        | CoreError::TtlWithExpiresAt
        | CoreError::EmptyJsonArray
        | CoreError::EmptyAppend
        | CoreError::InvalidProducer(_)
        | CoreError::InvalidArguments(_)
        | CoreError::InvalidFork(_)
        | CoreError::InvalidGrant(_)
        | CoreError::InvalidQuota(_)
        | CoreError::InvalidRegistry(_) => Code::ERRCODE_INVALID_PARAMETER_VALUE,
    }
}

impl DsError {
    pub fn sqlstate(&self) -> Code {
        match self {
            DsError::Invalid(e) => core_sqlstate(e),
            DsError::NotFound(_) => Code::ERRCODE_UNDEFINED_OBJECT,
            DsError::Gone(_) => Code::ERRCODE_OBJECT_IN_USE,
            // Rewritten to SD410 while it is raised (see `not_retained`).
            DsError::NotRetained { .. } => not_retained::PLACEHOLDER,
            DsError::Conflict { .. } => Code::ERRCODE_DUPLICATE_OBJECT,
            DsError::Closed { .. } => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DsError::ContentTypeMismatch { .. } => Code::ERRCODE_DATATYPE_MISMATCH,
            DsError::Rejected { .. } => Code::ERRCODE_INVALID_PARAMETER_VALUE,
            DsError::Forbidden { .. } | DsError::Reserved(_) => {
                Code::ERRCODE_INSUFFICIENT_PRIVILEGE
            }
            DsError::NoSuchRole(_) => Code::ERRCODE_UNDEFINED_OBJECT,
            DsError::QuotaExceeded(_) => Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            DsError::LimitExceeded(_) => Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            DsError::ReadOnly(_) => Code::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            DsError::CaptureTarget(_) => Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            DsError::AlreadyCaptured(_) => Code::ERRCODE_DUPLICATE_OBJECT,
            DsError::NullArgument(_) => Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            DsError::TableForbidden(_) => Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            DsError::NoKey(_) => Code::ERRCODE_INVALID_TABLE_DEFINITION,
            DsError::Internal(_) => Code::ERRCODE_INTERNAL_ERROR,
        }
    }
}

impl From<DsError> for ErrorReport {
    fn from(e: DsError) -> Self {
        let report = ErrorReport::new(e.sqlstate(), e.to_string(), "durable_streams");
        match e {
            DsError::NotRetained { earliest, .. } => {
                // Only ever converted to be raised at once (the `?` of a
                // `#[pg_extern]`), which is what `arm` requires.
                not_retained::arm();
                report.set_detail(format!("earliest retained offset: {earliest}"))
            }
            _ => report,
        }
    }
}

/// SQLSTATE `SD410` for [`DsError::NotRetained`]. Class `SD` is ours
/// (Postgres never raises it), but pgrx can only raise the codes of its
/// `PgSqlErrorCode` enum. So the error is raised with a placeholder code and
/// an error context callback, pushed just before, sets the real code: Postgres
/// runs context callbacks inside `errfinish`, before the error is thrown,
/// and `errcode()` there changes the error being raised. Everything that
/// sees the error (PL/pgSQL handlers, clients, the log) sees SD410.
pub mod not_retained {
    use pgrx::PgSqlErrorCode as Code;
    use pgrx::pg_sys;

    /// What the error carries until the callback runs (and, should it ever
    /// not run, still a 410 for the sidecar).
    pub const PLACEHOLDER: Code = Code::ERRCODE_OBJECT_IN_USE;

    /// The five characters of the real code.
    pub const SQLSTATE: &str = "SD410";

    unsafe extern "C-unwind" {
        // Excluded from pgrx's bindings; the same declaration pgrx uses.
        fn errcode(sqlerrcode: std::ffi::c_int) -> std::ffi::c_int;
    }

    /// PG's MAKE_SQLSTATE of five characters.
    fn make_sqlstate(code: &str) -> i32 {
        code.bytes().enumerate().map(|(i, b)| (i32::from(b - b'0') & 0x3F) << (6 * i)).sum()
    }

    /// Identifies our entry on the error context stack (its `arg`).
    static MARKER: u8 = 0;

    /// Pushes the callback for the error about to be raised. The caller must
    /// raise that error before control returns to Postgres: the entry lives
    /// in the current memory context and is popped by the error's longjmp.
    pub fn arm() {
        // SAFETY: a palloc'd callback entry pushed onto the error context
        // stack; PG_TRY/PG_CATCH restore the stack when the error is thrown.
        unsafe {
            let marker = std::ptr::addr_of!(MARKER).cast_mut().cast::<std::ffi::c_void>();
            let top = pg_sys::error_context_stack;
            if !top.is_null() && (*top).arg == marker {
                return; // already on the stack for this error
            }
            let entry = pg_sys::palloc0(size_of::<pg_sys::ErrorContextCallback>())
                .cast::<pg_sys::ErrorContextCallback>();
            (*entry).previous = pg_sys::error_context_stack;
            (*entry).callback = Some(rewrite);
            (*entry).arg = marker;
            pg_sys::error_context_stack = entry;
        }
    }

    /// Runs inside `errfinish` of every report while on the stack (only
    /// between `arm` and the raise): sets SD410 on the one with the
    /// placeholder code, ours.
    unsafe extern "C-unwind" fn rewrite(_arg: *mut std::ffi::c_void) {
        // SAFETY: called by errfinish with the report on the error stack.
        unsafe {
            if pg_sys::geterrcode() == PLACEHOLDER as i32 {
                errcode(make_sqlstate(SQLSTATE));
            }
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn packs_like_postgres() {
            // ERRCODE_OBJECT_IN_USE is MAKE_SQLSTATE('5','5','0','0','6').
            assert_eq!(super::make_sqlstate("55006"), super::PLACEHOLDER as i32);
        }
    }
}

/// The five-character SQLSTATE text of a code (inverse of MAKE_SQLSTATE).
pub fn sqlstate_text(code: Code) -> String {
    let packed = code as u32;
    (0..5).map(|i| char::from(b'0' + ((packed >> (6 * i)) & 0x3F) as u8)).collect()
}

pub type DsResult<T> = Result<T, DsError>;
