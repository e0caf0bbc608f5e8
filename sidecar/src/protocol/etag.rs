//! Entity tags of catch-up reads and `If-None-Match` matching (§10).
//!
//! The tag is `"{stream_id}:{start}:{end}"`, with `:c` appended when the
//! response carries `Stream-Closed`, so closing a stream changes the tag of
//! the tail read even though no byte changed.

/// Formats the (strong) entity tag of a read, quotes included.
pub fn format(stream_id: i64, start: &str, end: &str, closed: bool) -> String {
    let suffix = if closed { ":c" } else { "" };
    format!("\"{stream_id}:{start}:{end}{suffix}\"")
}

/// Whether an `If-None-Match` header value matches `etag` (weak comparison,
/// as RFC 9110 §13.1.2 prescribes for this header).
pub fn if_none_match(header: &str, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let wanted = opaque(etag);
    header
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || opaque(candidate) == wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(
            format(7, "-1", "0000000000000000_0000000000000004", false),
            "\"7:-1:0000000000000000_0000000000000004\""
        );
        assert_eq!(format(7, "a", "b", true), "\"7:a:b:c\"");
    }

    #[test]
    fn matching() {
        let tag = format(1, "-1", "x", false);
        assert!(if_none_match(&tag, &tag));
        assert!(if_none_match(&format!("\"other\", {tag}"), &tag));
        assert!(if_none_match(&format!("W/{tag}"), &tag));
        assert!(if_none_match("*", &tag));
        assert!(!if_none_match("\"wrong-etag\"", &tag));
        assert!(!if_none_match(&format(1, "-1", "x", true), &tag));
        assert!(!if_none_match("", &tag));
    }
}
