//! Subscriptions under concurrency: claims race on the subscription row,
//! webhook deliveries are taken `SKIP LOCKED` (two senders never get the
//! same wake), and a stream or an append committed while a subscription is
//! created is never missed.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::Client;

use crate::{connect, sqlstate, unique_path};

/// A pull-wake subscription on `prefix/*` with its wake stream.
async fn pull_subscription(db: &Client, id: &str, prefix: &str) {
    let wake = format!("{prefix}-wake");
    db.execute("SELECT ds.create($1, 'application/json')", &[&wake]).await.unwrap();
    let config =
        json!({"type": "pull-wake", "pattern": format!("{prefix}/*"), "wake_stream": wake});
    db.query_one("SELECT ds.subscription_put($1, $2)", &[&id, &config]).await.unwrap();
}

/// The subscription document (`ds.subscription_get`).
async fn document(db: &Client, id: &str) -> Value {
    let got: Value = db.query_one("SELECT ds.subscription_get($1)", &[&id]).await.unwrap().get(0);
    got.get("subscription").cloned().unwrap_or(got)
}

/// The linked paths of a subscription, sorted.
async fn linked(db: &Client, id: &str) -> Vec<String> {
    let doc = document(db, id).await;
    let mut paths: Vec<String> = doc["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["path"].as_str().unwrap().to_owned())
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn two_sessions_claiming_at_once_one_wins() {
    let prefix = unique_path("sub-claim");
    let id = prefix.replace('/', "-");
    let (mut a, b) = (connect().await, connect().await);
    pull_subscription(&a, &id, &prefix).await;
    a.execute("SELECT ds.create($1, 'application/json', body => '[1]')", &[&format!("{prefix}/s")])
        .await
        .unwrap();

    // A claims inside an open transaction; B's claim waits for A's outcome.
    let tx = a.transaction().await.unwrap();
    tx.query_one("SELECT ds.subscription_claim($1, 'worker-a')", &[&id]).await.unwrap();
    let id_b = id.clone();
    let contender = tokio::spawn(async move {
        b.query_one("SELECT ds.subscription_claim($1, 'worker-b')", &[&id_b]).await.map(|_| b)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!contender.is_finished(), "B waits while A's claim is uncommitted");
    tx.commit().await.unwrap();
    let Err(err) = contender.await.unwrap() else { panic!("B loses once A committed") };
    assert_eq!(sqlstate(&err), "SD007", "{err}");
    let detail = err.as_db_error().and_then(|e| e.detail()).unwrap_or_default();
    assert!(detail.contains("worker-a"), "the holder is named: {detail}");

    // A claim that rolls back leaves the subscription to the next claimant.
    let id2 = format!("{id}-2");
    let prefix2 = format!("{prefix}-2");
    pull_subscription(&a, &id2, &prefix2).await;
    a.execute(
        "SELECT ds.create($1, 'application/json', body => '[1]')",
        &[&format!("{prefix2}/s")],
    )
    .await
    .unwrap();
    let b = connect().await;
    let tx = a.transaction().await.unwrap();
    tx.query_one("SELECT ds.subscription_claim($1, 'worker-a')", &[&id2]).await.unwrap();
    let id_b = id2.clone();
    let contender = tokio::spawn(async move {
        b.query_one("SELECT ds.subscription_claim($1, 'worker-b')", &[&id_b]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.rollback().await.unwrap();
    let claim: Value = contender.await.unwrap().expect("B claims after A rolled back").get(0);
    assert!(claim["token"].as_str().is_some_and(|t| t.starts_with("dst_")), "{claim}");
    for id in [&id, &id2] {
        a.query_one("SELECT ds.subscription_delete($1)", &[id]).await.unwrap();
    }
}

#[tokio::test]
async fn two_senders_never_take_the_same_webhook_wake() {
    const SUBSCRIPTIONS: usize = 12;
    let prefix = unique_path("sub-senders");
    let tag = prefix.replace('/', "-");
    let (mut a, mut b) = (connect().await, connect().await);
    let mut ids = Vec::new();
    for n in 0..SUBSCRIPTIONS {
        let id = format!("{tag}-{n}");
        let config = json!({
            "type": "webhook", "streams": [format!("{prefix}/{n}")],
            "webhook": {"url": "http://127.0.0.1:9/hook"},
        });
        a.query_one("SELECT ds.subscription_put($1, $2)", &[&id, &config]).await.unwrap();
        a.execute(
            "SELECT ds.create($1, 'application/json', body => '[1]')",
            &[&format!("{prefix}/{n}")],
        )
        .await
        .unwrap();
        ids.push(id);
    }
    a.query_one("SELECT ds.subscription_tick(1000)", &[]).await.unwrap();

    // Both senders take deliveries inside open transactions at the same time.
    let (ta, tb) = (a.transaction().await.unwrap(), b.transaction().await.unwrap());
    let take = "SELECT subscription_id, wake_id FROM ds.subscription_deliveries(7, 60000)";
    let (ra, rb) = tokio::join!(ta.query(take, &[]), tb.query(take, &[]));
    let mine = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String)> {
        rows.iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .filter(|(id, _)| id.starts_with(&tag))
            .collect()
    };
    let (ra, rb) = (mine(ra.unwrap()), mine(rb.unwrap()));
    for taken in &ra {
        assert!(!rb.contains(taken), "{taken:?} was handed to both senders");
    }
    ta.commit().await.unwrap();
    tb.commit().await.unwrap();
    // The rest is taken by later calls, and nothing is handed out twice.
    let mut all: Vec<(String, String)> = ra.into_iter().chain(rb).collect();
    for _ in 0..10 {
        let more = mine(a.query(take, &[]).await.unwrap());
        if more.is_empty() {
            break;
        }
        for taken in &more {
            assert!(!all.contains(taken), "{taken:?} handed out again while in flight");
        }
        all.extend(more);
    }
    all.sort();
    let mut taken: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    taken.dedup();
    assert_eq!(taken.len(), SUBSCRIPTIONS, "every wake delivered once: {all:?}");
    for id in &ids {
        a.query_one("SELECT ds.subscription_delete($1)", &[id]).await.unwrap();
    }
}

#[tokio::test]
async fn a_stream_created_while_a_subscription_is_created_is_linked() {
    let prefix = unique_path("sub-race");
    let id = prefix.replace('/', "-");
    let (mut a, b, c) = (connect().await, connect().await, connect().await);
    c.execute("SELECT ds.create($1, 'application/json')", &[&format!("{prefix}-wake")])
        .await
        .unwrap();
    let config = json!({
        "type": "pull-wake", "pattern": format!("{prefix}/*"), "wake_stream": format!("{prefix}-wake"),
    });

    // The stream's transaction is open while the subscription is created.
    let tx = a.transaction().await.unwrap();
    tx.execute("SELECT ds.create($1, 'application/json')", &[&format!("{prefix}/early")])
        .await
        .unwrap();
    let (id_b, config_b) = (id.clone(), config.clone());
    let put = tokio::spawn(async move {
        b.query_one("SELECT ds.subscription_put($1, $2)", &[&id_b, &config_b]).await.map(|_| b)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    let mut b = put.await.unwrap().expect("put");
    assert_eq!(linked(&c, &id).await, vec![format!("{prefix}/early")]);

    // The subscription's transaction is open while a stream is created.
    let id2 = format!("{id}-2");
    let config2 = json!({
        "type": "pull-wake", "pattern": format!("{prefix}/*"), "wake_stream": format!("{prefix}-wake"),
    });
    let tx = b.transaction().await.unwrap();
    tx.query_one("SELECT ds.subscription_put($1, $2)", &[&id2, &config2]).await.unwrap();
    let late = format!("{prefix}/late");
    let late_a = late.clone();
    let create = tokio::spawn(async move {
        a.execute("SELECT ds.create($1, 'application/json')", &[&late_a]).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.commit().await.unwrap();
    create.await.unwrap().expect("create");
    assert_eq!(linked(&c, &id2).await, vec![format!("{prefix}/early"), late.clone()]);
    assert_eq!(linked(&c, &id).await, vec![format!("{prefix}/early"), late]);
    for id in [&id, &id2] {
        c.query_one("SELECT ds.subscription_delete($1)", &[id]).await.unwrap();
    }
}

#[tokio::test]
async fn an_append_committed_while_a_subscription_is_created_is_pending() {
    let prefix = unique_path("sub-append-race");
    let id = prefix.replace('/', "-");
    let (mut a, b) = (connect().await, connect().await);
    let path = format!("{prefix}/s");
    a.execute("SELECT ds.create($1, 'application/json', body => '[1]')", &[&path]).await.unwrap();
    let wake = format!("{prefix}-wake");
    a.execute("SELECT ds.create($1, 'application/json')", &[&wake]).await.unwrap();
    let tx = a.transaction().await.unwrap();
    tx.execute("SELECT ds.append($1, '{\"late\": true}'::jsonb)", &[&path]).await.unwrap();
    let config =
        json!({"type": "pull-wake", "pattern": format!("{prefix}/*"), "wake_stream": wake});
    b.query_one("SELECT ds.subscription_put($1, $2)", &[&id, &config]).await.unwrap();
    tx.commit().await.unwrap();
    // Linked at the tail it saw (before the append): the append is pending.
    let claim: Value = b
        .query_one("SELECT ds.subscription_claim($1, 'worker')", &[&id])
        .await
        .expect("pending work after the concurrent append")
        .get(0);
    let stream = &claim["streams"][0];
    assert_eq!(stream["path"], json!(path));
    assert_eq!(stream["has_pending"], json!(true), "{claim}");
    b.query_one("SELECT ds.subscription_delete($1)", &[&id]).await.unwrap();
}
