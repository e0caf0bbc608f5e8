//! Wire and storage formats of ds-core: offsets, segments, notification
//! payloads, JSON bodies.

use ds_core::json::{self, Limits, Purpose};
use ds_core::notification::{self, Announcement};
use ds_core::{Offset, ReadFrom, segment as seg};

use crate::text;

/// `Offset::parse` accepts exactly the canonical text (parse∘format is the
/// identity on what it accepts), and `ReadFrom::parse` adds only `-1`/`now`.
pub fn offset(data: &[u8]) {
    let Some(token) = text(data) else { return };
    if let Ok(o) = Offset::parse(token) {
        assert_eq!(o.to_string(), token, "an accepted offset is canonical");
        assert!(o.0 <= 9_999_999_999_999_999);
        assert_eq!(Offset::from_i64(o.as_i64()), o);
    }
    match ReadFrom::parse(Some(token)) {
        Ok(ReadFrom::Start) => assert_eq!(token, "-1"),
        Ok(ReadFrom::Now) => assert_eq!(token, "now"),
        Ok(ReadFrom::At(o)) => {
            assert_eq!(o.to_string(), token);
            assert!(ReadFrom::At(o).resolve(Offset(5)) <= Offset(5));
        }
        Err(e) => assert!(Offset::parse(token).is_err() && !e.to_string().is_empty()),
    }
}

/// Decoding arbitrary bytes either fails or gives frames that encode back
/// to exactly those bytes; encoding frames cut from the input decodes back
/// to them.
pub fn segment(data: &[u8]) {
    if let Ok(frames) = seg::decode(data) {
        assert_eq!(seg::encode(frames.iter().copied()), data, "decode is injective");
    }
    let frames: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    let packed = seg::encode(frames.iter().copied());
    assert_eq!(seg::decode(&packed).expect("an encoded segment decodes"), frames);
}

/// Anyone with CONNECT can NOTIFY: a payload never panics the parser, every
/// non-empty line gives exactly one announcement, and each announcement's
/// own line parses back to it; packing keeps every line and the limit.
pub fn notification(data: &[u8]) {
    let payload = String::from_utf8_lossy(data);
    let parsed = notification::parse(&payload);
    assert_eq!(parsed.len(), payload.split('\n').filter(|l| !l.is_empty()).count());
    let lines: Vec<String> = parsed.iter().map(Announcement::line).collect();
    for (a, line) in parsed.iter().zip(&lines) {
        assert_eq!(notification::parse(line), vec![a.clone()], "line {line:?}");
    }
    let max = 64 + usize::from(data.first().copied().unwrap_or(0));
    let packed = notification::pack(&lines, max);
    for p in &packed {
        assert!(p.len() <= max || !p.contains('\n'), "a payload over the limit holds one line");
    }
    let reparsed: Vec<Announcement> = packed.iter().flat_map(|p| notification::parse(p)).collect();
    assert_eq!(reparsed, parsed);
}

/// A JSON body either fails or splits into messages that are each valid
/// compact JSON; joined (as a read returns them) they are the body's value
/// (an array body) or `[body]`, still parseable by serde_json's default
/// depth limit, and splitting the join gives the same messages.
pub fn json(data: &[u8]) {
    let (limits, body) = match data.split_first() {
        Some((&b, rest)) if b & 0x80 != 0 => (
            Limits { max_depth: usize::from(b & 0x7f), max_messages: 1 + usize::from(b & 7) },
            rest,
        ),
        _ => (Limits::default(), data),
    };
    for purpose in [Purpose::Append, Purpose::Create] {
        let Ok(messages) = json::split_messages(body, purpose, limits) else { continue };
        assert!(messages.len() <= limits.max_messages);
        assert!(purpose == Purpose::Create || !messages.is_empty());
        for m in &messages {
            serde_json::from_slice::<&serde_json::value::RawValue>(m).expect("a message is JSON");
            assert!(!m.starts_with(b" ") && !m.ends_with(b" "), "messages are compact");
        }
        let joined = json::join_messages(messages.iter().map(Vec::as_slice));
        if limits.max_depth <= json::DEFAULT_MAX_DEPTH {
            // (A number out of f64's range is valid JSON that Value refuses.)
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&joined) {
                assert!(!e.to_string().contains("recursion"), "a read is too deep: {e}");
            }
        }
        if let (Ok(read), Ok(sent)) = (
            serde_json::from_slice::<serde_json::Value>(&joined),
            serde_json::from_slice::<serde_json::Value>(body),
        ) {
            let expected =
                if sent.is_array() { sent } else { serde_json::Value::Array(vec![sent]) };
            assert_eq!(read, expected, "flattening keeps the value");
        }
        if !messages.is_empty() {
            let again = json::split_messages(&joined, Purpose::Append, Limits::default());
            if limits.max_depth <= json::DEFAULT_MAX_DEPTH {
                assert_eq!(again.expect("a read splits again"), messages);
            }
        }
    }
}
