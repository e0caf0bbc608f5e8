//! Fault and scale tests the official conformance suite does not cover.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ds_e2e::{
    Event, Sidecar, create_json_stream, create_stream, http, next_offset, read_events, sql,
    unique_path,
};
use tokio::time::timeout;

/// The whole stream from the start, as one catch-up read.
async fn read_all(sidecar: &Sidecar, path: &str) -> String {
    let url = format!("{}?offset=-1", sidecar.stream(path));
    http().get(url).send().await.unwrap().text().await.unwrap()
}

/// The messages of a JSON array body, each re-serialised compactly.
fn json_messages(body: &str) -> Vec<String> {
    let values: Vec<serde_json::Value> = serde_json::from_str(body).expect("a JSON array");
    values.iter().map(|v| v.to_string()).collect()
}

/// Messages carried by an SSE data event of a JSON stream.
fn messages(event: &Event) -> Vec<String> {
    json_messages(&event.data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listen_connection_loss_loses_no_append() {
    let sidecar = Sidecar::start(&["--long-poll-timeout-ms", "20000"]).await;
    let path = unique_path("listen-loss");
    let tail = create_json_stream(&sidecar, &path).await;
    let db = sql().await;

    let mut polls = Vec::new();
    for _ in 0..3 {
        let url = format!("{}?offset={tail}&live=long-poll", sidecar.stream(&path));
        polls.push(tokio::spawn(async move {
            let r = http().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    let mut sse = Vec::new();
    for _ in 0..3 {
        let url = format!("{}?offset={tail}&live=sse", sidecar.stream(&path));
        sse.push(tokio::spawn(async move {
            let r = http().get(url).send().await.unwrap();
            let mut got = Vec::new();
            read_events(r, |e| {
                if e.event == "data" {
                    got.extend(messages(&e));
                }
                got.is_empty()
            })
            .await;
            got
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed: i64 = db
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE query LIKE 'LISTEN %durable_streams%' AND datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the sidecar's LISTEN connection was found and terminated");
    // Appended by SQL, not over HTTP: only the database can tell the sidecar.
    db.execute("SELECT ds.append($1, '{\"n\":1}'::jsonb)", &[&path]).await.unwrap();

    for p in polls {
        let (status, body) =
            timeout(Duration::from_secs(15), p).await.expect("long-poll answered").unwrap();
        assert_eq!((status, body.as_str()), (200, "[{\"n\":1}]"));
    }
    for s in sse {
        let got = timeout(Duration::from_secs(15), s).await.expect("SSE delivered").unwrap();
        assert_eq!(got, vec!["{\"n\":1}"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_sse_clients_each_receive_every_message_in_order() {
    const CLIENTS: usize = 1000;
    const MESSAGES: usize = 10;
    let sidecar = Sidecar::start(&[]).await;
    let path = unique_path("fan-out");
    let tail = create_json_stream(&sidecar, &path).await;

    let connected = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let url = format!("{}?offset={tail}&live=sse", sidecar.stream(&path));
        let connected = connected.clone();
        clients.push(tokio::spawn(async move {
            let r = http().get(url).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            connected.fetch_add(1, Ordering::Relaxed);
            let mut got = Vec::new();
            read_events(r, |e| {
                if e.event == "data" {
                    got.extend(messages(&e));
                }
                got.len() < MESSAGES
            })
            .await;
            got
        }));
    }
    let wait = tokio::time::Instant::now() + Duration::from_secs(60);
    while connected.load(Ordering::Relaxed) < CLIENTS {
        assert!(tokio::time::Instant::now() < wait, "all SSE clients connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..MESSAGES {
        let r = http()
            .post(sidecar.stream(&path))
            .header("content-type", "application/json")
            .body(format!("{{\"n\":{n}}}"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let expected: Vec<String> = (0..MESSAGES).map(|n| format!("{{\"n\":{n}}}")).collect();
    for c in clients {
        let got = timeout(Duration::from_secs(60), c).await.expect("client finished").unwrap();
        assert_eq!(got, expected);
    }
}

#[tokio::test]
async fn full_waiter_and_client_limits_answer_503() {
    let sidecar = Sidecar::start(&["--max-sse-clients", "2", "--max-long-poll-waiters", "2"]).await;
    let path = unique_path("limits");
    let tail = create_json_stream(&sidecar, &path).await;
    let sse_url = format!("{}?offset={tail}&live=sse", sidecar.stream(&path));
    let poll_url = format!("{}?offset={tail}&live=long-poll", sidecar.stream(&path));

    let mut held = Vec::new();
    for _ in 0..2 {
        let r = http().get(&sse_url).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        held.push(r);
    }
    let r = http().get(&sse_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));

    let polls: Vec<_> = (0..2).map(|_| tokio::spawn(http().get(&poll_url).send())).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = http().get(&poll_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    drop(held);
    for p in polls {
        p.abort();
    }
}

#[tokio::test]
async fn per_stream_waiter_limit_answers_503_for_that_stream_only() {
    let sidecar = Sidecar::start(&["--max-waiters-per-stream", "1"]).await;
    let (a, b) = (unique_path("per-stream-a"), unique_path("per-stream-b"));
    let tail_a = create_json_stream(&sidecar, &a).await;
    let tail_b = create_json_stream(&sidecar, &b).await;
    let sse = |path: &str, tail: &str| format!("{}?offset={tail}&live=sse", sidecar.stream(path));

    let held = http().get(sse(&a, &tail_a)).send().await.unwrap();
    assert_eq!(held.status().as_u16(), 200);
    let r = http().get(sse(&a, &tail_a)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503, "the stream is full");
    assert!(r.headers().contains_key("retry-after"));
    let r = http()
        .get(format!("{}?offset={tail_a}&live=long-poll", sidecar.stream(&a)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503, "long-polls count against the same stream limit");
    let other = http().get(sse(&b, &tail_b)).send().await.unwrap();
    assert_eq!(other.status().as_u16(), 200, "other streams are unaffected");
    drop(held);
}

#[tokio::test]
async fn truncated_bodies_are_rejected_and_request_ids_echoed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sidecar = Sidecar::start(&[]).await;
    let path = unique_path("truncated");
    create_stream(&sidecar, &path, "text/plain").await;

    // Content-Length says 10, the client sends 5 bytes and stops.
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.port)).await.unwrap();
    let request = format!(
        "POST /v1/stream/{path} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nhello"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    socket.shutdown().await.unwrap();
    let mut response = String::new();
    timeout(Duration::from_secs(10), socket.read_to_string(&mut response)).await.unwrap().unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");

    let r = http()
        .get(format!("{}?offset=-1", sidecar.stream(&path)))
        .header("x-request-id", "e2e-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "e2e-42");
    assert_eq!(r.text().await.unwrap(), "", "nothing of the truncated body was appended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_sidecar_resumes_without_gap_or_duplicate() {
    const MESSAGES: usize = 60;
    let first = Sidecar::start(&["--long-poll-timeout-ms", "2000"]).await;
    let port = first.port;
    let path = unique_path("restart");
    let mut offset = create_json_stream(&first, &path).await;
    let url = first.stream(&path);

    let writer = {
        let path = path.clone();
        tokio::spawn(async move {
            let db = sql().await;
            for n in 0..MESSAGES {
                db.execute(
                    "SELECT ds.append($1, jsonb_build_object('n', $2::int))",
                    &[&path, &(n as i32)],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };

    let mut received = Vec::new();
    let mut first = Some(first);
    let mut second = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.len() < MESSAGES {
        assert!(tokio::time::Instant::now() < deadline, "received everything in time");
        if received.len() >= MESSAGES / 3
            && let Some(s) = first.take()
        {
            s.kill().await;
            second = Some(Sidecar::start_on(port, &["--long-poll-timeout-ms", "2000"]).await);
        }
        let r = match http().get(format!("{url}?offset={offset}&live=long-poll")).send().await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match r.status().as_u16() {
            200 => {
                let next = next_offset(&r);
                let Ok(body) = r.text().await else { continue };
                received.extend(json_messages(&body));
                offset = next;
            }
            204 => offset = next_offset(&r),
            other => panic!("unexpected status {other}"),
        }
    }
    writer.await.unwrap();
    assert!(second.is_some(), "the sidecar was restarted mid-stream");
    let expected: Vec<String> = (0..MESSAGES).map(|n| format!("{{\"n\":{n}}}")).collect();
    assert_eq!(received, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_gives_each_concurrent_append_its_own_outcome() {
    const PRODUCERS: usize = 32;
    const SEQS: usize = 15;
    let sidecar = Sidecar::start(&["--append-lanes", "2"]).await;
    let path = unique_path("group-commit");
    create_json_stream(&sidecar, &path).await;

    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let url = sidecar.stream(&path);
        tasks.push(tokio::spawn(async move {
            let client = http();
            let mut statuses = Vec::new();
            for seq in 0..SEQS {
                // Every third producer also sends a broken body between its appends.
                if p % 3 == 0 {
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body("{broken")
                        .send()
                        .await
                        .unwrap();
                    statuses.push(r.status().as_u16());
                }
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("producer-id", format!("p{p}"))
                    .header("producer-epoch", "0")
                    .header("producer-seq", seq.to_string())
                    .body(format!("{{\"p\":{p},\"s\":{seq}}}"))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    for (p, t) in tasks.into_iter().enumerate() {
        let statuses = t.await.unwrap();
        let expected: Vec<u16> =
            (0..SEQS).flat_map(|_| if p % 3 == 0 { vec![400, 200] } else { vec![200] }).collect();
        assert_eq!(statuses, expected, "producer {p}: each append its own outcome");
    }
    let body = read_all(&sidecar, &path).await;
    let values: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(values.len(), PRODUCERS * SEQS, "every append exactly once");
    for p in 0..PRODUCERS {
        let seqs: Vec<i64> =
            values.iter().filter(|v| v["p"] == p).map(|v| v["s"].as_i64().unwrap()).collect();
        assert_eq!(seqs, (0..SEQS as i64).collect::<Vec<_>>(), "producer {p} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_locked_by_sql_delays_only_its_own_appends_in_order() {
    let sidecar = Sidecar::start(&["--append-lanes", "1"]).await;
    let locked = unique_path("locked");
    let free = unique_path("free");
    create_json_stream(&sidecar, &locked).await;
    create_json_stream(&sidecar, &free).await;
    let mut db = sql().await;
    let tx = db.transaction().await.unwrap();
    // An application transaction appends and stays open: it holds the row lock.
    tx.execute("SELECT ds.append($1, '{\"by\":\"sql\"}'::jsonb)", &[&locked]).await.unwrap();

    // A producer sends five appends to the locked stream, in order.
    let mut waiting = Vec::new();
    for seq in 0..5 {
        let url = sidecar.stream(&locked);
        waiting.push(tokio::spawn(async move {
            let r = http()
                .post(url)
                .header("content-type", "application/json")
                .header("producer-id", "held")
                .header("producer-epoch", "0")
                .header("producer-seq", seq.to_string())
                .body(format!("{{\"seq\":{seq}}}"))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The same lane keeps committing appends to other streams meanwhile.
    for i in 0..20 {
        let r = timeout(
            Duration::from_secs(2),
            http()
                .post(sidecar.stream(&free))
                .header("content-type", "application/json")
                .body(format!("{{\"i\":{i}}}"))
                .send(),
        )
        .await
        .expect("an unlocked stream is not held up")
        .unwrap();
        assert_eq!(r.status().as_u16(), 204);
    }
    assert!(waiting.iter().all(|t| !t.is_finished()), "appends to the locked stream wait");

    tx.commit().await.unwrap();
    for t in waiting {
        assert_eq!(t.await.unwrap(), 200, "every producer append in order, none a gap");
    }
    let body = read_all(&sidecar, &locked).await;
    assert_eq!(
        json_messages(&body),
        vec![
            r#"{"by":"sql"}"#,
            r#"{"seq":0}"#,
            r#"{"seq":1}"#,
            r#"{"seq":2}"#,
            r#"{"seq":3}"#,
            r#"{"seq":4}"#
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_that_waits_past_lock_timeout_gets_503_and_changes_nothing() {
    let sidecar = Sidecar::start(&["--lock-timeout-ms", "300"]).await;
    let path = unique_path("lock-timeout");
    create_json_stream(&sidecar, &path).await;
    let mut db = sql().await;
    let tx = db.transaction().await.unwrap();
    tx.execute("SELECT ds.append($1, '{\"by\":\"sql\"}'::jsonb)", &[&path]).await.unwrap();

    let r = http()
        .post(sidecar.stream(&path))
        .header("content-type", "application/json")
        .body(r#"{"late":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    tx.rollback().await.unwrap();

    let body = read_all(&sidecar, &path).await;
    assert_eq!(body, "[]", "neither the rolled-back nor the timed-out append is there");
}
