//! The subscription PUT body: validated, normalised, and its canonical text.
//!
//! Two PUTs of one id describe the same subscription when their canonical
//! texts are equal (the extension stores a hash of it): field order, stream
//! order and duplicates, and unknown fields do not matter.

use serde_json::{Value, json};

use super::{ErrorCode, SubError};
use crate::acl::Pattern;
use crate::{limits, webhook_url};

/// Default lease of a wake, in milliseconds.
pub const DEFAULT_LEASE_TTL_MS: i64 = 30_000;
/// Accepted lease range, in milliseconds.
pub const MIN_LEASE_TTL_MS: i64 = 1_000;
pub const MAX_LEASE_TTL_MS: i64 = 600_000;
/// Most explicit streams one request may name.
pub const MAX_STREAMS_PER_REQUEST: usize = 1_000;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 4_096;

/// `webhook` or `pull-wake`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Webhook,
    PullWake,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::PullWake => "pull-wake",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "webhook" => Some(Kind::Webhook),
            "pull-wake" => Some(Kind::PullWake),
            _ => None,
        }
    }
}

/// A validated subscription configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub kind: Kind,
    pub pattern: Option<String>,
    /// Explicit stream paths, sorted, without duplicates.
    pub streams: Vec<String>,
    pub webhook_url: Option<String>,
    pub wake_stream: Option<String>,
    pub lease_ttl_ms: i64,
    pub description: Option<String>,
}

fn optional_string<'a>(body: &'a Value, field: &str) -> Result<Option<&'a str>, SubError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(SubError::invalid(format!("{field} must be a string"))),
    }
}

/// Validates explicit stream paths (also for adding streams later).
pub fn parse_paths(value: Option<&Value>, field: &str) -> Result<Vec<String>, SubError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(SubError::invalid(format!("{field} must be an array of paths"))),
    };
    if items.len() > MAX_STREAMS_PER_REQUEST {
        return Err(SubError::invalid(format!(
            "{field} names {} streams, the maximum is {MAX_STREAMS_PER_REQUEST}",
            items.len()
        )));
    }
    let mut paths = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(path) = item else {
            return Err(SubError::invalid(format!("{field} must be an array of strings")));
        };
        validate_stream_path(path)?;
        paths.push(path.clone());
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// A stream path as a subscription names it.
pub fn validate_stream_path(path: &str) -> Result<(), SubError> {
    limits::validate_path(path).map_err(|e| SubError::invalid(e.to_string()))
}

/// Validates the PUT body of a subscription.
pub fn parse_config(body: &Value) -> Result<Config, SubError> {
    if !body.is_object() {
        return Err(SubError::invalid("the subscription must be a JSON object"));
    }
    let kind = match optional_string(body, "type")? {
        Some(t) => Kind::parse(t).ok_or_else(|| {
            SubError::invalid(format!("type must be \"webhook\" or \"pull-wake\", not {t:?}"))
        })?,
        None => return Err(SubError::invalid("type is required (\"webhook\" or \"pull-wake\")")),
    };
    let pattern = optional_string(body, "pattern")?.map(str::to_owned);
    if let Some(p) = &pattern {
        Pattern::parse(p).map_err(|e| SubError::invalid(format!("pattern: {e}")))?;
    }
    let streams = parse_paths(body.get("streams"), "streams")?;
    if pattern.is_none() && streams.is_empty() {
        return Err(SubError::invalid("give a pattern, streams, or both"));
    }
    let webhook_url = match (kind, body.get("webhook")) {
        (Kind::Webhook, Some(Value::Object(w))) => match w.get("url") {
            Some(Value::String(url)) => {
                webhook_url::check(url)
                    .map_err(|e| SubError::new(ErrorCode::WebhookUrlRejected, e.0))?;
                Some(url.clone())
            }
            _ => return Err(SubError::invalid("webhook subscriptions require webhook.url")),
        },
        (Kind::Webhook, _) => {
            return Err(SubError::invalid("webhook subscriptions require webhook.url"));
        }
        (Kind::PullWake, _) => None,
    };
    let wake_stream = match (kind, optional_string(body, "wake_stream")?) {
        (Kind::PullWake, Some(w)) => {
            validate_stream_path(w)?;
            Some(w.to_owned())
        }
        (Kind::PullWake, None) => {
            return Err(SubError::invalid("pull-wake subscriptions require wake_stream"));
        }
        (Kind::Webhook, _) => None,
    };
    let lease_ttl_ms = match body.get("lease_ttl_ms") {
        None | Some(Value::Null) => DEFAULT_LEASE_TTL_MS,
        Some(v) => match v.as_i64() {
            Some(ms) if (MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(&ms) => ms,
            _ => {
                return Err(SubError::invalid(format!(
                    "lease_ttl_ms must be an integer from {MIN_LEASE_TTL_MS} to {MAX_LEASE_TTL_MS}"
                )));
            }
        },
    };
    let description = optional_string(body, "description")?.map(str::to_owned);
    if description.as_ref().is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES) {
        return Err(SubError::invalid(format!(
            "description is longer than {MAX_DESCRIPTION_BYTES} bytes"
        )));
    }
    Ok(Config { kind, pattern, streams, webhook_url, wake_stream, lease_ttl_ms, description })
}

impl Config {
    /// The canonical text hashed to compare configurations: a JSON array
    /// of the fields in a fixed order (serde_json escapes deterministically).
    pub fn canonical_json(&self) -> String {
        json!([
            self.kind.as_str(),
            self.pattern,
            self.streams,
            self.webhook_url,
            self.wake_stream,
            self.lease_ttl_ms,
            self.description,
        ])
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: Value) -> SubError {
        parse_config(&body).unwrap_err()
    }

    #[test]
    fn webhook_config() {
        let c = parse_config(&json!({
            "type": "webhook", "pattern": "events/*", "streams": ["b", "a", "b"],
            "webhook": {"url": "https://example.com/h"}, "unknown": 1
        }))
        .unwrap();
        assert_eq!(c.kind, Kind::Webhook);
        assert_eq!(c.streams, ["a", "b"]);
        assert_eq!(c.lease_ttl_ms, DEFAULT_LEASE_TTL_MS);
        assert_eq!(c.wake_stream, None);
    }

    #[test]
    fn pull_wake_config() {
        let c = parse_config(&json!({
            "type": "pull-wake", "streams": ["x"], "wake_stream": "w", "lease_ttl_ms": 1000,
            "webhook": {"url": "ftp://ignored"}
        }))
        .unwrap();
        assert_eq!(
            (c.kind, c.wake_stream.as_deref(), c.lease_ttl_ms),
            (Kind::PullWake, Some("w"), 1000)
        );
        assert_eq!(c.webhook_url, None);
    }

    #[test]
    fn rejections() {
        use ErrorCode::*;
        let cases = [
            (json!([]), InvalidRequest),
            (json!({"pattern": "a/*"}), InvalidRequest),
            (json!({"type": "email", "pattern": "a"}), InvalidRequest),
            (json!({"type": "webhook", "webhook": {"url": "https://e.com"}}), InvalidRequest),
            (json!({"type": "webhook", "pattern": "a/b*"}), InvalidRequest),
            (json!({"type": "webhook", "pattern": "a"}), InvalidRequest),
            (json!({"type": "webhook", "pattern": "a", "webhook": {}}), InvalidRequest),
            (
                json!({"type": "webhook", "pattern": "a", "webhook": {"url": "http://10.0.0.1/hook"}}),
                WebhookUrlRejected,
            ),
            (json!({"type": "pull-wake", "pattern": "a"}), InvalidRequest),
            (json!({"type": "pull-wake", "pattern": "a", "wake_stream": ""}), InvalidRequest),
            (json!({"type": "pull-wake", "streams": ["a\n"], "wake_stream": "w"}), InvalidRequest),
            (json!({"type": "pull-wake", "streams": [1], "wake_stream": "w"}), InvalidRequest),
            (json!({"type": "pull-wake", "streams": "a", "wake_stream": "w"}), InvalidRequest),
            (
                json!({"type": "pull-wake", "pattern": "a", "wake_stream": "w", "lease_ttl_ms": 999}),
                InvalidRequest,
            ),
            (
                json!({"type": "pull-wake", "pattern": "a", "wake_stream": "w", "lease_ttl_ms": 600001}),
                InvalidRequest,
            ),
            (
                json!({"type": "pull-wake", "pattern": "a", "wake_stream": "w", "lease_ttl_ms": 1.5}),
                InvalidRequest,
            ),
            (
                json!({"type": "pull-wake", "pattern": "a", "wake_stream": "w", "description": 3}),
                InvalidRequest,
            ),
        ];
        for (body, code) in cases {
            assert_eq!(err(body.clone()).code, code, "{body}");
        }
        let many: Vec<String> = (0..=MAX_STREAMS_PER_REQUEST).map(|i| format!("s{i}")).collect();
        assert_eq!(
            err(json!({"type": "pull-wake", "streams": many, "wake_stream": "w"})).code,
            InvalidRequest
        );
    }

    #[test]
    fn canonical_text_ignores_order_duplicates_and_unknowns() {
        let a =
            parse_config(&json!({"type": "pull-wake", "streams": ["b", "a"], "wake_stream": "w"}))
                .unwrap();
        let b = parse_config(
            &json!({"wake_stream": "w", "streams": ["a", "b", "a"], "x": 1, "type": "pull-wake"}),
        )
        .unwrap();
        assert_eq!(a.canonical_json(), b.canonical_json());
        let c = parse_config(&json!({"type": "pull-wake", "streams": ["a", "b"], "wake_stream": "w", "lease_ttl_ms": 1000})).unwrap();
        assert_ne!(a.canonical_json(), c.canonical_json());
        let d = parse_config(&json!({"type": "pull-wake", "streams": ["a", "b"], "wake_stream": "w", "description": "d"})).unwrap();
        assert_ne!(a.canonical_json(), d.canonical_json());
    }
}
