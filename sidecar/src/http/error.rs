//! The one mapping from failures (SQLSTATEs, header syntax, limits) to HTTP.
//!
//! Database errors are classified by SQLSTATE only, never by message text.
//! Client errors (4xx) carry the extension's message as a `text/plain`
//! body; server errors (5xx) get a generic body and are logged once here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use thiserror::Error;
use tokio_postgres::error::SqlState;

use crate::db::DbError;
use crate::protocol::headers::{HeaderError, STREAM_CLOSED};

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
    /// Conflicts with the stream's state or configuration (409).
    #[error("{0}")]
    Conflict(String),
    /// The stream is closed (409 + `Stream-Closed: true`).
    #[error("{0}")]
    StreamClosed(String),
    /// Body over the limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A bounded resource (waiters, SSE clients) is full (503 + Retry-After).
    #[error("{0}")]
    Busy(&'static str),
    /// The database could not be reached (503).
    #[error("database unavailable")]
    Unavailable(#[source] DbError),
    /// Anything else (500); details are logged, not sent.
    #[error("internal error")]
    Internal(String),
}

/// The HTTP status of an SQLSTATE raised by the SQL API; `None` for codes
/// that are not client errors.
/// Errors after which the same request may well succeed.
fn is_transient(code: &SqlState) -> bool {
    *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::QUERY_CANCELED
}

pub fn status_for_sqlstate(code: &SqlState) -> Option<StatusCode> {
    let status = match code {
        c if *c == SqlState::UNDEFINED_OBJECT => StatusCode::NOT_FOUND,
        c if *c == SqlState::OBJECT_IN_USE => StatusCode::GONE,
        c if *c == SqlState::DUPLICATE_OBJECT => StatusCode::CONFLICT,
        c if *c == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE => StatusCode::CONFLICT,
        c if *c == SqlState::DATATYPE_MISMATCH => StatusCode::CONFLICT,
        c if *c == SqlState::PROGRAM_LIMIT_EXCEEDED => StatusCode::PAYLOAD_TOO_LARGE,
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
            Some(StatusCode::GONE) => ApiError::Gone(message),
            Some(StatusCode::CONFLICT) if *code == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE => {
                ApiError::StreamClosed(message)
            }
            Some(StatusCode::CONFLICT) => ApiError::Conflict(message),
            Some(StatusCode::PAYLOAD_TOO_LARGE) => ApiError::PayloadTooLarge(message),
            Some(_) => ApiError::BadRequest(message),
            None => ApiError::Internal(format!("SQLSTATE {}: {message}", code.code())),
        }
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Conflict(_) | ApiError::StreamClosed(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Busy(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> ApiError {
        match &e {
            DbError::Postgres(pg) => match pg.as_db_error() {
                // Rolled back for a passing reason (a lock held past
                // lock_timeout, a deadlock): nothing changed, try again.
                Some(db) if is_transient(db.code()) => ApiError::Unavailable(e),
                Some(db) => ApiError::from_sqlstate(db.code(), db.message().to_owned()),
                // No server error: the connection broke or could not be used.
                None => ApiError::Unavailable(e),
            },
            // Unknown whether it committed: 503, the client may retry (with
            // producer headers a retry is deduplicated).
            DbError::Pool(_) | DbError::Batch(_) => ApiError::Unavailable(e),
            DbError::Shape(_) => ApiError::Internal(e.to_string()),
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
                tracing::error!(error = %e, "database unavailable");
                "service unavailable".to_owned()
            }
            other => other.to_string(),
        };
        let mut response =
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response();
        match self {
            ApiError::StreamClosed(_) => {
                response.headers_mut().insert(STREAM_CLOSED, HeaderValue::from_static("true"));
            }
            ApiError::Busy(_) | ApiError::Unavailable(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
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
        check("XX000", None);
        check("40001", None);
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
}
