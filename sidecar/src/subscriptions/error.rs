//! The one mapping from subscription error codes to HTTP statuses.
//!
//! The extension's `ds.try_subscription_*` functions answer
//! `{"error": {"code", "message", ...}}` for a refused operation; the
//! sidecar returns that object as the JSON body with the status of its
//! code. Errors the sidecar finds itself (bad JSON, a missing bearer
//! token, an unknown `__ds` route) use the same codes and shape.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use ds_core::subscription::ErrorCode;
use serde_json::{Value, json};

use crate::http::ApiError;

/// The HTTP status of a subscription error code (PROTOCOL.md §6-7), from
/// `ds_core::subscription::ErrorCode`, the table the extension's SQLSTATEs
/// come from too. `None`: a code this sidecar does not know.
pub fn status_for_code(code: &str) -> Option<StatusCode> {
    let status = ErrorCode::parse(code)?.http_status();
    StatusCode::from_u16(status).ok()
}

/// A failed subscription request.
#[derive(Debug)]
pub enum SubError {
    /// A coded refusal: `{"error": {...}}` with the status of its code.
    Coded {
        /// The status of the code.
        status: StatusCode,
        /// The whole body (`{"error": {...}}`).
        body: Value,
    },
    /// 405.
    MethodNotAllowed,
    /// Anything else (database unavailable, permission on the function,
    /// internal), answered like a stream request's error.
    Api(ApiError),
}

impl SubError {
    /// A refusal with `code` and `message` (no extra fields).
    pub fn new(code: &'static str, message: impl Into<String>) -> SubError {
        let body = json!({"error": {"code": code, "message": message.into()}});
        SubError::Coded { status: status_for_code(code).unwrap_or(StatusCode::BAD_REQUEST), body }
    }

    /// 400 `INVALID_REQUEST`.
    pub fn invalid(message: impl Into<String>) -> SubError {
        SubError::new("INVALID_REQUEST", message)
    }

    /// The error object of an extension answer, if it is one.
    pub fn from_answer(answer: &Value) -> Option<SubError> {
        let error = answer.get("error")?;
        let code = error.get("code").and_then(Value::as_str).unwrap_or_default();
        Some(match status_for_code(code) {
            Some(status) => SubError::Coded { status, body: json!({ "error": error }) },
            None => SubError::Api(ApiError::Internal(format!(
                "the extension answered an unknown subscription error: {error}"
            ))),
        })
    }
}

impl From<ApiError> for SubError {
    fn from(e: ApiError) -> SubError {
        SubError::Api(e)
    }
}

impl From<crate::db::DbError> for SubError {
    fn from(e: crate::db::DbError) -> SubError {
        SubError::Api(e.into())
    }
}

impl IntoResponse for SubError {
    fn into_response(self) -> Response {
        match self {
            SubError::Coded { status, body } => {
                (status, [(header::CONTENT_TYPE, "application/json")], body.to_string())
                    .into_response()
            }
            SubError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "method not allowed",
            )
                .into_response(),
            SubError::Api(e) => e.into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_code_has_its_status() {
        for (code, status) in [
            ("INVALID_REQUEST", 400),
            ("WEBHOOK_URL_REJECTED", 400),
            ("SUBSCRIPTION_NOT_FOUND", 404),
            ("SUBSCRIPTION_ALREADY_EXISTS", 409),
            ("TOKEN_INVALID", 401),
            ("FENCED", 409),
            ("ALREADY_CLAIMED", 409),
            ("NO_PENDING_WORK", 409),
            ("INVALID_OFFSET", 409),
            ("FORBIDDEN", 403),
        ] {
            assert_eq!(status_for_code(code).map(|s| s.as_u16()), Some(status), "{code}");
        }
        assert_eq!(status_for_code("SOMETHING_ELSE"), None);
    }

    #[test]
    fn answers_keep_their_extra_fields() {
        let answer = json!({"error": {"code": "ALREADY_CLAIMED", "message": "m",
                                      "current_holder": "w1", "generation": 3}});
        let Some(SubError::Coded { status, body }) = SubError::from_answer(&answer) else {
            panic!("coded")
        };
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(body["error"]["current_holder"], "w1");
        assert!(SubError::from_answer(&json!({"subscription": {}})).is_none());
        assert!(matches!(
            SubError::from_answer(&json!({"error": {"code": "NEW"}})),
            Some(SubError::Api(ApiError::Internal(_)))
        ));
    }
}
