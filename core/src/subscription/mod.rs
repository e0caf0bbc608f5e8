//! Subscriptions (webhook and pull-wake): the pure rules shared by the
//! extension (which keeps the state) and the sidecar (which speaks HTTP).
//!
//! - `config`: the PUT body, validated and normalised (and the canonical
//!   text that is hashed to tell "same subscription" from "conflict");
//! - `wake`: ack/callback/release requests, ack validation, retry backoff;
//! - `doc`: the JSON documents the API returns.
//!
//! Errors are data here ([`SubError`]): the extension returns them as
//! `{"error": {...}}` objects, and its raising SQL wrappers turn
//! [`ErrorCode::sqlstate`] into an exception.

pub mod config;
pub mod doc;
pub mod wake;

use serde_json::{Map, Value, json};

/// Longest subscription id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest worker name (pull-wake claim), in bytes.
pub const MAX_WORKER_BYTES: usize = 256;

/// The error codes of the subscription API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    WebhookUrlRejected,
    NotFound,
    AlreadyExists,
    TokenInvalid,
    Fenced,
    AlreadyClaimed,
    NoPendingWork,
    InvalidOffset,
    Forbidden,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidRequest,
        ErrorCode::WebhookUrlRejected,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::TokenInvalid,
        ErrorCode::Fenced,
        ErrorCode::AlreadyClaimed,
        ErrorCode::NoPendingWork,
        ErrorCode::InvalidOffset,
        ErrorCode::Forbidden,
    ];

    /// The `error.code` of the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::WebhookUrlRejected => "WEBHOOK_URL_REJECTED",
            ErrorCode::NotFound => "SUBSCRIPTION_NOT_FOUND",
            ErrorCode::AlreadyExists => "SUBSCRIPTION_ALREADY_EXISTS",
            ErrorCode::TokenInvalid => "TOKEN_INVALID",
            ErrorCode::Fenced => "FENCED",
            ErrorCode::AlreadyClaimed => "ALREADY_CLAIMED",
            ErrorCode::NoPendingWork => "NO_PENDING_WORK",
            ErrorCode::InvalidOffset => "INVALID_OFFSET",
            ErrorCode::Forbidden => "FORBIDDEN",
        }
    }

    pub fn parse(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == code)
    }

    /// The SQLSTATE the raising `ds.subscription_*` wrappers use: class
    /// `SD` (not a standard class, so Postgres never raises it itself),
    /// and 42501 for a missing privilege, like every other ds function.
    pub fn sqlstate(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "SD001",
            ErrorCode::WebhookUrlRejected => "SD002",
            ErrorCode::NotFound => "SD003",
            ErrorCode::AlreadyExists => "SD004",
            ErrorCode::TokenInvalid => "SD005",
            ErrorCode::Fenced => "SD006",
            ErrorCode::AlreadyClaimed => "SD007",
            ErrorCode::NoPendingWork => "SD008",
            ErrorCode::InvalidOffset => "SD009",
            ErrorCode::Forbidden => "42501",
        }
    }

    /// The HTTP status of the error.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::WebhookUrlRejected => 400,
            ErrorCode::TokenInvalid => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists
            | ErrorCode::Fenced
            | ErrorCode::AlreadyClaimed
            | ErrorCode::NoPendingWork
            | ErrorCode::InvalidOffset => 409,
        }
    }
}

/// A refused subscription request: a code, a message and extra fields
/// (`current_holder` and `generation` for `ALREADY_CLAIMED`).
#[derive(Debug, Clone, PartialEq)]
pub struct SubError {
    pub code: ErrorCode,
    pub message: String,
    pub extra: Map<String, Value>,
}

impl SubError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> SubError {
        SubError { code, message: message.into(), extra: Map::new() }
    }

    pub fn invalid(message: impl Into<String>) -> SubError {
        SubError::new(ErrorCode::InvalidRequest, message)
    }

    pub fn with(mut self, key: &str, value: Value) -> SubError {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// `{"error": {"code", "message", ...extra}}`.
    pub fn to_json(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code.as_str()));
        error.insert("message".into(), json!(self.message));
        error.extend(self.extra.clone());
        json!({ "error": error })
    }
}

impl std::fmt::Display for SubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for SubError {}

/// Checks a subscription id: 1 to 256 bytes, no control characters.
pub fn validate_id(id: &str) -> Result<(), SubError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(SubError::invalid(format!(
            "subscription id must be 1 to {MAX_ID_BYTES} bytes, got {}",
            id.len()
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(SubError::invalid("subscription id contains a control character"));
    }
    Ok(())
}

/// Checks a pull-wake worker name: 1 to 256 bytes, no control characters.
pub fn validate_worker(worker: &str) -> Result<(), SubError> {
    if worker.is_empty() || worker.len() > MAX_WORKER_BYTES || worker.chars().any(char::is_control)
    {
        return Err(SubError::invalid(format!(
            "worker must be 1 to {MAX_WORKER_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_map() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(code.sqlstate().len(), 5);
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
        assert_eq!(ErrorCode::AlreadyClaimed.sqlstate(), "SD007");
        assert_eq!(ErrorCode::TokenInvalid.http_status(), 401);
        assert_eq!(ErrorCode::Forbidden.sqlstate(), "42501");
    }

    #[test]
    fn error_objects_carry_extras() {
        let e = SubError::new(ErrorCode::AlreadyClaimed, "held")
            .with("current_holder", json!("w1"))
            .with("generation", json!(3));
        assert_eq!(
            e.to_json(),
            json!({"error": {"code": "ALREADY_CLAIMED", "message": "held",
                             "current_holder": "w1", "generation": 3}})
        );
    }

    #[test]
    fn ids_and_workers() {
        assert!(validate_id("sub-1").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id(&"x".repeat(257)).is_err());
        assert!(validate_id("a\nb").is_err());
        assert!(validate_worker("w").is_ok());
        assert!(validate_worker("").is_err());
    }
}
