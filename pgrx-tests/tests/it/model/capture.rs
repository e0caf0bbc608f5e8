//! Change capture in the model: a small table `(id int PRIMARY KEY, v int)`
//! per case, written at random while `ds.capture` is on or off, its stream
//! read back as State Protocol messages (without the varying txid and
//! timestamp, and with offsets left out: their lengths vary with them).
//! The model writes the table and the messages the README promises: a
//! snapshot between markers (any row order: the table's scan order), an
//! insert/update/delete per row change, a key change as delete + insert,
//! TRUNCATE as reset, a reset before a new snapshot into a used stream, and
//! writes refused (and undone) while the stream is closed.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::state::{CLOSED, CONFLICT, NOT_FOUND, Res};

const KEYS: i32 = 4;
const UNIQUE_VIOLATION: &str = "23505";

#[derive(Debug, Clone)]
pub enum CapOp {
    Capture,
    Uncapture,
    Insert { id: i32, v: i32 },
    Update { id: i32, v: i32 },
    Move { id: i32, to: i32 },
    Delete { id: i32 },
    Truncate,
    Close,
    Read,
}

pub fn op() -> impl Strategy<Value = CapOp> {
    let key = || 0..KEYS;
    prop_oneof![
        2 => Just(CapOp::Capture),
        1 => Just(CapOp::Uncapture),
        4 => (key(), 0..3).prop_map(|(id, v)| CapOp::Insert { id, v }),
        3 => (key(), 0..3).prop_map(|(id, v)| CapOp::Update { id, v }),
        2 => (key(), key()).prop_map(|(id, to)| CapOp::Move { id, to }),
        2 => key().prop_map(|id| CapOp::Delete { id }),
        1 => Just(CapOp::Truncate),
        1 => Just(CapOp::Close),
        2 => Just(CapOp::Read),
    ]
}

/// The case's table and capture stream, named from its stream paths.
pub fn names(paths: &[String]) -> (String, String) {
    let base = paths[0].trim_end_matches("/s0");
    let table: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    (format!("model_cap_{table}"), format!("{base}/cap"))
}

pub fn setup_sql(paths: &[String]) -> String {
    let (table, _) = names(paths);
    format!("CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL);")
}

pub fn teardown_sql(paths: &[String]) -> String {
    let (table, _) = names(paths);
    format!("DROP TABLE {table};")
}

impl CapOp {
    pub fn sql(&self, paths: &[String]) -> String {
        let (t, path) = names(paths);
        match self {
            CapOp::Capture => format!("SELECT ds.capture('{t}', '{path}') IS NOT NULL;"),
            CapOp::Uncapture => format!("SELECT ds.uncapture('{t}');"),
            CapOp::Insert { id, v } => format!("INSERT INTO {t} VALUES ({id}, {v});"),
            CapOp::Update { id, v } => format!("UPDATE {t} SET v = {v} WHERE id = {id};"),
            CapOp::Move { id, to } => format!("UPDATE {t} SET id = {to} WHERE id = {id};"),
            CapOp::Delete { id } => format!("DELETE FROM {t} WHERE id = {id};"),
            CapOp::Truncate => format!("TRUNCATE {t};"),
            CapOp::Close => format!("SELECT ds.close('{path}') IS NOT NULL;"),
            // Waits (at most 10 s) for the sequencer, then reads.
            CapOp::Read => format!(
                "DO $$ BEGIN FOR i IN 1..1000 LOOP EXIT WHEN NOT EXISTS (SELECT FROM ds.pending); \
                 PERFORM pg_sleep(0.01); END LOOP; END $$; \
                 SELECT coalesce(m -> 'headers' ->> 'control', m -> 'headers' ->> 'operation'), \
                        m ->> 'key', m -> 'value' ->> 'v', m -> 'old_value' ->> 'v' \
                 FROM ds.read('{path}') r, \
                      jsonb_array_elements(('[' || convert_from(r.data, 'UTF8') || ']')::jsonb) m;"
            ),
        }
    }
}

type Row = Vec<Option<String>>;

/// The table, whether it is captured, and its stream (None: not created).
#[derive(Debug, Clone, Default)]
pub struct CapModel {
    rows: BTreeMap<i32, i32>,
    captured: bool,
    stream: Option<(bool, Vec<Row>)>,
}

fn control(name: &str) -> Row {
    vec![Some(name.to_owned()), None, None, None]
}

fn change(op: &str, id: i32, v: Option<i32>, old: Option<i32>) -> Row {
    let s = |x: Option<i32>| x.map(|x| x.to_string());
    vec![Some(op.to_owned()), Some(id.to_string()), s(v), s(old)]
}

impl CapModel {
    pub fn apply(&mut self, op: &CapOp) -> Res {
        match op {
            CapOp::Capture => {
                if self.captured {
                    return Err(CONFLICT.to_owned());
                }
                let (closed, messages) = self.stream.get_or_insert((false, Vec::new()));
                if *closed {
                    // ds.create of the closed stream differs from it.
                    return Err(CONFLICT.to_owned());
                }
                if !messages.is_empty() {
                    messages.push(control("reset"));
                }
                messages.push(control("snapshot-start"));
                for (id, v) in &self.rows {
                    messages.push(change("insert", *id, Some(*v), None));
                }
                messages.push(control("snapshot-end"));
                self.captured = true;
                Ok(vec![vec![Some("t".to_owned())]])
            }
            CapOp::Uncapture => {
                let was = std::mem::take(&mut self.captured);
                Ok(vec![vec![Some(if was { "t" } else { "f" }.to_owned())]])
            }
            CapOp::Close => match &mut self.stream {
                None => Err(NOT_FOUND.to_owned()),
                Some((closed, _)) => {
                    *closed = true;
                    Ok(vec![vec![Some("t".to_owned())]])
                }
            },
            CapOp::Read => match &self.stream {
                None => Err(NOT_FOUND.to_owned()),
                Some((_, messages)) => Ok(canonical(messages.clone())),
            },
            write => {
                let mut rows = self.rows.clone();
                let changes = table_write(&mut rows, write)?;
                if self.captured && !changes.is_empty() {
                    let (closed, messages) = self.stream.as_mut().expect("captured into it");
                    if *closed {
                        return Err(CLOSED.to_owned());
                    }
                    messages.extend(changes);
                }
                self.rows = rows;
                Ok(Vec::new())
            }
        }
    }
}

/// Applies a write to `rows`; the change messages it makes.
fn table_write(rows: &mut BTreeMap<i32, i32>, op: &CapOp) -> Result<Vec<Row>, String> {
    Ok(match *op {
        CapOp::Insert { id, v } => {
            if rows.contains_key(&id) {
                return Err(UNIQUE_VIOLATION.to_owned());
            }
            rows.insert(id, v);
            vec![change("insert", id, Some(v), None)]
        }
        CapOp::Update { id, v } => match rows.insert(id, v) {
            Some(old) => vec![change("update", id, Some(v), Some(old))],
            None => {
                rows.remove(&id);
                vec![]
            }
        },
        CapOp::Move { id, to } => match rows.get(&id).copied() {
            None => vec![],
            Some(v) if id == to => vec![change("update", id, Some(v), Some(v))],
            Some(_) if rows.contains_key(&to) => return Err(UNIQUE_VIOLATION.to_owned()),
            Some(v) => {
                rows.remove(&id);
                rows.insert(to, v);
                vec![change("delete", id, None, Some(v)), change("insert", to, Some(v), None)]
            }
        },
        CapOp::Delete { id } => match rows.remove(&id) {
            Some(old) => vec![change("delete", id, None, Some(old))],
            None => vec![],
        },
        CapOp::Truncate => {
            rows.clear();
            vec![control("reset")]
        }
        _ => unreachable!("not a write"),
    })
}

/// Rows between snapshot markers sorted (a snapshot follows the table's
/// scan order, which neither side should pin).
pub fn canonical(mut rows: Vec<Row>) -> Vec<Row> {
    let mut i = 0;
    while i < rows.len() {
        if rows[i][0].as_deref() == Some("snapshot-start") {
            let end = rows[i..]
                .iter()
                .position(|r| r[0].as_deref() == Some("snapshot-end"))
                .map_or(rows.len(), |e| i + e);
            rows[i + 1..end].sort();
            i = end;
        }
        i += 1;
    }
    rows
}
