//! Stream registries: JSON streams that list the streams under a path prefix
//! as State Protocol change messages (type `stream`, key = path).
//!
//! A registry of prefix `p` (`""` for every stream, or a prefix ending in
//! `/`) lives at `p + "__registry__"`. A stream's change goes to the
//! registries of the prefixes of its path that are registered; only the
//! first [`MAX_PREFIX_DEPTH`] segments can be registered, so one change
//! makes at most `MAX_PREFIX_DEPTH + 1` registry appends. Paths whose last
//! segment is `__registry__` are reserved for registries and never listed.

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::limits;

/// The last segment of every registry's path.
pub const REGISTRY_NAME: &str = "__registry__";

/// Most segments a registered prefix may have (`a/b/c/d/` has four).
pub const MAX_PREFIX_DEPTH: usize = 4;

/// The State Protocol entity type of every entry.
pub const ENTITY_TYPE: &str = "stream";

/// Checks a prefix given to `ds.create_registry` / `ds.drop_registry`.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let invalid = |why: &str| Err(Error::InvalidRegistry(format!("prefix {prefix:?} {why}")));
    if prefix.is_empty() {
        return Ok(());
    }
    if !prefix.ends_with('/') {
        return invalid("must be empty (every stream) or end with '/'");
    }
    if prefix.contains('*') {
        return invalid("must not contain '*' (it is a path prefix, not a pattern)");
    }
    let segments: Vec<&str> = prefix[..prefix.len() - 1].split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return invalid("must not contain an empty segment");
    }
    if segments.contains(&REGISTRY_NAME) {
        return invalid("must not contain the reserved segment __registry__");
    }
    if segments.len() > MAX_PREFIX_DEPTH {
        return invalid(&format!("has {} segments; at most {MAX_PREFIX_DEPTH}", segments.len()));
    }
    limits::validate_path(&registry_path(prefix))
        .map_err(|e| Error::InvalidRegistry(format!("prefix {prefix:?}: {e}")))
}

/// Where the registry of `prefix` lives.
pub fn registry_path(prefix: &str) -> String {
    format!("{prefix}{REGISTRY_NAME}")
}

/// Whether `path` is reserved for a registry (its last segment is
/// `__registry__`), whether or not one is registered there.
pub fn is_registry_path(path: &str) -> bool {
    path.rsplit('/').next() == Some(REGISTRY_NAME)
}

/// The prefixes whose registries may list `path`: `""`, then each prefix
/// ending at one of its first [`MAX_PREFIX_DEPTH`] slashes. None for a
/// registry path (registries are not listed).
pub fn candidate_prefixes(path: &str) -> Vec<&str> {
    if is_registry_path(path) {
        return Vec::new();
    }
    let slashes = path.match_indices('/').map(|(i, _)| &path[..=i]);
    std::iter::once("").chain(slashes.take(MAX_PREFIX_DEPTH)).collect()
}

/// What a registry says about a live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    pub content_type: String,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    pub ttl_seconds: Option<i64>,
    /// Microseconds since the Unix epoch.
    pub expires_at: Option<i64>,
    pub forked_from: Option<String>,
}

/// One change of the set of streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created (or forked).
    Insert(StreamEntry),
    /// Deleted (also soft-deleted: kept only for its forks), or expired.
    Delete,
}

/// The change message (compact JSON) of `change` to the stream at `path`,
/// made by transaction `txid` at `timestamp` (microseconds since the Unix
/// epoch).
pub fn change_message(path: &str, change: &Change, txid: u64, timestamp: i64) -> String {
    let mut message = Map::new();
    message.insert("type".into(), ENTITY_TYPE.into());
    message.insert("key".into(), path.into());
    let operation = match change {
        Change::Insert(entry) => {
            message.insert(
                "value".into(),
                json!({
                    "content_type": entry.content_type,
                    "created_at": rfc3339(entry.created_at),
                    "ttl_seconds": entry.ttl_seconds,
                    "expires_at": entry.expires_at.map(rfc3339),
                    "forked_from": entry.forked_from,
                }),
            );
            "insert"
        }
        Change::Delete => "delete",
    };
    message.insert(
        "headers".into(),
        json!({
            "operation": operation,
            "txid": txid.to_string(),
            "timestamp": rfc3339(timestamp),
        }),
    );
    Value::Object(message).to_string()
}

/// RFC 3339 in UTC with microseconds, e.g. `2026-01-02T03:04:05.000006Z`.
pub fn rfc3339(unix_micros: i64) -> String {
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (day_secs / 3600, day_secs / 60 % 60, day_secs % 60);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}Z")
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_empty_or_end_with_a_slash() {
        for good in ["", "acme/", "acme/eu/", "a/b/c/d/"] {
            assert!(validate_prefix(good).is_ok(), "{good:?}");
        }
        for bad in
            ["acme", "/", "acme//", "a*/", "__registry__/", "x/__registry__/", "a/b/c/d/e/", "a\n/"]
        {
            let err = validate_prefix(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidRegistry(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn registry_paths_are_reserved_at_any_depth() {
        assert_eq!(registry_path(""), "__registry__");
        assert_eq!(registry_path("acme/"), "acme/__registry__");
        assert!(is_registry_path("__registry__"));
        assert!(is_registry_path("acme/__registry__"));
        assert!(is_registry_path("acme/deep/__registry__"));
        assert!(!is_registry_path("acme/__registry__x"));
        assert!(!is_registry_path("__registry__/x"));
    }

    #[test]
    fn candidates_stop_at_the_maximum_depth() {
        assert_eq!(candidate_prefixes("x"), vec![""]);
        assert_eq!(candidate_prefixes("acme/orders"), vec!["", "acme/"]);
        assert_eq!(
            candidate_prefixes("a/b/c/d/e/f/g"),
            vec!["", "a/", "a/b/", "a/b/c/", "a/b/c/d/"]
        );
        assert!(candidate_prefixes("acme/__registry__").is_empty());
        // Every candidate of a path is a prefix a registry can exist for.
        for p in candidate_prefixes("a/b/c/d/e/f/g") {
            validate_prefix(p).unwrap();
        }
    }

    #[test]
    fn insert_and_delete_messages_follow_the_state_protocol() {
        let entry = StreamEntry {
            content_type: "application/json".into(),
            created_at: 1_700_000_000_000_001,
            ttl_seconds: Some(60),
            expires_at: None,
            forked_from: Some("acme/src".into()),
        };
        let insert = change_message("acme/a", &Change::Insert(entry), 42, 0);
        let v: Value = serde_json::from_str(&insert).unwrap();
        assert_eq!(v["type"], "stream");
        assert_eq!(v["key"], "acme/a");
        assert_eq!(v["value"]["content_type"], "application/json");
        assert_eq!(v["value"]["created_at"], "2023-11-14T22:13:20.000001Z");
        assert_eq!(v["value"]["ttl_seconds"], 60);
        assert_eq!(v["value"]["expires_at"], Value::Null);
        assert_eq!(v["value"]["forked_from"], "acme/src");
        assert_eq!(v["headers"]["operation"], "insert");
        assert_eq!(v["headers"]["txid"], "42");
        assert_eq!(v["headers"]["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert!(v.get("old_value").is_none());

        let delete: Value =
            serde_json::from_str(&change_message("a\"b", &Change::Delete, 7, -1)).unwrap();
        assert_eq!(delete["key"], "a\"b");
        assert!(delete.get("value").is_none());
        assert_eq!(delete["headers"]["operation"], "delete");
        assert_eq!(delete["headers"]["timestamp"], "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(rfc3339(4_107_542_399_000_000), "2100-02-28T23:59:59.000000Z");
        assert_eq!(rfc3339(253_402_300_799_999_999), "9999-12-31T23:59:59.999999Z");
    }

    proptest::proptest! {
        #[test]
        fn rfc3339_is_ordered_like_time(a in -62_135_596_800_000_000i64..253_402_300_799_999_999,
                                        b in -62_135_596_800_000_000i64..253_402_300_799_999_999) {
            // Fixed-width text (years 0001-9999) sorts like the instants.
            proptest::prop_assert_eq!(a.cmp(&b), rfc3339(a).cmp(&rfc3339(b)));
        }
    }
}
