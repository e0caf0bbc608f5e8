//! Change messages of the Durable Streams State Protocol, built from rows.
//!
//! Change capture (`ds.capture`) turns a table's row images, as Postgres'
//! `row_to_json` prints them, into State Protocol messages:
//! `{"type","key","value","old_value","headers":{"operation","txid","timestamp"}}`
//! and the control messages `snapshot-start`, `snapshot-end` and `reset`.
//! Values are copied as raw JSON text, never re-encoded, so numbers keep
//! every digit Postgres printed (a `numeric` of 40 digits stays exact).

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

use crate::error::Error;

/// What happened to a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Update,
    Delete,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

/// A control message (State Protocol §4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    SnapshotStart,
    SnapshotEnd,
    Reset,
}

/// `{"headers":{"control":...}}`.
pub fn control_message(control: Control) -> String {
    let name = match control {
        Control::SnapshotStart => "snapshot-start",
        Control::SnapshotEnd => "snapshot-end",
        Control::Reset => "reset",
    };
    format!(r#"{{"headers":{{"control":"{name}"}}}}"#)
}

/// One change: `value` and `old_value` are JSON text (a row image).
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub entity_type: &'a str,
    pub key: &'a str,
    pub operation: Operation,
    pub value: Option<&'a str>,
    pub old_value: Option<&'a str>,
    /// The writing transaction's 64-bit id (`pg_current_xact_id()`).
    pub txid: u64,
    /// When the change was made, as an RFC 3339 text.
    pub timestamp: &'a str,
}

/// The change message's JSON text. A delete carries no `value`.
pub fn change_message(c: &Change<'_>) -> String {
    let mut out = String::with_capacity(
        96 + c.key.len() + c.value.map_or(0, str::len) + c.old_value.map_or(0, str::len),
    );
    out.push_str(r#"{"type":"#);
    push_json_string(&mut out, c.entity_type);
    out.push_str(r#","key":"#);
    push_json_string(&mut out, c.key);
    if let (Some(value), false) = (c.value, c.operation == Operation::Delete) {
        out.push_str(r#","value":"#);
        out.push_str(value);
    }
    if let Some(old) = c.old_value {
        out.push_str(r#","old_value":"#);
        out.push_str(old);
    }
    out.push_str(r#","headers":{"operation":""#);
    out.push_str(c.operation.name());
    out.push_str(r#"","txid":""#);
    out.push_str(&c.txid.to_string());
    out.push_str(r#"","timestamp":"#);
    push_json_string(&mut out, c.timestamp);
    out.push_str("}}");
    out
}

/// A row image's columns in their order, each value as raw JSON text.
#[derive(Debug)]
pub struct Row<'a> {
    columns: Vec<(String, &'a RawValue)>,
}

impl<'a> Row<'a> {
    /// Parses `row_to_json` output (a JSON object).
    pub fn parse(json: &'a str) -> Result<Self, Error> {
        let mut de = serde_json::Deserializer::from_str(json);
        let columns = de
            .deserialize_map(Columns(std::marker::PhantomData))
            .map_err(|e| Error::InvalidJson(format!("row image: {e}")))?;
        de.end().map_err(|e| Error::InvalidJson(format!("row image: {e}")))?;
        Ok(Row { columns })
    }

    fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The entity key from the key columns: one column gives its value
    /// (a JSON string's contents, any other value's JSON text); several give
    /// a JSON array of their values. A missing column is an error (a key
    /// column dropped or renamed away after `ds.capture`).
    pub fn key(&self, key_columns: &[&str]) -> Result<String, Error> {
        let value = |name: &str| {
            self.get(name).ok_or_else(|| {
                Error::InvalidArguments(format!("key column {name:?} is not in the row"))
            })
        };
        match key_columns {
            [] => Err(Error::InvalidArguments("no key columns".into())),
            [one] => Ok(scalar_text(value(one)?)),
            many => {
                let mut out = String::from("[");
                for (i, name) in many.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(value(name)?.get());
                }
                out.push(']');
                Ok(out)
            }
        }
    }

    /// The row image with only `columns` (in the row's order), or all of
    /// it when `columns` is None.
    pub fn project(&self, columns: Option<&[&str]>) -> String {
        let mut out = String::from("{");
        let mut first = true;
        for (name, value) in &self.columns {
            if columns.is_some_and(|keep| !keep.contains(&name.as_str())) {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            push_json_string(&mut out, name);
            out.push(':');
            let raw = value.get();
            if raw.starts_with(['{', '[']) {
                // json and jsonb columns print with whitespace; messages are
                // stored compact (as `json::split_messages` stores them).
                crate::json::compact_into(&mut out, raw);
            } else {
                out.push_str(raw);
            }
        }
        out.push('}');
        out
    }
}

/// A JSON string's contents, or any other value's JSON text.
pub fn scalar_text(value: &RawValue) -> String {
    let raw = value.get();
    if !raw.starts_with('"') {
        // Not a string: its JSON text (and no parse error built per row).
        return raw.to_owned();
    }
    serde_json::from_str::<String>(raw).unwrap_or_else(|_| raw.to_owned())
}

struct Columns<'a>(std::marker::PhantomData<&'a ()>);

impl<'de> Visitor<'de> for Columns<'de> {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
            out.push((k, v));
        }
        Ok(out)
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string always serialises"));
}

/// RFC 3339 (UTC, microseconds) of a Postgres timestamp: microseconds since
/// 2000-01-01 00:00:00 UTC.
pub fn rfc3339_from_pg_micros(micros: i64) -> String {
    const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;
    crate::registry::rfc3339(micros.saturating_add(PG_EPOCH_UNIX_MICROS))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: &str = r#"{"id":7,"name":"a \"b\"","n":12345678901234567890.123456789,"j":{"x": [1, 2]},"z":null}"#;

    #[test]
    fn keys_of_one_and_several_columns() {
        let row = Row::parse(ROW).unwrap();
        assert_eq!(row.key(&["id"]).unwrap(), "7");
        assert_eq!(row.key(&["name"]).unwrap(), "a \"b\"");
        assert_eq!(row.key(&["id", "name"]).unwrap(), r#"[7,"a \"b\""]"#);
        assert_eq!(row.key(&["z"]).unwrap(), "null");
        assert!(row.key(&["gone"]).is_err());
        assert!(row.key(&[]).is_err());
    }

    #[test]
    fn projection_keeps_raw_values_and_row_order() {
        let row = Row::parse(ROW).unwrap();
        // Nested json/jsonb values lose their whitespace, strings keep theirs.
        assert_eq!(row.project(None), ROW.replace(r#"{"x": [1, 2]}"#, r#"{"x":[1,2]}"#));
        assert_eq!(
            row.project(Some(&["n", "id"])),
            r#"{"id":7,"n":12345678901234567890.123456789}"#
        );
        assert_eq!(row.project(Some(&[])), "{}");
    }

    #[test]
    fn messages_have_the_state_protocol_shape() {
        let c = Change {
            entity_type: "users",
            key: "7",
            operation: Operation::Update,
            value: Some(r#"{"id":7}"#),
            old_value: Some(r#"{"id":6}"#),
            txid: 42,
            timestamp: "2026-11-27T10:00:00.000000Z",
        };
        let m = change_message(&c);
        let v: serde_json::Value = serde_json::from_str(&m).unwrap();
        assert_eq!(v["type"], "users");
        assert_eq!(v["key"], "7");
        assert_eq!(v["value"]["id"], 7);
        assert_eq!(v["old_value"]["id"], 6);
        assert_eq!(v["headers"]["operation"], "update");
        assert_eq!(v["headers"]["txid"], "42");
        let d = change_message(&Change { operation: Operation::Delete, ..c });
        let v: serde_json::Value = serde_json::from_str(&d).unwrap();
        assert!(v.get("value").is_none());
        assert_eq!(v["headers"]["operation"], "delete");
        assert_eq!(control_message(Control::Reset), r#"{"headers":{"control":"reset"}}"#);
    }

    #[test]
    fn rejects_non_objects() {
        assert!(Row::parse("[1]").is_err());
        assert!(Row::parse("{\"a\":1} x").is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_from_pg_micros(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_from_pg_micros(-1), "1999-12-31T23:59:59.999999Z");
        // 2026-11-27T10:49:51.5Z
        let us = ((9827 * 86_400) + 10 * 3600 + 49 * 60 + 51) * 1_000_000 + 500_000;
        assert_eq!(rfc3339_from_pg_micros(us), "2026-11-27T10:49:51.500000Z");
        assert_eq!(rfc3339_from_pg_micros(59 * 86_400_000_000), "2000-02-29T00:00:00.000000Z");
    }

    /// JSON values as jsonb prints them (whitespace after `,` and `:`),
    /// strings with whitespace and escapes in them.
    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            "[ a\\\\\"{}\\[\\],:\\t\\n]{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(6, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map("[a-c ]{1,3}", inner, 0..4)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn built_messages_are_stored_exactly_as_an_append_would_store_them(
            nested in json_value(), max_depth in 1usize..10,
        ) {
            use crate::json::{Limits, Purpose, check_built_message, split_messages};
            let row = format!(r#"{{"id":1,"s":"x : y","j":{}}}"#, serde_json::to_string_pretty(&nested).unwrap());
            let row = Row::parse(&row).unwrap();
            let value = row.project(None);
            let m = change_message(&Change {
                entity_type: "t", key: "1", operation: Operation::Update,
                value: Some(&value), old_value: Some(&value), txid: 1, timestamp: "t",
            });
            let unlimited = split_messages(m.as_bytes(), Purpose::Append, Limits::default()).unwrap();
            proptest::prop_assert_eq!(unlimited, vec![m.clone().into_bytes()]);
            let limits = Limits { max_depth, ..Limits::default() };
            proptest::prop_assert_eq!(
                check_built_message(&m, limits).is_ok(),
                split_messages(m.as_bytes(), Purpose::Append, limits).is_ok()
            );
        }

        #[test]
        fn any_key_text_round_trips_through_the_message(key in ".*", ty in ".+") {
            let m = change_message(&Change {
                entity_type: &ty, key: &key, operation: Operation::Insert,
                value: Some("{}"), old_value: None, txid: 1, timestamp: "t",
            });
            let v: serde_json::Value = serde_json::from_str(&m).unwrap();
            proptest::prop_assert_eq!(v["key"].as_str().unwrap(), key.as_str());
            proptest::prop_assert_eq!(v["type"].as_str().unwrap(), ty.as_str());
        }
    }
}
