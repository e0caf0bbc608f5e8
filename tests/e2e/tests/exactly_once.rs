//! Exactly-once processing for a consumer that lives in the database: it
//! claims a pull-wake subscription, reads the pending messages, writes its
//! derived rows and acks the offsets in ONE transaction. Producers append to
//! several streams while the consumer is killed mid-batch (its connection
//! vanishes inside the transaction) and Postgres is killed with `kill -9`,
//! repeatedly. At the end the derived table holds every message of every
//! stream exactly once: the checkpoint is committed with the state it
//! describes, never ahead of it (no skip) and never behind it (no double).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ds_e2e::cluster::{Cluster, DATABASE};
use serde_json::{Value, json};
use tokio::time::sleep;
use tokio_postgres::NoTls;

const STREAMS: usize = 4;
const SUBSCRIPTION: &str = "orders-consumer";
/// Messages read per stream and batch: small, so batches span several wakes.
const BATCH_ROWS: i64 = 20;

/// A tiny deterministic generator (scheduling only, not security).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.ok()?;
    tokio::spawn(connection);
    Some(client)
}

/// Appends numbered JSON messages to random streams until `stop` or the
/// first error (a crash); reconnects are the caller's job.
async fn produce(url: String, next: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let Some(db) = connect(&url).await else { return };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ next.load(Ordering::Relaxed));
    while !stop.load(Ordering::Relaxed) {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let path = format!("orders/{}", rng.below(STREAMS as u64));
        let body = json!({ "n": n }).to_string();
        if db.execute("SELECT ds.append($1, $2::text::jsonb)", &[&path, &body]).await.is_err() {
            return;
        }
        sleep(Duration::from_millis(2)).await;
    }
}

/// What one consumer transaction did.
enum Batch {
    Applied(usize),
    NothingPending,
}

/// One consumer transaction: claim, read what is pending (bounded per
/// stream), insert the derived rows, ack what was read with `done`, commit.
/// `pause` sits between the derived rows and the ack, where a kill hurts most.
async fn consume_once(db: &mut tokio_postgres::Client, pause: Duration) -> Result<Batch, String> {
    let tx = db.transaction().await.map_err(|e| e.to_string())?;
    let claim = match tx
        .query_one("SELECT ds.subscription_claim($1, 'consumer')", &[&SUBSCRIPTION])
        .await
    {
        Ok(row) => row.get::<_, Value>(0),
        Err(e) if e.code().is_some_and(|c| c.code() == "SD008") => {
            return Ok(Batch::NothingPending);
        }
        Err(e) => return Err(format!("claim: {e}")),
    };
    let mut acks = Vec::new();
    let mut applied = 0;
    for stream in claim["streams"].as_array().expect("claim.streams") {
        if stream["has_pending"] != json!(true) {
            continue;
        }
        let path = stream["path"].as_str().unwrap();
        let tail = stream["tail_offset"].as_str().unwrap();
        let rows = tx
            .query(
                "SELECT start_offset, next_offset, convert_from(data, 'UTF8')
                 FROM ds.read($1, $2, $3) WHERE next_offset <= $4",
                &[&path, &stream["acked_offset"].as_str().unwrap(), &BATCH_ROWS, &tail],
            )
            .await
            .map_err(|e| format!("read {path}: {e}"))?;
        let Some(last) = rows.last() else { continue };
        for row in &rows {
            let (start, body): (String, String) = (row.get(0), row.get(2));
            tx.execute(
                "INSERT INTO derived (stream, start_offset, body) VALUES ($1, $2, $3)",
                &[&path, &start, &body],
            )
            .await
            .map_err(|e| e.to_string())?;
        }
        applied += rows.len();
        acks.push(json!({ "stream": path, "offset": last.get::<_, String>(1) }));
    }
    sleep(pause).await;
    let request = json!({
        "wake_id": claim["wake_id"], "generation": claim["generation"], "acks": acks, "done": true,
    });
    tx.query_one(
        "SELECT ds.subscription_ack($1, $2, $3)",
        &[&SUBSCRIPTION, &claim["token"].as_str().unwrap(), &request],
    )
    .await
    .map_err(|e| format!("ack: {e}"))?;
    tx.commit().await.map_err(|e| format!("commit: {e}"))?;
    Ok(Batch::Applied(applied))
}

/// Consumes until `stop` (or an error: the caller restarts it).
async fn consume(url: String, stop: Arc<AtomicBool>, applied: Arc<AtomicU64>) {
    let Some(mut db) = connect(&url).await else { return };
    while !stop.load(Ordering::Relaxed) {
        match consume_once(&mut db, Duration::from_millis(3)).await {
            Ok(Batch::Applied(n)) => {
                applied.fetch_add(n as u64, Ordering::Relaxed);
            }
            Ok(Batch::NothingPending) => sleep(Duration::from_millis(10)).await,
            Err(_) => return,
        }
    }
}

/// Every message of `path` as (start offset, body), checking the pages join.
async fn read_all(db: &tokio_postgres::Client, path: &str) -> Vec<(String, String)> {
    let (mut out, mut from) = (Vec::new(), "-1".to_owned());
    loop {
        let rows = db
            .query(
                "SELECT start_offset, next_offset, convert_from(data, 'UTF8') FROM ds.read($1, $2)",
                &[&path, &from],
            )
            .await
            .unwrap();
        if rows.is_empty() {
            return out;
        }
        for r in rows {
            out.push((r.get(0), r.get(2)));
            from = r.get(1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sql_consumer_applies_every_message_once_across_kills() {
    let cluster = Cluster::primary("exactly-once", &[]).await;
    let url = cluster.url(DATABASE);
    let db = cluster.sql(DATABASE).await;
    db.batch_execute(
        "CREATE TABLE derived (stream text NOT NULL, start_offset text NOT NULL, body text NOT NULL);
         SELECT ds.create('wake/orders', 'application/json');",
    )
    .await
    .unwrap();
    let config = json!({
        "type": "pull-wake", "pattern": "orders/*", "wake_stream": "wake/orders", "lease_ttl_ms": 1000,
    });
    db.query_one("SELECT ds.subscription_put($1, $2)", &[&SUBSCRIPTION, &config]).await.unwrap();
    for s in 0..STREAMS {
        db.execute("SELECT ds.create($1, 'application/json')", &[&format!("orders/{s}")])
            .await
            .unwrap();
    }

    let next = Arc::new(AtomicU64::new(0));
    let applied = Arc::new(AtomicU64::new(0));
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (mut consumer_kills, mut crashes) = (0, 0);
    for round in 0..8 {
        let stop = Arc::new(AtomicBool::new(false));
        let producers: Vec<_> = (0..2)
            .map(|_| tokio::spawn(produce(url.clone(), next.clone(), stop.clone())))
            .collect();
        let consumer = tokio::spawn(consume(url.clone(), stop.clone(), applied.clone()));
        sleep(Duration::from_millis(600 + rng.below(600))).await;
        if round % 2 == 0 {
            // The consumer dies mid-transaction: its connection vanishes.
            consumer.abort();
            consumer_kills += 1;
            sleep(Duration::from_millis(200)).await;
            stop.store(true, Ordering::Relaxed);
        } else {
            cluster.crash().await;
            crashes += 1;
            stop.store(true, Ordering::Relaxed);
            cluster.start();
            let _ = consumer.await;
        }
        for p in producers {
            let _ = p.await;
        }
    }
    assert!(next.load(Ordering::Relaxed) > 200, "the producers appended");
    assert!(applied.load(Ordering::Relaxed) > 0, "the consumer applied batches between kills");

    // Drain: consume until nothing is pending.
    let mut consumer = cluster.sql(DATABASE).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match consume_once(&mut consumer, Duration::ZERO).await {
            Ok(Batch::NothingPending) => break,
            Ok(Batch::Applied(_)) => {}
            Err(e) if e.contains("SD007") || e.contains("already claimed") => {
                sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("draining: {e}"),
        }
        assert!(Instant::now() < deadline, "still pending after 60 s");
    }

    let db = cluster.sql(DATABASE).await;
    let doubles: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM derived GROUP BY stream, start_offset
                                    HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(doubles, 0, "a message applied twice");
    let mut total = 0;
    for s in 0..STREAMS {
        let path = format!("orders/{s}");
        let stored = read_all(&db, &path).await;
        let derived: Vec<(String, String)> = db
            .query(
                "SELECT start_offset, body FROM derived WHERE stream = $1 ORDER BY start_offset",
                &[&path],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if derived != stored {
            let missing = stored.iter().filter(|m| !derived.contains(m)).count();
            let extra = derived.iter().filter(|m| !stored.contains(m)).count();
            let first = stored.iter().zip(&derived).position(|(a, b)| a != b);
            panic!(
                "{path}: {} messages stored, {} derived rows: {missing} skipped, {extra} not in \
                 the stream, first difference at index {first:?}",
                stored.len(),
                derived.len()
            );
        }
        total += stored.len();
    }
    let got: Value =
        db.query_one("SELECT ds.subscription_get($1)", &[&SUBSCRIPTION]).await.unwrap().get(0);
    let subscription = got.get("subscription").unwrap_or(&got);
    assert_eq!(subscription["streams"].as_array().map(Vec::len), Some(STREAMS));
    for link in subscription["streams"].as_array().unwrap() {
        let path = link["path"].as_str().unwrap();
        let tail: String =
            db.query_one("SELECT next_offset FROM ds.head($1)", &[&path]).await.unwrap().get(0);
        assert_eq!(link["acked_offset"], json!(tail), "{path} acked up to its tail");
    }
    println!(
        "exactly once: {total} messages in {STREAMS} streams, {consumer_kills} consumer kills, \
         {crashes} Postgres crashes"
    );
}
