//! Failover: one sidecar whose `--database-url` names a primary and its
//! synchronous standby (`target_session_attrs=read-write`) carries
//! idempotent producers and live readers across a `kill -9` of the primary
//! and a promotion of the standby by hand. While there is no primary every
//! request answers 503 with `Retry-After`; afterwards every acknowledged
//! (producer, seq) is in the promoted database exactly once, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ds_e2e::cluster::{Cluster, DATABASE};
use ds_e2e::{Sidecar, create_json_stream, free_port, http, next_offset, read_events};
use tokio::time::{sleep, timeout};

/// What one producer saw.
#[derive(Default)]
struct Progress {
    /// Seqs acknowledged (200 or 204) so far: 0..acked.
    acked: AtomicUsize,
    /// 503 answers (each had `Retry-After`).
    unavailable: AtomicUsize,
    /// Retries answered as duplicates (committed, but the first answer was lost).
    duplicates: AtomicUsize,
}

/// Appends `{"p": id, "s": seq}` for seq = 0, 1, ... with producer headers,
/// each request retried until it gets a definitive answer, until `stop`.
async fn produce(
    url: String,
    id: String,
    progress: Arc<Progress>,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let client = http();
    let mut seq = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let body = serde_json::json!({"p": id, "s": seq}).to_string();
        let started = Instant::now();
        let mut first = true;
        loop {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("{id} seq {seq}: no definitive answer within 60 s"));
            }
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("producer-id", &id)
                .header("producer-epoch", "0")
                .header("producer-seq", seq.to_string())
                .body(body.clone())
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            let r = match sent {
                Ok(r) => r,
                Err(e) => return Err(format!("{id} seq {seq}: request failed: {e}")),
            };
            match r.status().as_u16() {
                200 => break,
                204 => {
                    if first {
                        return Err(format!("{id} seq {seq}: first attempt was a duplicate"));
                    }
                    progress.duplicates.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                503 => {
                    if r.headers().get("retry-after").is_none() {
                        return Err(format!("{id} seq {seq}: 503 without Retry-After"));
                    }
                    progress.unavailable.fetch_add(1, Ordering::SeqCst);
                    first = false;
                    sleep(Duration::from_millis(100)).await;
                }
                status => {
                    let text = r.text().await.unwrap_or_default();
                    return Err(format!("{id} seq {seq}: unexpected {status}: {text}"));
                }
            }
        }
        seq += 1;
        progress.acked.store(seq as usize, Ordering::SeqCst);
    }
    Ok(())
}

/// Waits (up to `limit`) until `done()`.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

/// A long-poll reader from `offset` until it has `want` messages; a 503 or
/// a broken request is retried from the same offset. Returns the messages
/// and how many times it had to retry.
async fn long_poll_reader(url: String, mut offset: String, want: usize) -> (Vec<String>, usize) {
    let mut got = Vec::new();
    let mut retries = 0;
    while got.len() < want {
        let r = http()
            .get(format!("{url}?offset={offset}&live=long-poll"))
            .timeout(Duration::from_secs(90))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 200 => {
                offset = next_offset(&r);
                let text = r.text().await.unwrap();
                let values: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
                got.extend(values.iter().map(|v| v.to_string()));
            }
            Ok(r) if r.status() == 204 => offset = next_offset(&r),
            _ => {
                retries += 1;
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
    (got, retries)
}

/// An SSE reader from `offset` until it has `want` messages; a closed or
/// refused event stream is reopened from the last offset it was told.
async fn sse_reader(url: String, mut offset: String, want: usize) -> (Vec<String>, usize) {
    let mut got = Vec::new();
    let mut reopened = 0;
    loop {
        let r = http().get(format!("{url}?offset={offset}&live=sse")).send().await;
        if let Ok(r) = r.and_then(|r| r.error_for_status()) {
            read_events(r, |e| {
                if e.event == "data" {
                    let values: Vec<serde_json::Value> = serde_json::from_str(&e.data).unwrap();
                    got.extend(values.iter().map(|v| v.to_string()));
                } else if e.event == "control" {
                    let control: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                    if let Some(o) = control["streamNextOffset"].as_str() {
                        offset = o.to_owned();
                    }
                }
                got.len() < want
            })
            .await;
        }
        if got.len() >= want {
            return (got, reopened);
        }
        reopened += 1;
        sleep(Duration::from_millis(200)).await;
    }
}

/// Every message of a JSON stream, read with SQL.
async fn messages(db: &tokio_postgres::Client, path: &str) -> Vec<serde_json::Value> {
    let rows = db
        .query(
            "SELECT convert_from(data, 'UTF8') FROM ds.read($1, '-1', 10000) ORDER BY start_offset",
            &[&path],
        )
        .await
        .unwrap();
    assert!(rows.len() < 10000, "read everything in one page");
    rows.iter().map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap()).collect()
}

/// Asserts a 503 with `Retry-After` and a message about the database.
async fn assert_unavailable(what: &str, r: reqwest::Response) {
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").cloned();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 503, "{what} without a primary: {body}");
    assert!(retry_after.is_some(), "{what}: 503 without Retry-After");
    assert!(body.contains("database"), "{what}: the 503 says why: {body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_to_a_synchronous_standby_loses_no_acknowledged_append() {
    let t0 = Instant::now();
    let primary = Cluster::primary("primary", &[]).await;
    let standby = Cluster::standby(&primary, "standby1", &[]).await;
    // Synchronous replication, set after the standby's base backup so the
    // promoted standby does not wait for a standby of its own.
    let admin = primary.sql("postgres").await;
    for setting in ["synchronous_standby_names = 'standby1'", "synchronous_commit = 'on'"] {
        admin.batch_execute(&format!("ALTER SYSTEM SET {setting}")).await.unwrap();
    }
    primary.reload().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sync = admin
            .query(
                "SELECT 1 FROM pg_catalog.pg_stat_replication \
                 WHERE application_name = 'standby1' AND sync_state = 'sync'",
                &[],
            )
            .await
            .unwrap();
        if !sync.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "standby1 never became synchronous");
        sleep(Duration::from_millis(50)).await;
    }
    drop(admin);

    let flags = [
        "--connect-timeout-ms",
        "2000",
        "--pool-timeout-ms",
        "2000",
        "--long-poll-timeout-ms",
        "60000",
    ];
    // Both hosts in the URL form; only the read-write one is used.
    let url = format!(
        "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/{DATABASE}?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let sidecar = Sidecar::start_with(&url, free_port(), &flags).await;
    // The same in the key-value form.
    let keywords = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname={DATABASE} \
         target_session_attrs=read-write",
        primary.port, standby.port
    );
    let other = Sidecar::start_with(&keywords, free_port(), &flags).await;
    // A sidecar on the standby alone: it reads, and refuses writes with 503
    // (a read-only server), dropping the connection that was refused.
    let on_standby = format!(
        "host=127.0.0.1 port={} user=postgres dbname={DATABASE} connect_timeout=2",
        standby.port
    );
    let reader = Sidecar::start_with(&on_standby, free_port(), &flags).await;

    let streams = ["orders-a", "orders-b"];
    for s in streams {
        create_json_stream(&sidecar, s).await;
    }
    let client = http();
    let r = client
        .post(reader.stream("orders-a"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let retry_after = r.headers().contains_key("retry-after");
    let (status, body) = (r.status(), r.text().await.unwrap());
    assert_eq!(status, 503, "an append through a standby: {body}");
    assert!(retry_after, "503 from a standby has Retry-After");
    assert!(body.contains("read-only"), "the 503 says the database is read-only: {body}");
    assert_eq!(reader.metric("ds_sidecar_db_connections_discarded_total").await, 1.0);
    standby.wait_replayed(&primary).await;
    let r = client.get(format!("{}?offset=-1", reader.stream("orders-a"))).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap().as_str()), (200, "[]"));
    let quiet = "quiet";
    let quiet_tail = create_json_stream(&sidecar, quiet).await;
    // Readers opened before the kill; nothing is appended to `quiet` until
    // after the promotion.
    let poll = tokio::spawn(long_poll_reader(sidecar.stream(quiet), quiet_tail.clone(), 2));
    let sse = tokio::spawn(sse_reader(sidecar.stream(quiet), quiet_tail, 2));

    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for i in 0..4 {
        let progress = Arc::new(Progress::default());
        let id = format!("p{i}");
        // p0 and p1 through one sidecar, p2 and p3 through the other.
        let via = if i < 2 { &sidecar } else { &other };
        let task = tokio::spawn(produce(
            via.stream(streams[i % 2]),
            id.clone(),
            progress.clone(),
            stop.clone(),
        ));
        producers.push((id, streams[i % 2], progress, task));
    }
    let acked = |p: &Vec<(String, &str, Arc<Progress>, _)>| -> Vec<usize> {
        p.iter().map(|(_, _, pr, _)| pr.acked.load(Ordering::SeqCst)).collect()
    };
    wait_for("appends before the kill", Duration::from_secs(30), || {
        acked(&producers).iter().all(|&n| n >= 20)
    })
    .await;

    // The primary dies while commits wait for the standby's confirmation:
    // the standby stops counting as synchronous, so every producer's next
    // append is committed locally and streamed, but not acknowledged.
    let admin = primary.sql("postgres").await;
    admin.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'").await.unwrap();
    primary.reload().await;
    // Backends take the new setting at their next command: wait until no
    // producer has advanced for half a second.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = acked(&producers);
        sleep(Duration::from_millis(500)).await;
        if acked(&producers) == before {
            break;
        }
        assert!(Instant::now() < deadline, "commits never started waiting for the standby");
    }
    drop(admin);

    primary.kill9().await;
    let killed_at = Instant::now();
    eprintln!("killed the primary after {:?}; acked {:?}", t0.elapsed(), acked(&producers));

    // No primary at all: everything answers 503 + Retry-After.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client.get(sidecar.url("/health")).send().await.unwrap().status();
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/health still {status} without a primary");
        sleep(Duration::from_millis(50)).await;
    }
    let s = sidecar.stream("orders-a");
    let json = |b: reqwest::RequestBuilder| b.header("content-type", "application/json");
    assert_unavailable("create", json(client.put(sidecar.stream("new"))).send().await.unwrap())
        .await;
    assert_unavailable("append", json(client.post(&s)).body("{}").send().await.unwrap()).await;
    assert_unavailable(
        "close",
        client.post(&s).header("stream-closed", "true").send().await.unwrap(),
    )
    .await;
    assert_unavailable("delete", client.delete(sidecar.stream("orders-b")).send().await.unwrap())
        .await;
    assert_unavailable(
        "fork",
        json(client.put(sidecar.stream("fork")))
            .header("stream-forked-from", "orders-a")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_unavailable("read", client.get(format!("{s}?offset=-1")).send().await.unwrap()).await;
    let head = client.head(&s).send().await.unwrap();
    assert_eq!(head.status(), 503, "HEAD without a primary");
    assert!(head.headers().contains_key("retry-after"));
    wait_for("every producer to see a 503", Duration::from_secs(10), || {
        producers.iter().all(|(_, _, p, _)| p.unavailable.load(Ordering::SeqCst) > 0)
    })
    .await;
    let during = acked(&producers);
    sleep(Duration::from_millis(500)).await;
    assert_eq!(acked(&producers), during, "nothing is acknowledged while there is no primary");

    standby.promote();
    let promoted_at = Instant::now();
    eprintln!("promoted after an outage of {:?}", killed_at.elapsed());
    let target: Vec<usize> = acked(&producers).iter().map(|n| n + 20).collect();
    wait_for("appends after the promotion", Duration::from_secs(30), || {
        acked(&producers).iter().zip(&target).all(|(n, t)| n >= t)
    })
    .await;
    eprintln!("producers carried on {:?} after the promotion", promoted_at.elapsed());
    assert_eq!(client.get(sidecar.url("/health")).send().await.unwrap().status(), 200);

    // The readers opened before the kill: the first message is appended
    // with SQL (only the re-established LISTEN connection can tell the
    // sidecar), the second over HTTP.
    let db = standby.sql(DATABASE).await;
    db.execute("SELECT ds.append($1, '{\"n\":1}'::jsonb)", &[&quiet]).await.unwrap();
    sleep(Duration::from_millis(200)).await;
    let r = json(client.post(sidecar.stream(quiet))).body("{\"n\":2}").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let want = vec!["{\"n\":1}".to_owned(), "{\"n\":2}".to_owned()];
    let (got, retries) =
        timeout(Duration::from_secs(20), poll).await.expect("long-poll reader woken").unwrap();
    assert_eq!(got, want, "long-poll reader ({retries} retries)");
    let (got, reopened) =
        timeout(Duration::from_secs(20), sse).await.expect("SSE reader woken").unwrap();
    assert_eq!(got, want, "SSE reader ({reopened} reopens)");
    // They kept their requests through the outage.
    assert_eq!((retries, reopened), (0, 0), "readers kept their long-poll and SSE stream");
    assert!(sidecar.metric("ds_sidecar_listen_reconnects_total").await >= 1.0);
    // The sidecar that could only read before now writes too.
    let r = json(client.post(reader.stream(quiet))).body("{\"n\":3}").send().await.unwrap();
    assert_eq!(r.status(), 204, "the standby's sidecar writes once it is promoted");

    stop.store(true, Ordering::SeqCst);
    let mut total_unavailable = 0;
    let mut total_duplicates = 0;
    for (id, stream, progress, task) in &mut producers {
        timeout(Duration::from_secs(70), task).await.expect("producer stops").unwrap().unwrap();
        let n = progress.acked.load(Ordering::SeqCst);
        total_unavailable += progress.unavailable.load(Ordering::SeqCst);
        total_duplicates += progress.duplicates.load(Ordering::SeqCst);
        // Every request ended with a definitive answer, so the promoted
        // database holds exactly the acknowledged seqs, once each, in order.
        let seqs: Vec<u64> = messages(&db, stream)
            .await
            .iter()
            .filter(|m| m["p"] == id.as_str())
            .map(|m| m["s"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..n as u64).collect();
        assert_eq!(seqs, expected, "producer {id}: the promoted database has every acked seq once");
    }
    assert!(total_unavailable > 0);
    // The appends whose commit outcome was unknown at the kill answered
    // 503; they had reached the standby, so their retries were duplicates.
    assert!(total_duplicates > 0, "an append in flight at the kill was retried as a duplicate");
    eprintln!(
        "failover test: {total_unavailable} answers 503, {total_duplicates} retries deduplicated, \
         {:?} in all",
        t0.elapsed()
    );
}

/// Postgres never cancels a commit's wait for a synchronous standby (not
/// even at `statement_timeout`), so with that standby away every commit
/// waits. The sidecar stops waiting after `--statement-timeout-ms` +
/// `--commit-wait-timeout-ms` and answers 503 "outcome unknown"; the commit
/// completes when the standby is back (here: when synchronous replication
/// is turned off), so a retry with the same producer seq is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_waiting_for_an_absent_synchronous_standby_is_answered_503_in_time() {
    let primary = Cluster::primary("alone", &[]).await;
    let url = primary.url(DATABASE);
    let sidecar = Sidecar::start_with(
        &url,
        free_port(),
        &["--statement-timeout-ms", "1000", "--commit-wait-timeout-ms", "1000"],
    )
    .await;
    let path = "sync/absent-standby";
    create_json_stream(&sidecar, path).await;
    let admin = primary.sql("postgres").await;
    admin.batch_execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'").await.unwrap();
    primary.reload().await;

    let append = |seq: u64| {
        http()
            .post(sidecar.stream(path))
            .header("content-type", "application/json")
            .header("producer-id", "p")
            .header("producer-epoch", "0")
            .header("producer-seq", seq.to_string())
            .body(format!("{{\"seq\":{seq}}}"))
            .timeout(Duration::from_secs(30))
            .send()
    };
    let started = Instant::now();
    let r = append(0).await.unwrap();
    let waited = started.elapsed();
    let retry_after = r.headers().get("retry-after").cloned();
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(retry_after.is_some(), "503 without Retry-After");
    assert!(body.contains("did not confirm") && body.contains("may or may not"), "{body}");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "answered after {waited:?}, expected about 2 s (statement + commit-wait timeouts)"
    );

    // The standby "comes back": the waiting commit completes.
    admin.batch_execute("ALTER SYSTEM RESET synchronous_standby_names").await.unwrap();
    primary.reload().await;
    let db = primary.sql(DATABASE).await;
    wait_for_rows(&db, path, 1).await;
    let r = append(0).await.unwrap();
    assert_eq!(r.status(), 204, "the retry of the committed seq is a duplicate");
    let r = append(1).await.unwrap();
    assert_eq!(r.status(), 200, "appends go on");
    assert_eq!(messages(&db, path).await.len(), 2);
}

/// Waits (up to 20 s) until the stream has `n` messages.
async fn wait_for_rows(db: &tokio_postgres::Client, path: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while messages(db, path).await.len() < n {
        assert!(Instant::now() < deadline, "{path}: the waiting commit never completed");
        sleep(Duration::from_millis(100)).await;
    }
}
