//! The one mapping from failures (SQLSTATEs, header syntax, limits) to HTTP.
//!
//! Database errors are classified by SQLSTATE (and, for the codes that name
//! a stream outcome, by whether the extension raised them: the routine
//! field), never by message text.
//! Client errors (4xx) carry the extension's message as a `text/plain`
//! body; server errors (5xx) get a generic body and are logged once here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use thiserror::Error;
use tokio_postgres::error::SqlState;

use crate::auth::AuthError;
use crate::db::DbError;
use crate::failover::{self, Outage};
use crate::protocol::headers::{HeaderError, STREAM_CLOSED, STREAM_EARLIEST_OFFSET};

/// The realm of `WWW-Authenticate` challenges.
pub const REALM: &str = "durable_streams";

/// The body of every 403: the same whether or not the stream exists.
pub const FORBIDDEN_BODY: &str = "forbidden: this token's role may not do that on this stream";

/// Every way a request can fail.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Malformed request (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such stream (404).
    #[error("stream not found")]
    NotFound,
    /// The stream was deleted but is kept for its forks (410).
    #[error("{0}")]
    Gone(String),
    /// The offset is before the earliest retained one (410 +
    /// `Stream-Earliest-Offset` when the extension said which).
    #[error("{message}")]
    NotRetained { message: String, earliest: Option<String> },
    /// Conflicts with the stream's state or configuration (409).
    #[error("{0}")]
    Conflict(String),
    /// The stream is closed (409 + `Stream-Closed: true`).
    #[error("{0}")]
    StreamClosed(String),
    /// Body over the limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No valid credentials (401 + `WWW-Authenticate`); the text is the
    /// `error_description` of an invalid token, `None` when none was sent.
    #[error("authentication required")]
    Unauthorized(Option<&'static str>),
    /// The request's role may not do this (403). The body never says
    /// whether the stream exists.
    #[error("{FORBIDDEN_BODY}")]
    Forbidden,
    /// Over the rate limit (429 + `Retry-After` in whole seconds).
    #[error("too many requests")]
    TooManyRequests {
        /// Seconds until a request would be allowed, rounded up.
        retry_after_secs: u64,
    },
    /// A storage quota is exhausted, or the server is out of disk (507).
    #[error("{0}")]
    InsufficientStorage(String),
    /// A bounded resource (waiters, SSE clients) is full (503 + Retry-After).
    #[error("{0}")]
    Busy(&'static str),
    /// The database could not be reached, is read-only, or asked for a
    /// retry (503 + Retry-After; the body says which, see
    /// [`crate::failover::explain`]).
    #[error("database unavailable")]
    Unavailable(#[source] DbError),
    /// Anything else (500); details are logged, not sent.
    #[error("internal error")]
    Internal(String),
}

/// The routine Postgres reports for every error the extension raises
/// (`ErrorReport::new(.., "durable_streams")` in the extension's
/// `src/error.rs`, the one place it raises); Postgres' own errors name the
/// C function that raised them (`get_role_oid`, ...).
pub const EXTENSION_ROUTINE: &str = "durable_streams";

/// The extension's SQLSTATE for a read or fork below the earliest retained
/// offset (class `SD` is ours: Postgres never raises it).
pub const NOT_RETAINED: &str = "SD410";

/// The earliest retained offset an SD410 names in its detail
/// (`earliest retained offset: <offset>`).
pub fn earliest_from_detail(detail: Option<&str>) -> Option<String> {
    let offset = detail?.strip_prefix("earliest retained offset: ")?;
    ds_core::Offset::parse(offset).ok().map(|o| o.to_string())
}

/// SQLSTATEs that name a durable_streams outcome (a missing, deleted,
/// conflicting or closed stream, a content type mismatch, a limit or quota)
/// only when the extension raised them. Postgres raises the same built-in
/// codes for unrelated reasons inside a `ds.*` call: 42704 for an unknown
/// role or setting, 55000 for WAL functions during recovery, 54000 for a
/// full NOTIFY queue at commit ("too many notifications in the NOTIFY
/// queue"), 42804 for a schema older than the library, 53400 for an
/// exhausted server slot. Those are server errors, not the client's.
/// (42501 and the data-exception codes are client errors wherever they
/// come from: a role without EXECUTE, a value Postgres cannot parse.)
fn names_an_outcome(code: &SqlState) -> bool {
    [
        SqlState::UNDEFINED_OBJECT,
        SqlState::OBJECT_IN_USE,
        SqlState::DUPLICATE_OBJECT,
        SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
        SqlState::DATATYPE_MISMATCH,
        SqlState::PROGRAM_LIMIT_EXCEEDED,
        SqlState::CONFIGURATION_LIMIT_EXCEEDED,
    ]
    .contains(code)
        || code.code() == NOT_RETAINED
}

/// [`status_for_sqlstate`] for an error Postgres reported, raised in
/// `routine`: an outcome code raised by anything but the extension is not a
/// client error (`None`).
pub fn status_for_db_error(code: &SqlState, routine: Option<&str>) -> Option<StatusCode> {
    if names_an_outcome(code) && routine != Some(EXTENSION_ROUTINE) {
        return None;
    }
    status_for_sqlstate(code)
}

/// The HTTP status of an SQLSTATE raised by the SQL API; `None` for codes
/// that are not client errors.
pub fn status_for_sqlstate(code: &SqlState) -> Option<StatusCode> {
    let status = match code {
        c if *c == SqlState::UNDEFINED_OBJECT => StatusCode::NOT_FOUND,
        c if *c == SqlState::OBJECT_IN_USE || c.code() == NOT_RETAINED => StatusCode::GONE,
        c if *c == SqlState::DUPLICATE_OBJECT => StatusCode::CONFLICT,
        c if *c == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE => StatusCode::CONFLICT,
        c if *c == SqlState::DATATYPE_MISMATCH => StatusCode::CONFLICT,
        c if *c == SqlState::PROGRAM_LIMIT_EXCEEDED => StatusCode::PAYLOAD_TOO_LARGE,
        c if *c == SqlState::INSUFFICIENT_PRIVILEGE => StatusCode::FORBIDDEN,
        // 53400: a quota of the extension; 53100: Postgres out of disk.
        c if *c == SqlState::CONFIGURATION_LIMIT_EXCEEDED || *c == SqlState::DISK_FULL => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        c if *c == SqlState::SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION
            || *c == SqlState::INVALID_PARAMETER_VALUE
            || *c == SqlState::INVALID_TEXT_REPRESENTATION
            || *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE
            || *c == SqlState::INVALID_DATETIME_FORMAT
            || *c == SqlState::DATETIME_FIELD_OVERFLOW
            || *c == SqlState::NUMERIC_VALUE_OUT_OF_RANGE
            || *c == SqlState::INVALID_JSON_TEXT
            || *c == SqlState::UNTRANSLATABLE_CHARACTER
            || *c == SqlState::INVALID_NAME =>
        {
            StatusCode::BAD_REQUEST
        }
        _ => return None,
    };
    Some(status)
}

impl ApiError {
    /// Builds the client error for an SQLSTATE and message, or an internal
    /// error when the code is not a client error.
    pub fn from_sqlstate(code: &SqlState, message: String) -> ApiError {
        match status_for_sqlstate(code) {
            Some(StatusCode::NOT_FOUND) => ApiError::NotFound,
            Some(StatusCode::GONE) if code.code() == NOT_RETAINED => {
                ApiError::NotRetained { message, earliest: None }
            }
            Some(StatusCode::GONE) => ApiError::Gone(message),
            Some(StatusCode::CONFLICT) if *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE => {
                ApiError::StreamClosed(message)
            }
            Some(StatusCode::CONFLICT) => ApiError::Conflict(message),
            Some(StatusCode::PAYLOAD_TOO_LARGE) => ApiError::PayloadTooLarge(message),
            Some(StatusCode::FORBIDDEN) => {
                tracing::debug!(%message, "permission denied");
                ApiError::Forbidden
            }
            Some(StatusCode::INSUFFICIENT_STORAGE) if *code == SqlState::DISK_FULL => {
                // Postgres' message names files; the client gets none of it.
                tracing::error!(%message, "database out of disk");
                ApiError::InsufficientStorage(
                    "insufficient storage: the server is out of space".into(),
                )
            }
            Some(StatusCode::INSUFFICIENT_STORAGE) => {
                ApiError::InsufficientStorage(format!("insufficient storage: {message}"))
            }
            Some(_) => ApiError::BadRequest(message),
            None => ApiError::Internal(format!("SQLSTATE {}: {message}", code.code())),
        }
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Gone(_) | ApiError::NotRetained { .. } => StatusCode::GONE,
            ApiError::Conflict(_) | ApiError::StreamClosed(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Busy(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        // No connection, a lost one, a read-only server (failover), or a
        // passing reason (lock timeout, deadlock): 503, the client may
        // retry (with producer headers a retry is deduplicated).
        if failover::outage(&e).is_some() {
            return ApiError::Unavailable(e);
        }
        match &e {
            DbError::Postgres(pg) => match pg.as_db_error() {
                Some(db) if status_for_db_error(db.code(), db.routine()).is_none() => {
                    ApiError::Internal(format!(
                        "SQLSTATE {} raised by {}: {}",
                        db.code().code(),
                        db.routine().unwrap_or("?"),
                        db.message()
                    ))
                }
                Some(db) => match ApiError::from_sqlstate(db.code(), db.message().to_owned()) {
                    ApiError::NotRetained { message, .. } => ApiError::NotRetained {
                        message,
                        earliest: earliest_from_detail(db.detail()),
                    },
                    other => other,
                },
                None => ApiError::Unavailable(e),
            },
            DbError::Pool(_) | DbError::Batch(_) | DbError::Unavailable(..) => {
                ApiError::Unavailable(e)
            }
            // The role does not exist, or the sidecar may not become it.
            DbError::Role { role, source } => match source.as_db_error() {
                Some(db) => {
                    tracing::warn!(
                        %role,
                        sqlstate = db.code().code(),
                        reason = db.message(),
                        "cannot run a request as the token's role (does it exist, and is the \
                         sidecar's login role a member of it?)"
                    );
                    ApiError::Forbidden
                }
                None => ApiError::Unavailable(e),
            },
            DbError::Shape(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::Missing => ApiError::Unauthorized(None),
            AuthError::Invalid(why) => ApiError::Unauthorized(Some(why)),
            AuthError::TwoTokens => ApiError::BadRequest(
                "send the token in the Authorization header or the token parameter, not both"
                    .into(),
            ),
            AuthError::OwnRole => ApiError::Forbidden,
        }
    }
}

/// The `WWW-Authenticate` challenge of a 401 (RFC 6750 §3): no `error`
/// attribute when the request had no token.
pub fn challenge(description: Option<&str>) -> String {
    match description {
        None => format!("Bearer realm=\"{REALM}\""),
        Some(d) => {
            let d: String =
                d.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
            format!("Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{d}\"")
        }
    }
}

impl From<HeaderError> for ApiError {
    fn from(e: HeaderError) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "internal server error".to_owned()
            }
            ApiError::Unavailable(e) => {
                let outage = failover::outage(e).unwrap_or(Outage::ConnectionLost);
                tracing::warn!(error = %e, ?outage, "database unavailable: answered 503");
                failover::explain(outage).to_owned()
            }
            other => other.to_string(),
        };
        let mut response =
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
        match self {
            ApiError::StreamClosed(_) => {
                response.headers_mut().insert(STREAM_CLOSED, HeaderValue::from_static("true"));
            }
            ApiError::NotRetained { earliest: Some(earliest), .. } => {
                if let Ok(v) = HeaderValue::from_str(&earliest) {
                    response.headers_mut().insert(STREAM_EARLIEST_OFFSET, v);
                }
            }
            ApiError::Busy(_) | ApiError::Unavailable(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized(description) => {
                if let Ok(v) = HeaderValue::from_str(&challenge(description)) {
                    response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::TooManyRequests { retry_after_secs } => {
                response.headers_mut().insert(header::RETRY_AFTER, retry_after_secs.max(1).into());
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_table() {
        let check = |code: &str, want: Option<u16>| {
            let got = status_for_sqlstate(&SqlState::from_code(code)).map(|s| s.as_u16());
            assert_eq!(got, want, "{code}");
        };
        check("42704", Some(404));
        check("55006", Some(410));
        check("42710", Some(409));
        check("42602", Some(400));
        check("22023", Some(400));
        check("22P02", Some(400));
        check("22021", Some(400));
        check("54000", Some(413));
        check("55000", Some(409));
        check("42804", Some(409));
        check("42501", Some(403));
        check("53400", Some(507));
        check("53100", Some(507));
        check("SD410", Some(410));
        check("XX000", None);
        check("40001", None);
    }

    #[test]
    fn outcome_codes_count_only_when_the_extension_raised_them() {
        let status = |code: &str, routine| {
            status_for_db_error(&SqlState::from_code(code), routine).map(|s| s.as_u16())
        };
        let ours = Some(EXTENSION_ROUTINE);
        for (code, want) in [
            ("42704", 404),
            ("55006", 410),
            ("42710", 409),
            ("55000", 409),
            ("42804", 409),
            ("54000", 413),
            ("53400", 507),
            ("SD410", 410),
        ] {
            assert_eq!(status(code, ours), Some(want), "{code}");
            // As Postgres raises them (routines seen in its error reports).
            for theirs in [Some("get_role_oid"), Some("asyncQueueAddEntries"), None] {
                assert_eq!(status(code, theirs), None, "{code} from {theirs:?}");
            }
        }
        // Client errors wherever they come from.
        for code in ["42501", "22P02", "22008", "22021", "53100"] {
            assert_eq!(status(code, Some("timestamptz_in")), status(code, ours), "{code}");
            assert!(status(code, None).is_some(), "{code}");
        }
        assert_eq!(status("XX000", ours), None);
    }

    #[test]
    fn security_statuses() {
        let r = ApiError::Unauthorized(None).into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"durable_streams\"");
        let r = ApiError::from(AuthError::Invalid("token expired")).into_response();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()[header::WWW_AUTHENTICATE],
            "Bearer realm=\"durable_streams\", error=\"invalid_token\", error_description=\"token expired\""
        );
        assert_eq!(challenge(Some("a\"b\\c\n")), challenge(Some("abc")));
        assert_eq!(ApiError::from(AuthError::TwoTokens).status(), 400);
        assert_eq!(ApiError::from(AuthError::OwnRole).status(), 403);
        let forbidden =
            ApiError::from_sqlstate(&SqlState::INSUFFICIENT_PRIVILEGE, "no read on a/b".into());
        assert!(matches!(forbidden, ApiError::Forbidden));
        let r = ApiError::TooManyRequests { retry_after_secs: 3 }.into_response();
        assert_eq!(
            (r.status().as_u16(), &r.headers()[header::RETRY_AFTER]),
            (429, &"3".parse::<HeaderValue>().unwrap())
        );
        let quota =
            ApiError::from_sqlstate(&SqlState::CONFIGURATION_LIMIT_EXCEEDED, "quota of a/".into());
        assert_eq!(quota.status(), 507);
        assert!(quota.to_string().contains("quota of a/"));
        let disk =
            ApiError::from_sqlstate(&SqlState::DISK_FULL, "could not extend base/1/2".into());
        assert_eq!(disk.status(), 507);
        assert!(!disk.to_string().contains("base/1/2"));
    }

    #[test]
    fn not_retained_is_410_with_the_earliest_offset() {
        let at = "0000000000000000_0000000000000021";
        assert_eq!(
            earliest_from_detail(Some(&format!("earliest retained offset: {at}"))).as_deref(),
            Some(at)
        );
        assert_eq!(earliest_from_detail(Some("earliest retained offset: x\r\n")), None);
        assert_eq!(earliest_from_detail(None), None);
        let e = ApiError::from_sqlstate(&SqlState::from_code("SD410"), "before".into());
        assert!(matches!(e, ApiError::NotRetained { .. }));
        let e = ApiError::NotRetained { message: "before".into(), earliest: Some(at.into()) };
        let r = e.into_response();
        assert_eq!(r.status(), 410);
        assert_eq!(r.headers()[STREAM_EARLIEST_OFFSET], at);
    }

    #[test]
    fn statuses() {
        assert_eq!(ApiError::from_sqlstate(&SqlState::UNDEFINED_OBJECT, "x".into()).status(), 404);
        let closed =
            ApiError::from_sqlstate(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, "closed".into());
        assert!(matches!(closed, ApiError::StreamClosed(_)));
        let r = closed.into_response();
        assert_eq!(r.status(), 409);
        assert_eq!(r.headers()[STREAM_CLOSED], "true");
        let internal = ApiError::from_sqlstate(&SqlState::INTERNAL_ERROR, "secret".into());
        assert_eq!(internal.status(), 500);
        assert_eq!(ApiError::Busy("full").into_response().headers()[header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn outages_are_503_with_retry_after_and_a_reason() {
        use crate::db::DbError;
        let body = |r: Response| async move {
            let bytes = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let read_only = ApiError::from(DbError::Unavailable(Outage::ReadOnly, "25006".into()));
        let r = read_only.into_response();
        assert_eq!(
            (r.status().as_u16(), r.headers()[header::RETRY_AFTER].to_str().unwrap()),
            (503, "1")
        );
        assert!(body(r).await.contains("read-only"));
        let lost = ApiError::from(DbError::Batch("connection closed".into())).into_response();
        assert_eq!(lost.status(), 503);
        assert!(body(lost).await.contains("may or may not have been applied"));
        let none = ApiError::from(DbError::Pool(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Create,
        )));
        let r = none.into_response();
        assert_eq!(r.status(), 503);
        assert!(body(r).await.contains("cannot connect to a writable database"));
    }
}
