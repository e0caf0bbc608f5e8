//! Wakes: the ack / callback / release request, ack validation, and the
//! retry delay of a failed webhook delivery.

use std::collections::HashMap;

use serde_json::Value;

use super::{ErrorCode, SubError};
use crate::Offset;

/// Most acks one request may carry.
pub const MAX_ACKS: usize = 10_000;
/// Longest delay between webhook delivery attempts, in milliseconds.
pub const MAX_RETRY_DELAY_MS: f64 = 60_000.0;

/// One ack: move `path`'s cursor to `offset` (still unparsed: a bad offset
/// is an `INVALID_OFFSET`, not a malformed request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub path: String,
    pub offset: String,
}

/// The body of an ack, callback or release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeRequest {
    pub wake_id: String,
    pub generation: i64,
    pub acks: Vec<Ack>,
    pub done: bool,
}

/// Parses an ack / callback / release body.
pub fn parse_request(body: &Value) -> Result<WakeRequest, SubError> {
    if !body.is_object() {
        return Err(SubError::invalid("the request must be a JSON object"));
    }
    let Some(wake_id) = body.get("wake_id").and_then(Value::as_str) else {
        return Err(SubError::invalid("wake_id (string) is required"));
    };
    let Some(generation) = body.get("generation").and_then(Value::as_i64) else {
        return Err(SubError::invalid("generation (integer) is required"));
    };
    let done = match body.get("done") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(SubError::invalid("done must be a boolean")),
    };
    let items = match body.get("acks") {
        None | Some(Value::Null) => &Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(SubError::invalid("acks must be an array")),
    };
    if items.len() > MAX_ACKS {
        return Err(SubError::invalid(format!("more than {MAX_ACKS} acks in one request")));
    }
    let mut acks = Vec::with_capacity(items.len());
    for item in items {
        let path = item.get("stream").or_else(|| item.get("path")).and_then(Value::as_str);
        let offset = item.get("offset").and_then(Value::as_str);
        let (Some(path), Some(offset)) = (path, offset) else {
            return Err(SubError::invalid("each ack needs stream (or path) and offset strings"));
        };
        acks.push(Ack { path: path.to_owned(), offset: offset.to_owned() });
    }
    Ok(WakeRequest { wake_id: wake_id.to_owned(), generation, acks, done })
}

/// Where a linked stream stands: its acknowledged position and its tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub acked: Offset,
    pub tail: Offset,
}

fn invalid_offset(message: String) -> SubError {
    SubError::new(ErrorCode::InvalidOffset, message)
}

/// Validates every ack against the subscription's links before any is
/// applied: unknown stream, `-1`, not an offset, below the acknowledged
/// position, or beyond the tail are `INVALID_OFFSET`. Returns the new
/// position per path (the highest, when a path is acked twice).
pub fn validate_acks(
    acks: &[Ack],
    links: &HashMap<String, Cursor>,
) -> Result<Vec<(String, Offset)>, SubError> {
    let mut out: HashMap<&str, Offset> = HashMap::new();
    for ack in acks {
        let Some(link) = links.get(&ack.path) else {
            return Err(invalid_offset(format!(
                "ack names {:?}, which is not a stream of this subscription",
                ack.path
            )));
        };
        if ack.offset == "-1" {
            return Err(invalid_offset(format!("ack offset for {:?} must not be -1", ack.path)));
        }
        let offset = Offset::parse(&ack.offset).map_err(|e| invalid_offset(e.to_string()))?;
        if offset < link.acked {
            return Err(invalid_offset(format!(
                "ack offset {offset} for {:?} regresses the acknowledged offset {}",
                ack.path, link.acked
            )));
        }
        if offset > link.tail {
            return Err(invalid_offset(format!(
                "ack offset {offset} for {:?} is beyond the stream's tail {}",
                ack.path, link.tail
            )));
        }
        let best = out.entry(&ack.path).or_insert(offset);
        *best = (*best).max(offset);
    }
    let mut out: Vec<(String, Offset)> = out.into_iter().map(|(p, o)| (p.to_owned(), o)).collect();
    out.sort();
    Ok(out)
}

/// Delay before the next attempt after `attempts` failed ones (1 for the
/// first failure): 1 s doubling up to 60 s, times `jitter_factor`, which
/// the caller draws from [0.8, 1.2) so that retries of many subscriptions
/// to one receiver spread out.
pub fn retry_delay_ms(attempts: i32, jitter_factor: f64) -> i64 {
    let exponent = attempts.clamp(1, 32) - 1;
    let base = (1000.0 * 2f64.powi(exponent)).min(MAX_RETRY_DELAY_MS);
    (base * jitter_factor.clamp(0.8, 1.2)).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn links() -> HashMap<String, Cursor> {
        HashMap::from([
            ("a".to_owned(), Cursor { acked: Offset(5), tail: Offset(10) }),
            ("b".to_owned(), Cursor { acked: Offset(0), tail: Offset(0) }),
        ])
    }

    fn ack(path: &str, offset: &str) -> Ack {
        Ack { path: path.into(), offset: offset.into() }
    }

    #[test]
    fn parses_requests() {
        let r = parse_request(&json!({"wake_id": "w_1", "generation": 3,
            "acks": [{"stream": "a", "offset": "x"}, {"path": "b", "offset": "y"}], "done": true}))
        .unwrap();
        assert_eq!(r.acks, [ack("a", "x"), ack("b", "y")]);
        assert!(r.done);
        let r = parse_request(&json!({"wake_id": "w", "generation": 1})).unwrap();
        assert!(!r.done && r.acks.is_empty());
        for bad in [
            json!(1),
            json!({"generation": 1}),
            json!({"wake_id": "w"}),
            json!({"wake_id": "w", "generation": "1"}),
            json!({"wake_id": "w", "generation": 1, "done": "yes"}),
            json!({"wake_id": "w", "generation": 1, "acks": {}}),
            json!({"wake_id": "w", "generation": 1, "acks": [{"stream": "a"}]}),
        ] {
            assert_eq!(parse_request(&bad).unwrap_err().code, ErrorCode::InvalidRequest, "{bad}");
        }
    }

    #[test]
    fn ack_validation() {
        let l = links();
        let ok = validate_acks(
            &[ack("a", &Offset(7).to_string()), ack("a", &Offset(6).to_string())],
            &l,
        );
        assert_eq!(ok.unwrap(), [("a".to_owned(), Offset(7))]);
        assert!(validate_acks(&[ack("a", &Offset(5).to_string())], &l).is_ok());
        assert!(validate_acks(&[ack("a", &Offset(10).to_string())], &l).is_ok());
        for bad in [
            ack("zzz", &Offset(0).to_string()),
            ack("a", "-1"),
            ack("a", "now"),
            ack("a", &Offset(4).to_string()),
            ack("a", &Offset(11).to_string()),
            ack("b", &Offset(1).to_string()),
        ] {
            let e =
                validate_acks(&[ack("a", &Offset(8).to_string()), bad.clone()], &l).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidOffset, "{bad:?}");
        }
    }

    #[test]
    fn backoff() {
        assert_eq!(retry_delay_ms(1, 1.0), 1000);
        assert_eq!(retry_delay_ms(2, 1.0), 2000);
        assert_eq!(retry_delay_ms(7, 1.0), 60_000);
        assert_eq!(retry_delay_ms(i32::MAX, 1.2), 72_000);
        assert_eq!(retry_delay_ms(0, 0.0), 800);
        assert_eq!(retry_delay_ms(-5, 1.0), 1000);
    }
}
