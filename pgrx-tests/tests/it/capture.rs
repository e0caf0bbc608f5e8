//! Change capture (`ds.capture`) with the sequencer running: a change is in
//! the stream iff it committed, and per row in commit order, so replaying
//! the stream gives exactly the table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio_postgres::Client;

use crate::{connect, unique_path};

/// A table name of this test run.
fn unique_table(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("cap_{name}_{nanos}")
}

/// Every message of `path`, parsed.
async fn messages(client: &Client, path: &str) -> Vec<Value> {
    crate::hot::messages(client, path)
        .await
        .into_iter()
        .map(|(_, text)| serde_json::from_str(&text).unwrap())
        .collect()
}

/// Waits until nothing the table's writers committed waits for an offset.
async fn wait_sequenced(client: &Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pending: i64 = client
            .query_one(
                "SELECT count(*) FROM ds.pending p JOIN ds.streams s USING (stream_id) \
                 WHERE s.path = $1",
                &[&path],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{pending} captured changes still unsequenced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Applies the State Protocol messages: key → value.
fn materialise(messages: &[Value]) -> BTreeMap<String, Value> {
    let mut state = BTreeMap::new();
    for m in messages {
        let headers = &m["headers"];
        if headers["control"] == "reset" {
            state.clear();
            continue;
        }
        let Some(op) = headers["operation"].as_str() else { continue };
        let key = m["key"].as_str().unwrap().to_owned();
        match op {
            "insert" | "update" => {
                state.insert(key, m["value"].clone());
            }
            "delete" => {
                assert!(state.remove(&key).is_some(), "delete of absent key {key}: {m}");
            }
            other => panic!("operation {other}"),
        }
    }
    state
}

async fn table_state(client: &Client, table: &str) -> BTreeMap<String, Value> {
    client
        .query(&format!("SELECT id::text, row_to_json(t)::text FROM {table} t"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), serde_json::from_str(r.get::<_, &str>(1)).unwrap()))
        .collect()
}

/// Two transactions update one row; the one with the smaller xid waits for
/// the other's row lock and so commits second. Both commit before the
/// sequencer may run (a third session holds the stream's row), so one batch
/// orders them: its change must come second, as it did in the table.
#[tokio::test]
async fn a_row_updated_by_two_transactions_is_captured_in_commit_order() {
    let (table, path) = (unique_table("order"), unique_path("capture-order"));
    let mut first = connect().await;
    let mut second = connect().await;
    let mut holder = connect().await;
    first
        .batch_execute(&format!("CREATE TABLE {table} (id int PRIMARY KEY, v int)"))
        .await
        .unwrap();
    first.execute(&format!("INSERT INTO {table} VALUES (1, 0), (2, 0)"), &[]).await.unwrap();
    first.execute(&format!("SELECT ds.capture('{table}', $1)"), &[&path]).await.unwrap();

    let hold = holder.transaction().await.unwrap();
    hold.execute("SELECT 1 FROM ds.streams WHERE path = $1 FOR UPDATE", &[&path]).await.unwrap();

    // `late` takes its xid first (row 2), then `early` updates row 1.
    let late = second.transaction().await.unwrap();
    late.execute(&format!("UPDATE {table} SET v = 2 WHERE id = 2"), &[]).await.unwrap();
    let early = first.transaction().await.unwrap();
    early.execute(&format!("UPDATE {table} SET v = 10 WHERE id = 1"), &[]).await.unwrap();
    let xids: (i64, i64) = (
        late.query_one("SELECT pg_current_xact_id()::text::bigint", &[]).await.unwrap().get(0),
        early.query_one("SELECT pg_current_xact_id()::text::bigint", &[]).await.unwrap().get(0),
    );
    assert!(xids.0 < xids.1, "the waiter has the smaller xid: {xids:?}");
    let update = format!("UPDATE {table} SET v = 20 WHERE id = 1");
    let blocked = late.execute(&update, &[]);
    let committed = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        early.commit().await.unwrap();
    };
    let (updated, ()) = tokio::join!(blocked, committed);
    assert_eq!(updated.unwrap(), 1);
    late.commit().await.unwrap();
    hold.commit().await.unwrap();

    wait_sequenced(&first, &path).await;
    let all = messages(&first, &path).await;
    let row1: Vec<i64> = all
        .iter()
        .filter(|m| m["key"] == "1" && m["headers"]["operation"] == "update")
        .map(|m| m["value"]["v"].as_i64().unwrap())
        .collect();
    assert_eq!(row1, vec![10, 20], "commit order, not xid order: {all:?}");
    assert_eq!(materialise(&all), table_state(&first, &table).await);
}

/// Several sessions write a small key space at random (inserts, updates,
/// key changes, deletes; some transactions roll back, some savepoints do),
/// so rows are contended; the stream replayed must equal the table.
#[tokio::test]
async fn random_concurrent_writes_replay_to_the_table() {
    const SESSIONS: usize = 8;
    const TRANSACTIONS: usize = 60;
    const KEYS: i64 = 12;
    let (table, path) = (unique_table("random"), unique_path("capture-random"));
    let admin = connect().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL, note text);
             INSERT INTO {table} SELECT g, 0, 'initial' FROM generate_series(1, {KEYS} / 2) g;"
        ))
        .await
        .unwrap();
    admin.execute(&format!("SELECT ds.capture('{table}', $1)"), &[&path]).await.unwrap();

    let mut workers = Vec::new();
    for session in 0..SESSIONS {
        let table = table.clone();
        workers.push(tokio::spawn(async move {
            let mut client = connect().await;
            // Contended rows deadlock now and then: find out fast.
            client.batch_execute("SET deadlock_timeout = '20ms'").await.unwrap();
            // A small deterministic generator per session.
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (session as u64 + 1);
            let mut next = move |n: i64| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % n as u64) as i64
            };
            for t in 0..TRANSACTIONS {
                let tx = client.transaction().await.unwrap();
                let mut failed = false;
                for _ in 0..1 + next(3) {
                    let (k, k2, v) = (1 + next(KEYS), 1 + next(KEYS), next(1000));
                    let sql = match next(5) {
                        0 => format!(
                            "INSERT INTO {table} VALUES ({k}, {v}, 's{session}t{t}') \
                             ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v"
                        ),
                        1 => format!(
                            "UPDATE {table} SET v = {v}, note = 'u{session}' WHERE id = {k}"
                        ),
                        2 => format!("DELETE FROM {table} WHERE id = {k}"),
                        3 => format!("UPDATE {table} SET id = {k2} WHERE id = {k}"),
                        _ => format!("UPDATE {table} SET v = v + 1 WHERE id <= {k}"),
                    };
                    if let Err(e) = tx.execute(&sql, &[]).await {
                        // A key change onto an existing key, or a deadlock.
                        let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
                        assert!(["23505", "40P01"].contains(&code.as_str()), "{sql}: {e}");
                        failed = true;
                        break;
                    }
                }
                if failed || next(6) == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    wait_sequenced(&admin, &path).await;
    let all = messages(&admin, &path).await;
    assert!(all.len() > SESSIONS * TRANSACTIONS / 2, "only {} messages", all.len());
    assert_eq!(materialise(&all), table_state(&admin, &table).await);
}

/// A snapshot of many rows is appended in chunks, between its markers, and
/// changes that wait for `ds.capture` come after it.
#[tokio::test]
async fn the_snapshot_is_consistent_with_the_changes_that_follow() {
    let (table, path) = (unique_table("snapshot"), unique_path("capture-snapshot"));
    let mut admin = connect().await;
    let writer = connect().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, v text);
             INSERT INTO {table} SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g;"
        ))
        .await
        .unwrap();
    let tx = admin.transaction().await.unwrap();
    tx.execute(&format!("SELECT ds.capture('{table}', $1)"), &[&path]).await.unwrap();
    // Blocked by the capture's lock until it commits; then captured.
    let update = format!("UPDATE {table} SET v = 'changed' WHERE id = 1");
    let write = writer.execute(&update, &[]);
    let commit = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.commit().await.unwrap();
    };
    let (written, ()) = tokio::join!(write, commit);
    assert_eq!(written.unwrap(), 1);
    wait_sequenced(&admin, &path).await;
    let all = messages(&admin, &path).await;
    assert_eq!(all[0]["headers"]["control"], "snapshot-start");
    assert_eq!(all[5001]["headers"]["control"], "snapshot-end");
    assert_eq!(all[1..5001].iter().filter(|m| m["headers"]["operation"] == "insert").count(), 5000);
    assert_eq!(all.len(), 5003, "the update after the snapshot, once");
    assert_eq!(all[5002]["old_value"]["v"].as_str().unwrap().len(), 100);
    assert_eq!(materialise(&all), table_state(&admin, &table).await);
}

/// Large (TOASTed) values are captured whole, and byte/JSON/time types map
/// to JSON as documented.
#[tokio::test]
async fn large_values_and_types_are_captured_whole() {
    let (table, path) = (unique_table("large"), unique_path("capture-large"));
    let client = connect().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, big text, raw bytea, doc jsonb, at timestamptz, n numeric)"
        ))
        .await
        .unwrap();
    client.execute(&format!("SELECT ds.capture('{table}', $1)"), &[&path]).await.unwrap();
    client
        .execute(
            &format!(
                "INSERT INTO {table} VALUES (1, repeat('abcdefgh', 400000), '\\x00ff', \
                 '{{\"a\": [1, {{\"b\": null}}]}}', '2026-01-02 03:04:05.678+00', 1e-30)"
            ),
            &[],
        )
        .await
        .unwrap();
    wait_sequenced(&client, &path).await;
    let all = messages(&client, &path).await;
    let value = &all.last().unwrap()["value"];
    assert_eq!(value["big"].as_str().unwrap().len(), 3_200_000);
    assert_eq!(value["raw"], "\\x00ff");
    assert_eq!(value["doc"], serde_json::json!({"a": [1, {"b": null}]}));
    // Whatever the session's TimeZone: UTC.
    assert_eq!(value["at"], "2026-01-02T03:04:05.678+00:00");
    // Numbers keep Postgres' digits (serde_json here would round them).
    let raw: Vec<String> = client
        .query("SELECT convert_from(data, 'UTF8') FROM ds.read($1)", &[&path])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(raw.iter().any(|m| m.contains(r#""n":0.000000000000000000000000000001}"#)));
}
