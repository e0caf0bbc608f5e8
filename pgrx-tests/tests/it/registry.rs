//! Stream registries (README, "Stream registries"): with `ds.registry` on,
//! every creation, fork, deletion and expiry under a registered prefix is
//! a State Protocol change message in `<prefix>__registry__`, in the same
//! transaction, through the lock-free `ds.enqueue` path (this database has
//! a sequencer). Applied in order, the messages give exactly the live
//! streams.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::Client;

use crate::{connect, sqlstate, unique_path};

/// Turns recording on for every session and the workers (maintenance every
/// 200 ms, so expiry is quick); `finish` turns it off again.
async fn record_everywhere(c: &Client) {
    for statement in [
        "ALTER SYSTEM SET ds.registry = on",
        "ALTER SYSTEM SET ds.rotation_interval_ms = 200",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(statement).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

async fn finish(c: &Client, prefixes: &[&str]) {
    for p in prefixes {
        c.execute("SELECT ds.drop_registry($1)", &[p]).await.unwrap();
    }
    for statement in [
        "ALTER SYSTEM RESET ds.registry",
        "ALTER SYSTEM RESET ds.rotation_interval_ms",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(statement).await.unwrap();
    }
}

/// Every message of a registry, in order.
async fn registry_messages(c: &Client, registry: &str) -> Vec<Value> {
    let messages = crate::hot::messages(c, registry).await;
    messages.iter().map(|(_, text)| serde_json::from_str(text).unwrap()).collect()
}

/// The set of paths the messages leave, checking each one as it is applied:
/// an insert of a path not listed, a delete of a path listed (so a message
/// out of order fails here), and the State Protocol shape.
fn materialise(messages: &[Value]) -> BTreeSet<String> {
    let mut live = BTreeSet::new();
    for m in messages {
        assert_eq!(m["type"], "stream", "{m}");
        let key = m["key"].as_str().expect("key").to_owned();
        assert!(m["headers"]["txid"].is_string() && m["headers"]["timestamp"].is_string(), "{m}");
        match m["headers"]["operation"].as_str() {
            Some("insert") => {
                assert!(m["value"]["content_type"].is_string(), "{m}");
                assert!(live.insert(key), "insert of a listed path: {m}");
            }
            Some("delete") => assert!(live.remove(&key), "delete of an unlisted path: {m}"),
            other => panic!("operation {other:?}: {m}"),
        }
    }
    live
}

/// Paths of live streams under `prefix` (registries excluded), as stored.
async fn live_paths(c: &Client, prefix: &str) -> BTreeSet<String> {
    c.query(
        "SELECT path FROM ds.streams WHERE starts_with(path, $1) AND NOT soft_deleted \
           AND path NOT LIKE '%\\_\\_registry\\_\\_'",
        &[&prefix],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Waits (10 s at most) until the registry of `prefix` materialises to the
/// live streams under it: the sequencer gives registry appends offsets
/// after commit, and the maintenance worker retires expired streams.
async fn assert_registry_converges(c: &Client, prefix: &str) -> Vec<Value> {
    let registry = format!("{prefix}__registry__");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let messages = registry_messages(c, &registry).await;
        let (listed, live) = (materialise(&messages), live_paths(c, prefix).await);
        if listed == live {
            return messages;
        }
        assert!(Instant::now() < deadline, "registry {listed:?}\n!= live streams {live:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn concurrent_creates_forks_deletes_and_expiry_leave_exactly_the_live_streams() {
    let admin = connect().await;
    record_everywhere(&admin).await;
    let prefix = format!("{}/", unique_path("registry"));
    admin.execute("SELECT ds.create($1)", &[&format!("{prefix}before")]).await.unwrap();
    let listed: i64 = admin
        .query_one("SELECT listed FROM ds.create_registry($1)", &[&prefix])
        .await
        .unwrap()
        .get(0);
    assert_eq!(listed, 1, "the stream made before the registry is listed");

    const WORKERS: usize = 6;
    const ROUNDS: usize = 20;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = connect().await;
            let mut rolled_back = Vec::new();
            for i in 0..ROUNDS {
                let path = format!("{prefix}w{w}/s{i}");
                match i % 5 {
                    // Rolled back: must leave nothing.
                    0 => {
                        let tx = c.transaction().await.unwrap();
                        tx.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
                        tx.rollback().await.unwrap();
                        rolled_back.push(path);
                    }
                    // Expires in a second; the maintenance worker retires it.
                    1 => {
                        c.execute(
                            "SELECT ds.create($1, expires_at => clock_timestamp() + interval '1 second')",
                            &[&path],
                        )
                        .await
                        .unwrap();
                    }
                    // A fork of the previous stream, then that source deleted
                    // (soft: the fork reads it).
                    2 => {
                        let source = format!("{prefix}w{w}/s{}", i - 1);
                        c.execute("SELECT ds.fork($1, $2)", &[&path, &source]).await.unwrap();
                        c.execute("SELECT ds.delete($1)", &[&source]).await.unwrap();
                    }
                    // Created and deleted in one transaction.
                    3 => {
                        let tx = c.transaction().await.unwrap();
                        tx.execute("SELECT ds.create($1, 'application/json')", &[&path])
                            .await
                            .unwrap();
                        tx.execute("SELECT ds.delete($1)", &[&path]).await.unwrap();
                        tx.commit().await.unwrap();
                    }
                    _ => {
                        c.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
                    }
                }
            }
            rolled_back
        }));
    }
    let mut rolled_back = Vec::new();
    for t in tasks {
        rolled_back.extend(t.await.unwrap());
    }

    let messages = assert_registry_converges(&admin, &prefix).await;
    let keys: BTreeSet<&str> = messages.iter().filter_map(|m| m["key"].as_str()).collect();
    for path in &rolled_back {
        assert!(!keys.contains(path.as_str()), "rolled-back {path} is in the registry");
    }
    let expiries = messages
        .iter()
        .filter(|m| {
            m["headers"]["operation"] == "delete" && m["key"].as_str().unwrap().ends_with('1')
        })
        .count();
    assert!(expiries >= WORKERS, "every expired stream is recorded as deleted");
    // One insert each for: the listed stream, and per worker the expiring,
    // forked, created-and-deleted and plain streams of each round of five.
    let inserts = messages.iter().filter(|m| m["headers"]["operation"] == "insert").count();
    assert_eq!(inserts, 1 + WORKERS * ROUNDS / 5 * 4);
    finish(&admin, &[&prefix]).await;
}

#[tokio::test]
async fn each_prefix_registry_lists_only_its_own_streams() {
    let admin = connect().await;
    record_everywhere(&admin).await;
    let base = unique_path("registry-tenants");
    let (a, b) = (format!("{base}/a/"), format!("{base}/b/"));
    for p in [&a, &b] {
        admin.execute("SELECT ds.create_registry($1)", &[p]).await.unwrap();
    }
    for i in 0..5 {
        admin.execute("SELECT ds.create($1)", &[&format!("{a}s{i}")]).await.unwrap();
        admin.execute("SELECT ds.create($1)", &[&format!("{b}s{i}")]).await.unwrap();
    }
    admin.execute("SELECT ds.create($1)", &[&format!("{base}/c")]).await.unwrap();
    for p in [&a, &b] {
        let messages = assert_registry_converges(&admin, p).await;
        let keys = materialise(&messages);
        assert_eq!(keys.len(), 5);
        assert!(keys.iter().all(|k| k.starts_with(p.as_str())), "{keys:?}");
    }
    finish(&admin, &[&a, &b]).await;
}

#[tokio::test]
async fn creations_do_not_wait_for_each_other_on_the_registry() {
    let admin = connect().await;
    record_everywhere(&admin).await;
    let prefix = format!("{}/", unique_path("registry-lockfree"));
    admin.execute("SELECT ds.create_registry($1)", &[&prefix]).await.unwrap();
    let mut first = connect().await;
    let tx = first.transaction().await.unwrap();
    tx.execute("SELECT ds.create($1)", &[&format!("{prefix}first")]).await.unwrap();
    // With the first creation's transaction open, a second one commits
    // at once: it takes no lock the first holds (a locking registry append
    // would wait for the registry's row).
    let second = connect().await;
    second.batch_execute("SET lock_timeout = '2s'").await.unwrap();
    second.execute("SELECT ds.create($1)", &[&format!("{prefix}second")]).await.unwrap();
    tx.commit().await.unwrap();
    let messages = assert_registry_converges(&admin, &prefix).await;
    assert_eq!(materialise(&messages).len(), 2);

    // REPEATABLE READ falls back to the locking append: still recorded.
    let mut rr = connect().await;
    let tx = rr
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    tx.execute("SELECT ds.create($1)", &[&format!("{prefix}repeatable")]).await.unwrap();
    tx.commit().await.unwrap();
    let messages = assert_registry_converges(&admin, &prefix).await;
    assert_eq!(materialise(&messages).len(), 3);

    // Nobody else writes a registry.
    let e = second
        .execute("SELECT ds.enqueue($1, '{}'::jsonb)", &[&format!("{prefix}__registry__")])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    finish(&admin, &[&prefix]).await;
}
