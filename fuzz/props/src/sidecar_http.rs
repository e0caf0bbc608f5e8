//! Request headers and query parameters the sidecar parses.

use ds_core::{Offset, ReadFrom};
use ds_sidecar::protocol::cursor;
use ds_sidecar::protocol::headers::{self, Fork};
use ds_sidecar::protocol::query::{Live, ReadParams};
use ds_sidecar::protocol::time;
use percent_encoding::percent_decode_str;

use crate::text;

/// How the router decodes a request path (axum's `Path` extractor decodes
/// with `percent_encoding`: a malformed escape stays literal, the result
/// must be UTF-8).
pub fn router_decode(raw: &str) -> Option<String> {
    percent_decode_str(raw).decode_utf8().ok().map(|s| s.into_owned())
}

/// Input: a presence mask byte, then `\n`-separated values of Stream-TTL,
/// Stream-Expires-At, Producer-Id, -Epoch, -Seq, Stream-Forked-From,
/// Stream-Fork-Offset, Stream-Fork-Sub-Offset. Every accepted number is the
/// canonical text of its value, and a fork source is the path the router
/// would have decoded from the same text (so a stream is forked from the
/// path it was created at).
pub fn headers(data: &[u8]) {
    let Some((&mask, rest)) = data.split_first() else { return };
    let Some(rest) = text(rest) else { return };
    let mut values = rest.split('\n');
    let mut field = |bit: u8| values.next().filter(|_| mask & (1 << bit) != 0);
    let (ttl, expires_at) = (field(0), field(1));
    let (id, epoch, seq) = (field(2), field(3), field(4));
    let (from, fork_offset, sub_offset) = (field(5), field(6), field(7));

    if let Ok((t, e)) = headers::parse_expiry(ttl, expires_at) {
        assert!(t.is_none() || e.is_none());
        if let Some(t) = t {
            assert_eq!(Some(t.to_string().as_str()), ttl, "Stream-TTL is canonical");
        }
        if let Some(e) = e {
            assert!(time::is_rfc3339(e) && e.is_ascii() && e.len() >= 20);
        }
    }
    if let Ok(Some(p)) = headers::parse_producer(id, epoch, seq) {
        assert_eq!(epoch.and_then(|e| e.parse::<i64>().ok()), Some(p.epoch));
        assert!(p.seq >= 0 && p.seq <= ds_core::limits::MAX_PRODUCER_NUMBER);
        assert_eq!(Some(p.id.as_str()), id);
    }
    match headers::parse_fork(from, fork_offset, sub_offset) {
        Ok(Some(Fork { source, offset, sub_offset: n })) => {
            let from = from.expect("a fork has a source");
            let raw = from.split_once("/v1/stream/").map_or(from.trim_start_matches('/'), |x| x.1);
            assert_eq!(
                router_decode(raw).as_deref(),
                Some(source.as_str()),
                "Stream-Forked-From {from:?} decodes unlike the router"
            );
            assert!(!source.is_empty());
            if let Some(o) = offset {
                assert_eq!(Offset::parse(&o).map(|x| x.to_string()), Ok(o));
            }
            assert_eq!(
                n.to_string(),
                sub_offset.unwrap_or("0"),
                "Stream-Fork-Sub-Offset is canonical"
            );
        }
        Ok(None) => assert!(from.is_none() && fork_offset.is_none() && sub_offset.is_none()),
        Err(_) => {}
    }
}

/// Input: a raw query string (decoded as the server's `Query` extractor
/// does). An accepted read names where it starts exactly as
/// `ReadFrom::parse` does, live modes always carry an offset, and the
/// response cursor never goes back.
pub fn query(data: &[u8]) {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(data).into_owned().collect();
    let offsets = pairs.iter().filter(|(k, _)| k == "offset").count();
    if let Ok(params) = ReadParams::parse(&pairs) {
        assert!(offsets <= 1);
        assert_eq!(ReadFrom::parse(Some(&params.offset)), Ok(params.from));
        assert!(params.live == Live::No || offsets == 1);
        let current = u64::from(data.len() as u32) * 1_000;
        let jitter = 1 + u64::from(data.first().copied().unwrap_or(0)) * 14;
        let next = cursor::response_cursor(params.cursor.as_deref(), current, jitter);
        assert!(next >= current, "the cursor never goes back");
        if let Some(c) = params.cursor.as_deref().and_then(|c| c.parse::<u64>().ok()) {
            assert!(c < current || next > c || c == u64::MAX, "an echoed cursor moves on");
        }
    }
}
