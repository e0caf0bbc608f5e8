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

/// Default of [`Limits::max_depth`]: the deepest nesting serde_json's default
/// parser accepts (127 levels), so every read stays parseable by it.
pub const DEFAULT_MAX_DEPTH: usize = 127;
/// Largest configurable [`Limits::max_depth`].
pub const MAX_MAX_DEPTH: usize = 1024;
/// Default of [`Limits::max_messages`].
pub const DEFAULT_MAX_MESSAGES: usize = 100_000;

/// Bounds on one JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of arrays and objects as a read returns a message:
    /// the message's own depth plus the array a read wraps messages in. For
    /// an array body (flattened one level) that is the body's own depth; a
    /// scalar message as read (`[1]`) has depth 1.
    pub max_depth: usize,
    /// Most messages one body may hold (elements of a top-level array).
    pub max_messages: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: DEFAULT_MAX_DEPTH, max_messages: DEFAULT_MAX_MESSAGES }
    }
}

/// Splits a JSON request body into the compact messages it stores. Checks
/// the nesting depth first, without recursion (a 100,000-deep body costs one
/// pass over its bytes), then stops at the first message past the limit, so
/// neither bound can be used to make the backend allocate in proportion.
pub fn split_messages(body: &[u8], purpose: Purpose, limits: Limits) -> Result<Vec<Vec<u8>>> {
    let text =
        std::str::from_utf8(body).map_err(|_| Error::InvalidUtf8("application/json".into()))?;
    let top_is_array = text.trim_start().starts_with('[');
    // A read wraps messages in one array: an array body's own array plays
    // that part, any other body gains a level.
    let allowed = if top_is_array { limits.max_depth } else { limits.max_depth.saturating_sub(1) };
    if nesting_exceeds(text.as_bytes(), allowed) {
        return Err(Error::JsonTooDeep { max: limits.max_depth });
    }
    let value: &RawValue =
        serde_json::from_str(text).map_err(|e| Error::InvalidJson(e.to_string()))?;
    let raw = value.get();
    if !raw.starts_with('[') {
        return Ok(vec![compact(raw)]);
    }
    let too_many = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(raw);
    let items = serde::Deserializer::deserialize_seq(
        &mut de,
        Elements { max: limits.max_messages, too_many: &too_many },
    )
    .map_err(|e| {
        if too_many.get() {
            Error::TooManyMessages { max: limits.max_messages }
        } else {
            Error::InvalidJson(e.to_string())
        }
    })?;
    if items.is_empty() && purpose == Purpose::Append {
        return Err(Error::EmptyJsonArray);
    }
    Ok(items)
}

/// Whether arrays and objects in valid-or-not JSON text nest deeper than
/// `max`. One pass, constant memory; brackets inside strings do not count.
fn nesting_exceeds(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// The elements of a top-level array, compacted one by one; fails (setting
/// `too_many`) at element `max + 1` instead of collecting them all.
struct Elements<'a> {
    max: usize,
    too_many: &'a std::cell::Cell<bool>,
}

impl<'de> serde::de::Visitor<'de> for Elements<'_> {
    type Value = Vec<Vec<u8>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<&RawValue>()? {
            if out.len() == self.max {
                self.too_many.set(true);
                return Err(serde::de::Error::custom("too many messages"));
            }
            out.push(compact(item.get()));
        }
        Ok(out)
    }
}

/// Removes whitespace outside string literals from valid JSON text.
fn compact(json: &str) -> Vec<u8> {
    let mut out = String::with_capacity(json.len());
    compact_into(&mut out, json);
    out.into_bytes()
}

/// Appends valid JSON text `json` to `out` without the whitespace outside
/// its string literals: the form messages are stored in.
pub fn compact_into(out: &mut String, json: &str) {
    let bytes = json.as_bytes();
    let (mut in_string, mut escaped) = (false, false);
    // Copies runs of kept bytes at once; only whitespace outside strings
    // ends a run. Runs end at ASCII bytes, so each is whole UTF-8.
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push_str(&json[run..i]);
            run = i + 1;
        } else {
            in_string = b == b'"';
        }
    }
    out.push_str(&json[run..]);
}

/// Checks one message the extension built itself (compact, valid JSON, not
/// an array of messages) against the depth limit `split_messages` applies
/// to a body of that one message.
pub fn check_built_message(message: &str, limits: Limits) -> Result<()> {
    if nesting_exceeds(message.as_bytes(), limits.max_depth.saturating_sub(1)) {
        return Err(Error::JsonTooDeep { max: limits.max_depth });
    }
    Ok(())
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
        split_messages(body.as_bytes(), Purpose::Append, Limits::default())
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
        assert_eq!(
            split_messages(b"[]", Purpose::Create, Limits::default()).unwrap(),
            Vec::<Vec<u8>>::new()
        );
    }

    #[test]
    fn rejects_invalid() {
        for bad in ["", "{", "[1,]", "{'a':1}", "1 2", "[1] x", "nul"] {
            assert!(matches!(split(bad), Err(Error::InvalidJson(_))), "{bad:?}");
        }
        assert!(matches!(
            split_messages(b"\"\xff\"", Purpose::Append, Limits::default()),
            Err(Error::InvalidUtf8(_))
        ));
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    fn limits(max_depth: usize, max_messages: usize) -> Limits {
        Limits { max_depth, max_messages }
    }

    #[test]
    fn depth_is_counted_as_read_back() {
        let l = limits(3, 10);
        // An array body is flattened once and re-wrapped by reads: its own depth.
        assert!(split_messages(nested(3).as_bytes(), Purpose::Append, l).is_ok());
        assert_eq!(
            split_messages(nested(4).as_bytes(), Purpose::Append, l),
            Err(Error::JsonTooDeep { max: 3 })
        );
        // Any other body gains the read's array.
        assert!(split_messages(br#"{"a":{"b":1}}"#, Purpose::Append, l).is_ok());
        assert_eq!(
            split_messages(br#"{"a":{"b":{"c":1}}}"#, Purpose::Append, l),
            Err(Error::JsonTooDeep { max: 3 })
        );
        // Brackets inside strings do not count, escaped quotes included.
        assert!(split_messages(br#"["[[[[\"{{{{"]"#, Purpose::Append, l).is_ok());
        // Depth 1: scalar messages only.
        assert!(split_messages(b"[1,2]", Purpose::Append, limits(1, 10)).is_ok());
        assert!(split_messages(b"1", Purpose::Append, limits(1, 10)).is_ok());
        assert!(split_messages(b"[[1]]", Purpose::Append, limits(1, 10)).is_err());
        assert!(Error::JsonTooDeep { max: 3 }.to_string().contains("maximum of 3 levels"));
    }

    #[test]
    fn a_100000_deep_body_is_rejected_without_recursion() {
        // On a small thread stack: a recursive check would overflow it.
        let body = nested(100_000);
        let result = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || split_messages(body.as_bytes(), Purpose::Append, Limits::default()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(result, Err(Error::JsonTooDeep { max: DEFAULT_MAX_DEPTH }));
    }

    #[test]
    fn the_default_depth_keeps_reads_parseable_by_serde_json() {
        // serde_json's default parser stops at 128 levels; reads must stay below.
        assert!(serde_json::from_str::<serde_json::Value>(&nested(127)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(128)).is_err());
        let deepest = format!("[{}]", nested(DEFAULT_MAX_DEPTH - 1));
        let messages = split_messages(deepest.as_bytes(), Purpose::Append, Limits::default())
            .expect("the deepest accepted body");
        let read = join_messages(messages.iter().map(Vec::as_slice));
        assert!(serde_json::from_slice::<serde_json::Value>(&read).is_ok());
        let object = format!("{{\"a\":{}}}", nested(DEFAULT_MAX_DEPTH - 2));
        let messages = split_messages(object.as_bytes(), Purpose::Append, Limits::default())
            .expect("the deepest accepted object");
        let read = join_messages(messages.iter().map(Vec::as_slice));
        assert!(serde_json::from_slice::<serde_json::Value>(&read).is_ok());
        let deeper = format!("{{\"a\":{}}}", nested(DEFAULT_MAX_DEPTH - 1));
        assert!(split_messages(deeper.as_bytes(), Purpose::Append, Limits::default()).is_err());
    }

    #[test]
    fn message_count_is_capped_before_collecting() {
        let body = format!("[{}1]", "1,".repeat(9));
        assert_eq!(
            split_messages(body.as_bytes(), Purpose::Append, limits(10, 10)).unwrap().len(),
            10
        );
        assert_eq!(
            split_messages(body.as_bytes(), Purpose::Append, limits(10, 9)),
            Err(Error::TooManyMessages { max: 9 })
        );
        // 8 M messages in 16 MiB: refused at the 100,001st.
        let huge = format!("[{}1]", "1,".repeat(8 << 20));
        assert_eq!(
            split_messages(huge.as_bytes(), Purpose::Append, Limits::default()),
            Err(Error::TooManyMessages { max: DEFAULT_MAX_MESSAGES })
        );
        // A single non-array message is one message.
        assert!(split_messages(b"{}", Purpose::Append, limits(10, 1)).is_ok());
        // Invalid JSON stays invalid JSON, whatever the count.
        assert!(matches!(
            split_messages(b"[1,2,", Purpose::Append, limits(10, 1)),
            Err(Error::InvalidJson(_))
        ));
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
            prop_assert_eq!(split_messages(&joined, Purpose::Append, Limits::default()).unwrap(), msgs);
        }
    }
}
