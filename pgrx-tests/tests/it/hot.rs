//! `ds.enqueue`: appends without a stream lock, sequenced after commit.
//! The guarantees (README, "Hot streams"): offsets gap-free and never
//! reused; readers see only a gap-free committed prefix; a transaction's
//! appends contiguous and in its own order; real-time order between
//! transactions that do not overlap; atomic with the application's rows;
//! nothing visible before commit; close and delete wait for enqueues in
//! flight; the same errors as `ds.append`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{connect, off, sqlstate, unique_path};

/// Reads every JSON message of `path` (paging), with its start offset.
pub async fn messages(client: &tokio_postgres::Client, path: &str) -> Vec<(String, String)> {
    let (mut out, mut from) = (Vec::new(), "-1".to_owned());
    loop {
        let rows = client
            .query(
                "SELECT start_offset, next_offset, convert_from(data, 'UTF8') FROM ds.read($1, $2)",
                &[&path, &from],
            )
            .await
            .unwrap();
        if rows.is_empty() {
            return out;
        }
        for r in &rows {
            out.push((r.get(0), r.get(2)));
            from = r.get(1);
        }
    }
}

/// Waits until the stream's tail reaches `bytes` (the sequencer is
/// asynchronous); panics after 10 s.
async fn wait_for_tail(client: &tokio_postgres::Client, path: &str, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tail: String =
            client.query_one("SELECT next_offset FROM ds.head($1)", &[&path]).await.unwrap().get(0);
        if tail == off(bytes) {
            return;
        }
        assert!(Instant::now() < deadline, "tail {tail}, expected {}", off(bytes));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn enqueued_appends_are_visible_only_after_commit_and_in_order() {
    let path = unique_path("hot-basic");
    let mut client = connect().await;
    let reader = connect().await;
    client.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT ds.enqueue($1, '{\"n\":1}'::jsonb)", &[&path]).await.unwrap();
    tx.execute("SELECT ds.enqueue($1, '[{\"n\":2},{\"n\":3}]'::jsonb)", &[&path]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(messages(&reader, &path).await.is_empty(), "nothing visible before commit");
    tx.commit().await.unwrap();
    wait_for_tail(&reader, &path, 21).await;
    let got: Vec<String> = messages(&reader, &path).await.into_iter().map(|m| m.1).collect();
    assert_eq!(got, vec![r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]);

    let tx = client.transaction().await.unwrap();
    tx.execute("SELECT ds.enqueue($1, '{\"n\":4}'::jsonb)", &[&path]).await.unwrap();
    tx.rollback().await.unwrap();
    client.execute("SELECT ds.enqueue($1, '{\"n\":5}'::jsonb)", &[&path]).await.unwrap();
    wait_for_tail(&reader, &path, 28).await;
    assert_eq!(messages(&reader, &path).await.last().unwrap().1, r#"{"n":5}"#, "4 rolled back");
}

#[tokio::test]
async fn a_locking_append_comes_after_committed_enqueues() {
    let path = unique_path("hot-then-append");
    let client = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    // Committed, and sequenced either by the worker or by the append below.
    client.execute("SELECT ds.enqueue($1, 'aaaa'::bytea)", &[&path]).await.unwrap();
    let offset: String =
        client.query_one("SELECT ds.append($1, 'b'::bytea)", &[&path]).await.unwrap().get(0);
    assert_eq!(offset, off(5), "the enqueued bytes come first");
}

#[tokio::test]
async fn close_and_delete_wait_for_enqueues_in_flight() {
    let path = unique_path("hot-close");
    let mut enqueuer = connect().await;
    let closer = connect().await;
    enqueuer.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    let tx = enqueuer.transaction().await.unwrap();
    tx.execute("SELECT ds.enqueue($1, 'in-flight'::bytea)", &[&path]).await.unwrap();
    let p = path.clone();
    let close = tokio::spawn(async move {
        closer.query_one("SELECT ds.close($1)", &[&p]).await.unwrap().get::<_, String>(0)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!close.is_finished(), "the close waits for the enqueue in flight");
    tx.commit().await.unwrap();
    let final_offset = tokio::time::timeout(Duration::from_secs(10), close).await.unwrap().unwrap();
    assert_eq!(final_offset, off(9), "the committed enqueue is sequenced before the close");
    let e = enqueuer.execute("SELECT ds.enqueue($1, 'late'::bytea)", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e}");

    let gone = unique_path("hot-delete");
    enqueuer.execute("SELECT ds.create($1)", &[&gone]).await.unwrap();
    let tx = enqueuer.transaction().await.unwrap();
    tx.execute("SELECT ds.enqueue($1, 'x'::bytea)", &[&gone]).await.unwrap();
    let deleter = connect().await;
    let g = gone.clone();
    let delete =
        tokio::spawn(async move { deleter.execute("SELECT ds.delete($1)", &[&g]).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delete.is_finished(), "the delete waits for the enqueue in flight");
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), delete).await.unwrap().unwrap();
    let left: i64 = enqueuer
        .query_one("SELECT count(*) FROM ds.pending p WHERE NOT EXISTS (SELECT FROM ds.streams s WHERE s.stream_id = p.stream_id)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "no pending rows outlive their stream");
}

#[tokio::test]
async fn enqueue_refuses_what_append_refuses_with_the_same_sqlstate() {
    let client = connect().await;
    let bytes = unique_path("hot-errors-bytes");
    let json = unique_path("hot-errors-json");
    let closed = unique_path("hot-errors-closed");
    client.execute("SELECT ds.create($1)", &[&bytes]).await.unwrap();
    client.execute("SELECT ds.create($1, 'application/json')", &[&json]).await.unwrap();
    client.execute("SELECT ds.create($1, closed => true)", &[&closed]).await.unwrap();
    let missing = unique_path("hot-errors-missing");
    let cases: Vec<(String, &str)> = vec![
        (missing, "'x'::bytea"),
        (bytes.clone(), "'{}'::jsonb"),
        (json.clone(), "'not json'::text"),
        (json.clone(), "'[]'::jsonb"),
        (bytes.clone(), "''::bytea"),
        (closed.clone(), "'x'::bytea"),
        // The body against the stream's type comes first, as for ds.append.
        (closed, "'{}'::jsonb"),
        ("bad path with spaces?".to_owned(), "'x'::bytea"),
    ];
    for (path, arg) in cases {
        let append = client
            .execute(&format!("SELECT ds.append($1, {arg})"), &[&path])
            .await
            .expect_err("append refuses");
        let enqueue = client
            .execute(&format!("SELECT ds.enqueue($1, {arg})"), &[&path])
            .await
            .expect_err("enqueue refuses");
        assert_eq!(sqlstate(&enqueue), sqlstate(&append), "{path} {arg}: {enqueue} vs {append}");
    }
}

#[tokio::test]
async fn under_repeatable_read_enqueue_is_a_locking_append() {
    let path = unique_path("hot-rr");
    let client = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ;
             SELECT ds.enqueue('{path}', 'abc'::bytea);
             COMMIT;"
        ))
        .await
        .unwrap();
    // Sequenced in the transaction itself: no sequencer round needed.
    let tail: String =
        client.query_one("SELECT next_offset FROM ds.head($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(tail, off(3));
    let pending: i64 = client
        .query_one("SELECT count(*) FROM ds.pending p JOIN ds.streams s USING (stream_id) WHERE s.path = $1", &[&path])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 0);
}

/// A tiny deterministic PRNG (xorshift64*): tests print their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One committed transaction as its client saw it.
#[derive(Debug, Clone)]
struct Committed {
    /// Shared clock before BEGIN and after COMMIT returned.
    began: u64,
    ended: u64,
    /// Its messages, in the order it enqueued them.
    messages: Vec<String>,
}

#[tokio::test]
async fn concurrent_enqueuers_get_a_gap_free_contiguous_real_time_order() {
    const SESSIONS: u64 = 64;
    const TRANSACTIONS: u64 = 12;
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("seed {seed}");
    let path = unique_path("hot-concurrent");
    let admin = connect().await;
    admin.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    admin
        .batch_execute("CREATE TABLE IF NOT EXISTS it_hot_orders (id text PRIMARY KEY)")
        .await
        .unwrap();
    let clock = Arc::new(AtomicU64::new(0));

    // A reader tails the stream all along: every page starts where the last
    // ended, and what it saw never changes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (path, stop) = (path.clone(), stop.clone());
        tokio::spawn(async move {
            let client = connect().await;
            let mut seen: Vec<(String, String, String)> = Vec::new();
            let mut from = "-1".to_owned();
            while !stop.load(Ordering::Relaxed) {
                let rows = client
                    .query(
                        "SELECT start_offset, next_offset, convert_from(data, 'UTF8') FROM ds.read($1, $2)",
                        &[&path, &from],
                    )
                    .await
                    .unwrap();
                for r in rows {
                    let (start, next, data): (String, String, String) =
                        (r.get(0), r.get(1), r.get(2));
                    assert_eq!(start, from.replace("-1", &off(0)), "a gap before {start}");
                    from = next.clone();
                    seen.push((start, next, data));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };

    let mut writers = Vec::new();
    for session in 0..SESSIONS {
        let (path, clock) = (path.clone(), clock.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (session + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut client = connect().await;
            let mut committed = Vec::new();
            for t in 0..TRANSACTIONS {
                let began = clock.fetch_add(1, Ordering::SeqCst);
                let tx = client.transaction().await.unwrap();
                let mut kept = Vec::new();
                for i in 0..1 + rng.below(4) {
                    // Keys in jsonb's order, so the stored text is the same.
                    let msg = format!(r#"{{"i":{i},"s":{session},"t":{t}}}"#);
                    if rng.below(5) == 0 {
                        // A savepoint rolled back: this message must vanish.
                        tx.batch_execute("SAVEPOINT sp").await.unwrap();
                        tx.execute("SELECT ds.enqueue($1, $2::text::jsonb)", &[&path, &msg])
                            .await
                            .unwrap();
                        tx.batch_execute("ROLLBACK TO SAVEPOINT sp").await.unwrap();
                        continue;
                    }
                    tx.execute("SELECT ds.enqueue($1, $2::text::jsonb)", &[&path, &msg])
                        .await
                        .unwrap();
                    kept.push(msg);
                }
                let order = format!("{path}-{session}-{t}");
                tx.execute("INSERT INTO it_hot_orders VALUES ($1)", &[&order]).await.unwrap();
                if rng.below(6) == 0 {
                    tx.rollback().await.unwrap();
                    continue;
                }
                tx.commit().await.unwrap();
                let ended = clock.fetch_add(1, Ordering::SeqCst);
                if !kept.is_empty() {
                    committed.push(Committed { began, ended, messages: kept });
                }
            }
            committed
        }));
    }
    let mut all: Vec<Committed> = Vec::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    let expected_count: usize = all.iter().map(|c| c.messages.len()).sum();
    let deadline = Instant::now() + Duration::from_secs(20);
    let stored = loop {
        let stored = messages(&admin, &path).await;
        if stored.len() >= expected_count || Instant::now() > deadline {
            break stored;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop.store(true, Ordering::Relaxed);
    let seen = reader.await.unwrap();

    // Exactly the committed messages, once each.
    let position: HashMap<&str, usize> =
        stored.iter().enumerate().map(|(i, m)| (m.1.as_str(), i)).collect();
    assert_eq!(position.len(), stored.len(), "a message stored twice");
    assert_eq!(stored.len(), expected_count, "messages lost or extra (seed {seed})");
    // Each transaction's messages contiguous and in its order.
    for c in &all {
        let first = position[c.messages[0].as_str()];
        for (k, m) in c.messages.iter().enumerate() {
            assert_eq!(position[m.as_str()], first + k, "{c:?} split or reordered (seed {seed})");
        }
    }
    // Real-time order: committed before the other began => comes first.
    for a in &all {
        for b in &all {
            if a.ended < b.began {
                assert!(
                    position[a.messages[0].as_str()] < position[b.messages[0].as_str()],
                    "{a:?} committed before {b:?} began but comes later (seed {seed})"
                );
            }
        }
    }
    // The reader saw a prefix of the final stream, never anything else.
    for (k, (start, _, data)) in seen.iter().enumerate() {
        assert_eq!((&stored[k].0, &stored[k].1), (start, data), "the reader saw other bytes");
    }
}

#[tokio::test]
async fn a_transaction_that_enqueued_cannot_be_prepared() {
    let path = unique_path("hot-2pc");
    let client = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    let gid = format!("ds-it-{}", unique_path("hot-gid"));
    let e = client
        .batch_execute(&format!(
            "BEGIN; SELECT ds.enqueue('{path}', 'x'::bytea); PREPARE TRANSACTION '{gid}'"
        ))
        .await
        .unwrap_err();
    assert!(format!("{e:?}").contains("cannot be prepared"), "{e:?}");
    client.batch_execute("ROLLBACK").await.ok();
    let prepared: i64 = client
        .query_one("SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1", &[&gid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tail: String =
        client.query_one("SELECT next_offset FROM ds.head($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(tail, off(0), "nothing was enqueued");
}

#[tokio::test]
async fn a_quota_set_after_an_enqueue_applies_to_the_next_one() {
    let path = unique_path("hot-quota");
    let client = connect().await;
    let admin = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    // The first enqueue lets this backend remember the stream as quota-free.
    client.execute("SELECT ds.enqueue($1, 'abc'::bytea)", &[&path]).await.unwrap();
    admin.execute("SELECT ds.set_stream_quota($1, 5)", &[&path]).await.unwrap();
    wait_for_tail(&admin, &path, 3).await;
    let e = client.execute("SELECT ds.enqueue($1, 'defghij'::bytea)", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53400", "{e}");
    client.execute("SELECT ds.enqueue($1, 'de'::bytea)", &[&path]).await.unwrap();
    wait_for_tail(&admin, &path, 5).await;
}

/// A backend that enqueued into a stream remembers it; a close, a delete
/// and a re-create of the path by other sessions are still seen by its next
/// enqueue (the remembered stream is checked again after anyone locked
/// enqueuers out).
#[tokio::test]
async fn a_remembered_stream_closed_or_replaced_elsewhere_is_seen() {
    let path = unique_path("hot-remembered");
    let enqueuer = connect().await;
    let other = connect().await;
    other.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    enqueuer.execute("SELECT ds.enqueue($1, 'a'::text)", &[&path]).await.unwrap();
    enqueuer.execute("SELECT ds.enqueue($1, 'b'::text)", &[&path]).await.unwrap();
    other.execute("SELECT ds.close($1)", &[&path]).await.unwrap();
    let e = enqueuer.execute("SELECT ds.enqueue($1, 'c'::text)", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "closed elsewhere: {e}");

    other.execute("SELECT ds.delete($1)", &[&path]).await.unwrap();
    let e = enqueuer.execute("SELECT ds.enqueue($1, 'd'::text)", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704", "deleted elsewhere: {e}");

    other.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    enqueuer.execute("SELECT ds.enqueue($1, 'e'::text)", &[&path]).await.unwrap();
    enqueuer.execute("SELECT ds.enqueue($1, 'f'::text)", &[&path]).await.unwrap();
    other.execute("SELECT ds.delete($1)", &[&path]).await.unwrap();
    other.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    enqueuer.execute("SELECT ds.enqueue($1, 'g'::text)", &[&path]).await.unwrap();
    wait_for_tail(&other, &path, 1).await;
    let got: Vec<String> = messages(&other, &path).await.into_iter().map(|m| m.1).collect();
    assert_eq!(got, vec!["g"], "the new stream at the path took the enqueue");
}

/// An enqueuer remembers a stream's content type, but once the stream may
/// be gone a body is judged by what is at the path now: found by the model
/// test, which saw 22P02 (not JSON, for a JSON stream deleted meanwhile)
/// where 42704 was due.
#[tokio::test]
async fn a_body_is_judged_by_the_stream_at_the_path_now() {
    let path = unique_path("hot-judged");
    let enqueuer = connect().await;
    let other = connect().await;
    other.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    enqueuer.execute("SELECT ds.enqueue($1, '{\"a\":1}'::jsonb)", &[&path]).await.unwrap();
    other.execute("SELECT ds.delete($1)", &[&path]).await.unwrap();
    let e = enqueuer.execute("SELECT ds.enqueue($1, 'a'::bytea)", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704", "deleted elsewhere: {e}");

    other.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    enqueuer.execute("SELECT ds.enqueue($1, '{\"a\":2}'::jsonb)", &[&path]).await.unwrap();
    other.execute("SELECT ds.delete($1)", &[&path]).await.unwrap();
    other.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    enqueuer.execute("SELECT ds.enqueue($1, 'not json'::bytea)", &[&path]).await.unwrap();
    wait_for_tail(&other, &path, 8).await;
    let got: Vec<String> = messages(&other, &path).await.into_iter().map(|m| m.1).collect();
    assert_eq!(got, vec!["not json"], "the text stream now at the path took it");
}

/// The sequencer looks only at pending rows from a floor up (an xid below
/// which every transaction had ended). A transaction that stays open while
/// hundreds of others are sequenced holds that floor down: its rows are
/// sequenced when it commits, however far the others went meanwhile.
#[tokio::test]
async fn a_long_transaction_s_enqueues_are_sequenced_when_it_commits() {
    let path = unique_path("hot-long");
    let other = unique_path("hot-long-other");
    let mut long = connect().await;
    let client = connect().await;
    for p in [&path, &other] {
        client.execute("SELECT ds.create($1, 'text/plain')", &[p]).await.unwrap();
    }
    let tx = long.transaction().await.unwrap();
    tx.execute("SELECT ds.enqueue($1, 'L'::text)", &[&path]).await.unwrap();
    for _ in 0..200 {
        client.execute("SELECT ds.enqueue($1, 'o'::text)", &[&path]).await.unwrap();
        client.execute("SELECT ds.enqueue($1, 'x'::text)", &[&other]).await.unwrap();
    }
    wait_for_tail(&client, &path, 200).await;
    wait_for_tail(&client, &other, 200).await;
    // Rounds that found nothing: the floor moves as far as it can.
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.commit().await.unwrap();
    wait_for_tail(&client, &path, 201).await;
    let got: String = messages(&client, &path).await.into_iter().map(|m| m.1).collect();
    assert_eq!(got, format!("{}L", "o".repeat(200)), "committed last, sequenced last");
}

/// Enqueued rows are written without the executor, as long as
/// `ds.pending` is the table that code knows; an index someone adds (here
/// an expression index, which that path could not fill) sends them back
/// through SQL, and the index stays complete.
#[tokio::test]
async fn an_index_added_to_the_pending_table_is_kept_complete() {
    let path = unique_path("hot-extra-index");
    let mut client = connect().await;
    client.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    client
        .batch_execute(
            "DROP INDEX IF EXISTS ds.ds_it_pending_extra; \
             CREATE INDEX ds_it_pending_extra ON ds.pending ((pg_catalog.length(data)))",
        )
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    for data in ["a", "bb", "bb"] {
        tx.execute("SELECT ds.enqueue($1, $2::text)", &[&path, &data]).await.unwrap();
    }
    tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
        .await
        .unwrap();
    let by_index: i64 = tx
        .query_one("SELECT count(*) FROM ds.pending WHERE pg_catalog.length(data) = 2", &[])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    client.batch_execute("DROP INDEX ds.ds_it_pending_extra").await.unwrap();
    assert_eq!(by_index, 2, "the expression index holds the transaction's rows");
    wait_for_tail(&client, &path, 5).await;
    let got: String = messages(&client, &path).await.into_iter().map(|m| m.1).collect();
    assert_eq!(got, "abbbb");
}

/// The jsonb overloads of `ds.append` and `ds.enqueue` store the value as
/// Postgres prints it (compacted, in jsonb's key order) with every digit:
/// they used to parse it into doubles (`12345678901234567890123` became
/// `1.2345678901234568e+22`, `0.1000000000000000055511151231257827` became
/// `0.1`), and a value nested deeper than 128 levels was an internal error
/// (XX000) instead of the depth limit's 22P02.
#[tokio::test]
async fn jsonb_bodies_keep_every_digit_and_too_deep_ones_are_refused_by_name() {
    let client = connect().await;
    let path = unique_path("hot-jsonb-digits");
    client.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    let body = r#"{"n": 12345678901234567890123, "f": 0.1000000000000000055511151231257827, "bb": [1.50, -0.0], "a": "é\"q"}"#;
    let stored = r#"{"a":"é\"q","f":0.1000000000000000055511151231257827,"n":12345678901234567890123,"bb":[1.50,0.0]}"#;
    // What jsonb itself prints, for the record: the same value and order.
    let printed: String =
        client.query_one("SELECT $1::text::jsonb::text", &[&body]).await.unwrap().get(0);
    assert_eq!(printed.replace(": ", ":").replace(", ", ","), stored, "jsonb's own text");
    client.execute("SELECT ds.append($1, $2::text::jsonb)", &[&path, &body]).await.unwrap();
    client.execute("SELECT ds.enqueue($1, $2::text::jsonb)", &[&path, &body]).await.unwrap();
    wait_for_tail(&client, &path, 2 * stored.len() as u64).await;
    let got: Vec<String> = messages(&client, &path).await.into_iter().map(|m| m.1).collect();
    assert_eq!(got, vec![stored, stored], "appended and enqueued, digit for digit");

    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for function in ["ds.append", "ds.enqueue"] {
        let e = client
            .execute(&format!("SELECT {function}($1, $2::text::jsonb)"), &[&path, &deep])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "22P02", "{function}: {e}");
        let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert!(message.contains("nesting depth"), "{function}: {message}");
    }
}

/// The test cluster's server log (`DS_TEST_SERVER_DIR`, set by
/// `scripts/test.sh`) and its current length.
fn server_log() -> (std::path::PathBuf, u64) {
    let dir = std::env::var("DS_TEST_SERVER_DIR")
        .expect("set DS_TEST_SERVER_DIR to the test cluster's directory (it holds server.log)");
    let log = std::path::Path::new(&dir).join("server.log");
    let len = std::fs::metadata(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display())).len();
    (log, len)
}

/// While the extension is dropped the workers have nothing to do, and say
/// nothing about it every pass (the sequencer warned every 500 ms that
/// ds.pending did not exist); created again, enqueued appends are sequenced.
#[tokio::test]
async fn the_workers_wait_quietly_while_the_extension_is_dropped() {
    let (log, start) = server_log();
    let client = connect().await;
    client.batch_execute("DROP EXTENSION durable_streams CASCADE").await.unwrap();
    // Three of the sequencer's idle wake-ups.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    client.batch_execute("CREATE EXTENSION durable_streams").await.unwrap();
    let text = std::fs::read(&log).unwrap();
    let written = String::from_utf8_lossy(&text[start as usize..]);
    let complaints: Vec<&str> =
        written.lines().filter(|l| l.contains("failed, will retry next pass")).collect();
    assert!(complaints.is_empty(), "while dropped: {complaints:#?}");

    let path = unique_path("hot-after-reinstall");
    client.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    client.execute("SELECT ds.enqueue($1, '{\"n\":1}'::jsonb)", &[&path]).await.unwrap();
    wait_for_tail(&client, &path, r#"{"n":1}"#.len() as u64).await;
}
