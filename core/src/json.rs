//! JSON mode framing (§9.1): validate, flatten one array level, compact.
//!
//! Each message is stored as its compact JSON text (insignificant whitespace
//! removed, everything else byte-for-byte as sent, so key order and number
//! spelling survive). A read joins stored messages into one array without
//! parsing them again.

use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// Why a body is being split: an append rejects `[]`, a create accepts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Append,
    Create,
}

/// Splits a JSON request body into the compact messages it stores.
pub fn split_messages(body: &[u8], purpose: Purpose) -> Result<Vec<Vec<u8>>> {
    let text =
        std::str::from_utf8(body).map_err(|_| Error::InvalidUtf8("application/json".into()))?;
    let value: &RawValue =
        serde_json::from_str(text).map_err(|e| Error::InvalidJson(e.to_string()))?;
    let raw = value.get();
    if !raw.starts_with('[') {
        return Ok(vec![compact(raw)]);
    }
    let items: Vec<&RawValue> =
        serde_json::from_str(raw).map_err(|e| Error::InvalidJson(e.to_string()))?;
    if items.is_empty() && purpose == Purpose::Append {
        return Err(Error::EmptyJsonArray);
    }
    Ok(items.into_iter().map(|item| compact(item.get())).collect())
}

/// Removes whitespace outside string literals from valid JSON text.
fn compact(json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in json.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            in_string = b == b'"';
            out.push(b);
        }
    }
    out
}

/// Joins stored messages into the JSON array a read returns.
pub fn join_messages<'a>(messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = vec![b'['];
    for (i, m) in messages.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(body: &str) -> Result<Vec<String>> {
        split_messages(body.as_bytes(), Purpose::Append)
            .map(|v| v.into_iter().map(|m| String::from_utf8(m).unwrap()).collect())
    }

    #[test]
    fn flattens_exactly_one_level() {
        assert_eq!(split(r#"{"event": "created"}"#).unwrap(), [r#"{"event":"created"}"#]);
        assert_eq!(split(r#"[{"a":1}, {"b":2}]"#).unwrap(), [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert_eq!(split("[[1,2], [3,4]]").unwrap(), ["[1,2]", "[3,4]"]);
        assert_eq!(split("[[[1,2,3]]]").unwrap(), ["[[1,2,3]]"]);
        assert_eq!(split(" 42 ").unwrap(), ["42"]);
        assert_eq!(split(r#""a b""#).unwrap(), [r#""a b""#]);
    }

    #[test]
    fn keeps_string_contents_and_key_order() {
        assert_eq!(
            split(r#"{ "z" : "a \" b\\", "a" : [ 1 , 2.50 ] }"#).unwrap(),
            [r#"{"z":"a \" b\\","a":[1,2.50]}"#]
        );
    }

    #[test]
    fn empty_array_only_on_create() {
        assert_eq!(split("[]"), Err(Error::EmptyJsonArray));
        assert_eq!(split(" [ ] "), Err(Error::EmptyJsonArray));
        assert_eq!(split_messages(b"[]", Purpose::Create).unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn rejects_invalid() {
        for bad in ["", "{", "[1,]", "{'a':1}", "1 2", "[1] x", "nul"] {
            assert!(matches!(split(bad), Err(Error::InvalidJson(_))), "{bad:?}");
        }
        assert!(matches!(split_messages(b"\"\xff\"", Purpose::Append), Err(Error::InvalidUtf8(_))));
    }

    #[test]
    fn joins() {
        assert_eq!(join_messages([]), b"[]");
        assert_eq!(join_messages([&b"1"[..], b"{}"]), b"[1,{}]");
    }

    proptest! {
        /// Splitting a joined array gives back the same messages.
        #[test]
        fn split_of_join_is_identity(xs in proptest::collection::vec(any::<(i32, String)>(), 1..20)) {
            let msgs: Vec<Vec<u8>> = xs.iter()
                .map(|(n, s)| serde_json::to_vec(&serde_json::json!({"n": n, "s": s})).unwrap())
                .collect();
            let joined = join_messages(msgs.iter().map(Vec::as_slice));
            prop_assert_eq!(split_messages(&joined, Purpose::Append).unwrap(), msgs);
        }
    }
}
