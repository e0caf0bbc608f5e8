//! Streams on physical standbys: what a primary commits, a hot standby
//! replays and serves to readers.

use std::time::{Duration, Instant};

use ds_e2e::cluster::{Cluster, DATABASE};
use ds_e2e::{Sidecar, every_ds_function, free_port, http, next_offset, read_events};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_standby_reads_what_the_primary_committed() {
    let primary = Cluster::primary("primary", &[]).await;
    let standby = Cluster::standby(&primary, "standby1", &[]).await;
    let db = primary.sql(DATABASE).await;
    db.batch_execute(
        "SELECT ds.create('orders', 'application/json');
         SELECT ds.append('orders', '{\"n\":1}'::jsonb);
         SELECT ds.append('orders', '{\"n\":2}'::jsonb);",
    )
    .await
    .unwrap();
    standby.wait_replayed(&primary).await;
    let replica = standby.sql(DATABASE).await;
    let rows = replica
        .query(
            "SELECT convert_from(data, 'UTF8') FROM ds.read('orders', '-1') ORDER BY start_offset",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, ["{\"n\":1}", "{\"n\":2}"]);

    // Every function that writes says where to run it (25006), instead of
    // failing inside Postgres with an internal error.
    for (statement, function) in [
        ("SELECT ds.append('orders', '{\"n\":3}'::jsonb)", "ds.append"),
        ("SELECT * FROM ds.try_append('orders', '{}'::bytea, 'application/json')", "ds.try_append"),
        ("SELECT * FROM ds.create('other', 'text/plain')", "ds.create"),
        ("SELECT * FROM ds.fork('orders-fork', 'orders')", "ds.fork"),
        ("SELECT ds.close('orders')", "ds.close"),
        ("SELECT ds.delete('orders')", "ds.delete"),
        ("SELECT * FROM ds.rotate('orders')", "ds.rotate"),
        ("SELECT ds.grant('postgres', 'x/**', 'read')", "ds.grant"),
        ("SELECT ds.set_quota('postgres', 1, 1)", "ds.set_quota"),
        ("SELECT ds.touch(ARRAY['orders'])", "ds.touch"),
    ] {
        let e = replica.batch_execute(statement).await.expect_err(statement);
        let db = e.as_db_error().unwrap_or_else(|| panic!("{statement}: {e}"));
        assert_eq!(db.code().code(), "25006", "{statement}: {}", db.message());
        assert!(
            db.message().contains(function) && db.message().contains("hot standby"),
            "{statement}: {}",
            db.message()
        );
    }
}

// ---------------------------------------------------------------------------
// Sidecars reading from a hot standby (`--read-database-url`).

/// The sum of a labelled metric's samples whose labels contain `labels`
/// (e.g. `ds_sidecar_replica_reads_total`, `target="replica"`).
async fn labelled(sidecar: &Sidecar, name: &str, labels: &str) -> f64 {
    sidecar
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn replica_reads(sidecar: &Sidecar) -> f64 {
    labelled(sidecar, "ds_sidecar_replica_reads_total", "target=\"replica\"").await
}

async fn fallbacks(sidecar: &Sidecar) -> f64 {
    labelled(sidecar, "ds_sidecar_replica_reads_total", "target=\"primary\"").await
}

/// A sidecar writing to `primary` and reading from `standby`.
async fn standby_sidecar(primary: &Cluster, standby: &Cluster, extra: &[&str]) -> Sidecar {
    let replica = standby.url(DATABASE);
    let mut flags = vec!["--read-database-url", replica.as_str()];
    flags.extend_from_slice(extra);
    let sidecar = Sidecar::start_with(&primary.url(DATABASE), free_port(), &flags).await;
    // The standby's probe connects within a moment; until then reads use the primary.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sidecar.metric("ds_sidecar_replicas_up").await < 1.0 {
        assert!(Instant::now() < deadline, "the standby never came up in the sidecar");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sidecar
}

/// The messages of a JSON array body.
fn messages(body: &str) -> Vec<i64> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v.as_array().unwrap().iter().map(|m| m["n"].as_i64().unwrap()).collect()
}

async fn create_json(sidecar: &Sidecar, path: &str, extra: &[(&str, &str)]) {
    let mut request = http().put(sidecar.stream(path)).header("content-type", "application/json");
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let status = request.send().await.unwrap().status();
    assert!(status == 201 || status == 200, "create: {status}");
}

async fn append_json(sidecar: &Sidecar, path: &str, n: i64) -> String {
    let r = http()
        .post(sidecar.stream(path))
        .header("content-type", "application/json")
        .body(format!("{{\"n\":{n}}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "append {n}");
    next_offset(&r)
}

/// Long-polls `url` from the start until `count` messages arrived.
async fn long_poll_reader(url: String, count: usize) -> Vec<i64> {
    let mut got = Vec::new();
    let mut offset = "-1".to_owned();
    while got.len() < count {
        let r = http().get(format!("{url}?offset={offset}&live=long-poll")).send().await.unwrap();
        let status = r.status().as_u16();
        assert!(status == 200 || status == 204, "long-poll: {status}");
        offset = next_offset(&r);
        if status == 200 {
            got.extend(messages(&r.text().await.unwrap()));
        }
    }
    got
}

/// Reads SSE from the start until `count` messages arrived.
async fn sse_reader(url: String, count: usize) -> Vec<i64> {
    let mut got = Vec::new();
    let mut offset = "-1".to_owned();
    while got.len() < count {
        let r = http().get(format!("{url}?offset={offset}&live=sse")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        read_events(r, |e| {
            match e.event.as_str() {
                "data" => got.extend(messages(&e.data)),
                "control" => {
                    let c: serde_json::Value = serde_json::from_str(&e.data).unwrap();
                    offset = c["streamNextOffset"].as_str().unwrap().to_owned();
                }
                _ => {}
            }
            got.len() < count
        })
        .await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_through_the_primary_reach_standby_readers_in_order() {
    // A standby that applies commits 50 ms late: without the gate, a woken
    // reader would re-read too early and miss what woke it.
    let primary = Cluster::primary("rr-primary", &[]).await;
    let standby =
        Cluster::standby(&primary, "rr-standby", &["recovery_min_apply_delay = '50ms'"]).await;
    let writer = Sidecar::start_with(&primary.url(DATABASE), free_port(), &[]).await;
    let reader = standby_sidecar(&primary, &standby, &[]).await;
    let path = "replicated/orders";
    create_json(&writer, path, &[]).await;
    standby.wait_replayed(&primary).await;

    const N: usize = 300;
    let url = reader.stream(path);
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(tokio::spawn(sse_reader(url.clone(), N)));
        readers.push(tokio::spawn(long_poll_reader(url.clone(), N)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..N as i64 {
        append_json(&writer, path, n).await;
    }
    // Well within the long-poll timeout (30 s) and SSE duration (60 s): a
    // lost wake-up would only be noticed by them.
    let expected: Vec<i64> = (0..N as i64).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for r in readers {
        let got = tokio::time::timeout_at(deadline, r)
            .await
            .expect("every reader got every append within 15 s")
            .unwrap();
        assert_eq!(got, expected, "in order, no gap, no duplicate");
    }
    assert!(replica_reads(&reader).await > 0.0, "the standby served the reads");
    assert_eq!(fallbacks(&reader).await, 0.0, "no read needed the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_reads_its_own_writes_from_a_lagging_standby() {
    let primary = Cluster::primary("ryw-primary", &[]).await;
    let standby =
        Cluster::standby(&primary, "ryw-standby", &["recovery_min_apply_delay = '200ms'"]).await;
    let sidecar = standby_sidecar(&primary, &standby, &[]).await;
    let path = "replicated/ryw";
    // Even the create: the next read finds the stream.
    create_json(&sidecar, path, &[]).await;
    let r = http().head(sidecar.stream(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "HEAD right after PUT");
    let mut offset = "-1".to_owned();
    for n in 0..10 {
        let tail = append_json(&sidecar, path, n).await;
        let r =
            http().get(format!("{}?offset={offset}", sidecar.stream(path))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(next_offset(&r), tail, "the read right after the append sees it");
        assert_eq!(messages(&r.text().await.unwrap()), [n]);
        offset = tail;
    }
    assert!(replica_reads(&sidecar).await >= 11.0, "served by the standby");
    assert_eq!(fallbacks(&sidecar).await, 0.0);
    assert!(sidecar.metric("ds_sidecar_replica_replay_waits_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ttl_stream_read_on_the_standby_is_refreshed_on_the_primary() {
    let primary = Cluster::primary("ttl-primary", &[]).await;
    let standby = Cluster::standby(&primary, "ttl-standby", &[]).await;
    let sidecar = standby_sidecar(&primary, &standby, &[]).await;
    let path = "replicated/ttl";
    create_json(&sidecar, path, &[("stream-ttl", "3600")]).await;
    append_json(&sidecar, path, 1).await;
    let db = primary.sql(DATABASE).await;
    age_last_access(&db, path).await;
    standby.wait_replayed(&primary).await;

    // On the standby itself, reads work and ds.touch refuses clearly.
    let replica = standby.sql(DATABASE).await;
    let body: Vec<u8> =
        replica.query_one("SELECT body FROM ds.read_chunk($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(body, b"[{\"n\":1}]");
    let e = replica.query_one("SELECT ds.touch(ARRAY[$1])", &[&path]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{e}");

    let before = replica_reads(&sidecar).await;
    let r = http().get(format!("{}?offset=-1", sidecar.stream(path))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(messages(&r.text().await.unwrap()), [1]);
    assert!(replica_reads(&sidecar).await > before, "read on the standby");
    wait_for_ttl_restart(&db, path, "the TTL was not restarted on the primary").await;
    assert!(sidecar.metric("ds_sidecar_replica_touches_forwarded_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_of_a_stopped_standby_are_served_by_the_primary() {
    let primary = Cluster::primary("down-primary", &[]).await;
    let standby = Cluster::standby(&primary, "down-standby", &[]).await;
    let sidecar = standby_sidecar(&primary, &standby, &["--max-replica-lag-ms", "500"]).await;
    let path = "replicated/down";
    create_json(&sidecar, path, &[]).await;
    append_json(&sidecar, path, 0).await;
    let r = http().get(format!("{}?offset=-1", sidecar.stream(path))).send().await.unwrap();
    assert_eq!(messages(&r.text().await.unwrap()), [0]);

    // Live readers wait on the standby when it stops.
    let poll = tokio::spawn(long_poll_reader(sidecar.stream(path), 3));
    let sse = tokio::spawn(sse_reader(sidecar.stream(path), 3));
    tokio::time::sleep(Duration::from_millis(300)).await;
    standby.stop();
    // Catch-up, HEAD, long-poll and SSE all answer, in bounded time.
    let started = Instant::now();
    let r = http().get(format!("{}?offset=-1", sidecar.stream(path))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(messages(&r.text().await.unwrap()), [0]);
    assert_eq!(http().head(sidecar.stream(path)).send().await.unwrap().status(), 200);
    let tail = append_json(&sidecar, path, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    append_json(&sidecar, path, 2).await;
    let late = tokio::spawn(long_poll_reader(sidecar.stream(path), 3));
    for reader in [poll, sse, late] {
        let got = tokio::time::timeout(Duration::from_secs(15), reader).await.unwrap().unwrap();
        assert_eq!(got, [0, 1, 2]);
    }
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
    assert!(fallbacks(&sidecar).await > 0.0, "the primary served them");
    assert_eq!(sidecar.metric("ds_sidecar_replicas_up").await, 0.0);

    // Back up: reads return to the standby.
    standby.start();
    standby.wait_streaming(&primary).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sidecar.metric("ds_sidecar_replicas_up").await < 1.0 {
        assert!(Instant::now() < deadline, "the standby never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = replica_reads(&sidecar).await;
    let r = http().get(format!("{}?offset={tail}", sidecar.stream(path))).send().await.unwrap();
    assert_eq!(messages(&r.text().await.unwrap()), [2]);
    assert!(replica_reads(&sidecar).await > before);
}

/// Runs the sidecar binary with `args` and returns its exit status and stderr.
async fn run_sidecar(args: &[&str]) -> (bool, String) {
    let bin = std::env::var("DS_SIDECAR_BIN").expect("DS_SIDECAR_BIN");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the sidecar exits at once")
    .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_read_database_url_stops_the_sidecar_with_a_clear_error() {
    let primary = Cluster::primary("bad-primary", &[]).await;
    let url = primary.url(DATABASE);
    let listen = format!("127.0.0.1:{}", free_port());
    let base =
        ["--database-url", url.as_str(), "--listen", listen.as_str(), "--metrics-listen", "off"];

    let mut args = base.to_vec();
    args.extend(["--read-database-url", "postgresql://standby/db", "--read-database-url", "nope"]);
    let (ok, stderr) = run_sidecar(&args).await;
    assert!(!ok);
    assert!(stderr.contains("--read-database-url #2 is not a valid Postgres URL"), "{stderr}");

    // A database without the extension: refused at startup, naming the fix.
    let no_extension = primary.url("postgres");
    let mut args = base.to_vec();
    args.extend(["--read-database-url", no_extension.as_str()]);
    let (ok, stderr) = run_sidecar(&args).await;
    assert!(!ok);
    assert!(stderr.contains("has no durable_streams extension"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_tokens_standby_reads_run_as_the_role_and_ttls_are_refreshed_as_it() {
    let primary = Cluster::primary("jwt-primary", &[]).await;
    let standby = Cluster::standby(&primary, "jwt-standby", &[]).await;
    let db = primary.sql(DATABASE).await;
    let functions = every_ds_function(&db).await;
    db.batch_execute(&format!(
        "CREATE ROLE rr_reader NOLOGIN; CREATE ROLE rr_other NOLOGIN;
         GRANT USAGE ON SCHEMA ds TO rr_reader, rr_other;
         GRANT EXECUTE ON FUNCTION {functions} TO rr_reader, rr_other;
         SELECT ds.grant('rr_reader', 'tenant/**', 'all');"
    ))
    .await
    .unwrap();
    let mut flags = ds_e2e::JWT_FLAGS.to_vec();
    flags.extend(["--max-replica-lag-ms", "5000"]);
    let sidecar = standby_sidecar(&primary, &standby, &flags).await;
    let (reader, other) = (ds_e2e::token("rr_reader", 300), ds_e2e::token("rr_other", 300));
    let path = "tenant/ttl";
    let r = http()
        .put(sidecar.stream(path))
        .bearer_auth(&reader)
        .header("content-type", "text/plain")
        .header("stream-ttl", "3600")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    age_last_access(&db, path).await;
    standby.wait_replayed(&primary).await;

    // A role without a grant is refused by the standby, as by the primary.
    let r = http().get(format!("{}?offset=-1", sidecar.stream(path))).bearer_auth(&other);
    assert_eq!(r.send().await.unwrap().status(), 403);
    let before = replica_reads(&sidecar).await;
    let r = http().get(format!("{}?offset=-1", sidecar.stream(path))).bearer_auth(&reader);
    let r = r.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello");
    assert!(replica_reads(&sidecar).await > before, "read on the standby");
    wait_for_ttl_restart(&db, path, "the TTL was not restarted as the reader's role").await;
    assert_eq!(sidecar.metric("ds_sidecar_replica_touch_errors_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_lagging_past_the_bound_hands_its_readers_to_the_primary() {
    let primary = Cluster::primary("lag-primary", &[]).await;
    // Applies every commit 30 s late: far past --max-replica-lag-ms.
    let standby =
        Cluster::standby(&primary, "lag-standby", &["recovery_min_apply_delay = '30s'"]).await;
    let sidecar = standby_sidecar(&primary, &standby, &["--max-replica-lag-ms", "1000"]).await;
    let path = "replicated/lagging";
    let started = Instant::now();
    create_json(&sidecar, path, &[]).await;
    let tail = append_json(&sidecar, path, 0).await;
    let r = http().get(format!("{}?offset=-1", sidecar.stream(path))).send().await.unwrap();
    assert_eq!(r.status(), 200, "not a 404 from the lagging standby");
    assert_eq!(messages(&r.text().await.unwrap()), [0]);
    let poll = tokio::spawn(long_poll_reader(sidecar.stream(path), 2));
    tokio::time::sleep(Duration::from_millis(200)).await;
    append_json(&sidecar, path, 1).await;
    let got = tokio::time::timeout(Duration::from_secs(10), poll).await.unwrap().unwrap();
    assert_eq!(got, [0, 1]);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(
        labelled(&sidecar, "ds_sidecar_replica_fallbacks_total", "reason=\"lag\"").await >= 1.0
    );
    // While it lags, reads skip it without waiting again.
    let t = Instant::now();
    let r = http().get(format!("{}?offset={tail}", sidecar.stream(path))).send().await.unwrap();
    assert_eq!(messages(&r.text().await.unwrap()), [1]);
    assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
}

/// Moves `path`'s last access 30 minutes back on the primary, so that a
/// sliding-TTL restart shows (see [`wait_for_ttl_restart`]).
async fn age_last_access(db: &tokio_postgres::Client, path: &str) {
    db.execute(
        "UPDATE ds.streams SET last_access = now() - interval '30 minutes' WHERE path = $1",
        &[&path],
    )
    .await
    .unwrap();
}

/// Waits (up to 10 s) until the primary shows `path` accessed within the
/// last minute (its sliding TTL restarted); `failure` says what did not happen.
async fn wait_for_ttl_restart(db: &tokio_postgres::Client, path: &str, failure: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh: bool = db
            .query_one(
                "SELECT last_access > now() - interval '1 minute' FROM ds.streams WHERE path = $1",
                &[&path],
            )
            .await
            .unwrap()
            .get(0);
        if fresh {
            return;
        }
        assert!(Instant::now() < deadline, "{failure}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
