//! Security of the HTTP face: authentication, acting as roles, CORS,
//! headers, rate and connection limits, session settings, and exposure.
//! Each test starts its own sidecar(s) against the test cluster.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ds_e2e::{
    JWT_FLAGS, JWT_SECRET, Sidecar, database_url, database_url_as, free_port, http, next_offset,
    read_events, sql, token, unique_path,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_postgres::NoTls;

/// The sidecar's own login role in tests that need one that is not a
/// superuser, and the roles its tokens name.
const SIDECAR_ROLE: &str = "ds_e2e_sidecar";
const MEMBER: &str = "ds_e2e_member";
const STRANGER: &str = "ds_e2e_stranger";
const NO_EXECUTE: &str = "ds_e2e_noexec";
const NO_GRANT: &str = "ds_e2e_nogrant";

/// Every `ds.*` function, for `GRANT EXECUTE`.
const FUNCTIONS: &str = "SELECT string_agg(p.oid::regprocedure::text, ', ') FROM pg_proc p \
     WHERE p.pronamespace = 'ds'::regnamespace";

/// Whether the extension has path grants (`ds.grant`).
async fn has_path_grants(db: &tokio_postgres::Client) -> bool {
    db.query_one(
        "SELECT exists(SELECT 1 FROM pg_proc WHERE proname = 'grant' \
         AND pronamespace = 'ds'::regnamespace)",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Creates (once) the roles of the role tests: a non-superuser login role
/// for the sidecar, a member role it may act as (granted `e2e/**` when the
/// extension has path grants), a role it is not a member of, one without
/// EXECUTE, and one with EXECUTE but no path grant.
async fn roles() -> tokio_postgres::Client {
    let db = sql().await;
    let functions: String = db.query_one(FUNCTIONS, &[]).await.unwrap().get(0);
    let setup = format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{SIDECAR_ROLE}') THEN
             CREATE ROLE {SIDECAR_ROLE} LOGIN;
             CREATE ROLE {MEMBER} NOLOGIN;
             CREATE ROLE {STRANGER} NOLOGIN;
             CREATE ROLE {NO_EXECUTE} NOLOGIN;
             CREATE ROLE {NO_GRANT} NOLOGIN;
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA ds TO {SIDECAR_ROLE}, {MEMBER}, {STRANGER}, {NO_EXECUTE}, {NO_GRANT};
         GRANT EXECUTE ON FUNCTION {functions} TO {SIDECAR_ROLE}, {MEMBER}, {STRANGER}, {NO_GRANT};
         GRANT {MEMBER}, {NO_EXECUTE}, {NO_GRANT} TO {SIDECAR_ROLE};"
    );
    db.batch_execute(&setup).await.unwrap();
    if has_path_grants(&db).await {
        db.batch_execute(&format!("SELECT ds.grant('{MEMBER}', 'e2e/**', 'all')")).await.unwrap();
    }
    db
}

/// A sidecar with `--auth jwt` logging in as the non-superuser role.
async fn role_sidecar(extra: &[&str]) -> Sidecar {
    let mut flags = JWT_FLAGS.to_vec();
    flags.extend_from_slice(extra);
    Sidecar::start_with(&database_url_as(SIDECAR_ROLE), free_port(), &flags).await
}

fn bearer(role: &str) -> String {
    format!("Bearer {}", token(role, 600))
}

async fn status(request: reqwest::RequestBuilder) -> u16 {
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn requests_without_a_valid_token_get_401() {
    let jwks = concat!(env!("CARGO_MANIFEST_DIR"), "/../../sidecar/src/auth/testdata/jwks.json");
    let mut flags = JWT_FLAGS.to_vec();
    flags.extend(["--jwks-file", jwks, "--jwt-leeway-seconds", "0"]);
    let sidecar = Sidecar::start(&flags).await;
    let url = sidecar.stream(&unique_path("auth"));

    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"durable_streams\"");

    let challenge =
        |r: &reqwest::Response| r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    for (auth, why) in [
        ("Bearer not-a-jwt".to_owned(), "malformed token"),
        (format!("Bearer {}", token("ds_e2e_member", -60)), "token expired"),
        ("Basic dXNlcjpwYXNz".to_owned(), "malformed token"),
    ] {
        let r = http().get(&url).header("authorization", &auth).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{why}");
        assert_eq!(
            challenge(&r),
            format!(
                "Bearer realm=\"durable_streams\", error=\"invalid_token\", error_description=\"{why}\""
            )
        );
    }
    // Signed with another secret.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"role": "postgres", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the secret at all, but 32+ bytes"),
    )
    .unwrap();
    let r = http().get(&url).bearer_auth(&forged).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(challenge(&r).contains("invalid signature"));

    // ?token= works like the header, and a bad one is refused the same way.
    let r = http().get(format!("{url}?offset=-1&token=garbage")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let good = token("postgres_is_not_used", 600);
    let r = http().get(format!("{url}?token={good}")).bearer_auth(&good).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400, "both header and parameter");

    // An RS256 token from the JWKS passes authentication (then the role
    // does not exist: 403, not 401).
    let rsa = jsonwebtoken::EncodingKey::from_rsa_der(include_bytes!(
        "../../../sidecar/src/auth/testdata/rsa_private.der"
    ));
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-rsa".into());
    let rs = jsonwebtoken::encode(
        &header,
        &serde_json::json!({"role": "ds_e2e_no_such_role", "exp": 4_000_000_000u64}),
        &rsa,
    )
    .unwrap();
    assert_eq!(status(http().get(format!("{url}?token={rs}"))).await, 403);

    // /health needs no token and says nothing else.
    let r = http().get(sidecar.url("/health")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "ok\n");
    assert!(sidecar.metric("ds_sidecar_unauthenticated_total").await >= 5.0);
}

#[tokio::test]
async fn requests_run_as_the_token_role() {
    let _db = roles().await;
    let sidecar = role_sidecar(&["--long-poll-timeout-ms", "5000"]).await;
    let path = unique_path("as-role");
    let url = sidecar.stream(&path);
    let member = bearer(MEMBER);

    let r = http()
        .put(&url)
        .header("authorization", &member)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let tail = next_offset(&r);
    // Cacheable reads are private with authentication.
    let long_poll = {
        let url = format!("{url}?offset={tail}&live=long-poll");
        let member = member.clone();
        tokio::spawn(async move {
            let r = http().get(url).header("authorization", member).send().await.unwrap();
            (r.status().as_u16(), r.headers()["cache-control"].to_str().unwrap().to_owned())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..3 {
        let r = http()
            .post(&url)
            .header("authorization", &member)
            .header("content-type", "application/json")
            .body(format!("{{\"n\":{n}}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204, "append {n}");
    }
    assert_eq!(
        timeout(Duration::from_secs(10), long_poll).await.unwrap().unwrap(),
        (200, "private, max-age=60, stale-while-revalidate=300".to_owned())
    );
    let r = http()
        .get(format!("{url}?offset=-1"))
        .header("authorization", &member)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), r#"[{"n":0},{"n":1},{"n":2}]"#);
    assert_eq!(status(http().head(&url).header("authorization", &member)).await, 200);
    assert_eq!(status(http().delete(&url).header("authorization", &member)).await, 204);
}

#[tokio::test]
async fn roles_the_sidecar_may_not_become_get_403() {
    let db = roles().await;
    let sidecar = role_sidecar(&[]).await;
    let path = unique_path("refused");
    // The stream exists (made by the superuser) ...
    db.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    let missing = unique_path("refused-missing");
    for role in [STRANGER, "ds_e2e_no_such_role", NO_EXECUTE] {
        let auth = bearer(role);
        for p in [&path, &missing] {
            let url = sidecar.stream(p);
            // ... and every kind of request answers 403 whether it exists or not.
            let r = http().get(&url).header("authorization", &auth).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 403, "{role} GET {p}");
            let body = r.text().await.unwrap();
            assert!(!body.contains("not found") && !body.contains(p.as_str()), "{body}");
            assert_eq!(status(http().head(&url).header("authorization", &auth)).await, 403);
            let sse = format!("{url}?offset=-1&live=sse");
            assert_eq!(status(http().get(&sse).header("authorization", &auth)).await, 403);
            let poll = format!("{url}?offset=now&live=long-poll");
            assert_eq!(status(http().get(&poll).header("authorization", &auth)).await, 403);
            let post = http()
                .post(&url)
                .header("authorization", &auth)
                .header("content-type", "text/plain")
                .body("x");
            assert_eq!(status(post).await, 403, "{role} POST {p}");
            assert_eq!(status(http().delete(&url).header("authorization", &auth)).await, 403);
        }
    }
    let rows = db.query("SELECT * FROM ds.read($1)", &[&path]).await.unwrap();
    assert!(rows.is_empty(), "nothing was appended");
}

#[tokio::test]
async fn a_role_without_a_path_grant_gets_403_and_learns_nothing() {
    let db = roles().await;
    if !has_path_grants(&db).await {
        eprintln!("skipped: the extension has no path grants yet");
        return;
    }
    let sidecar = role_sidecar(&[]).await;
    let path = unique_path("no-grant");
    db.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    let auth = bearer(NO_GRANT);
    for p in [path.clone(), unique_path("no-grant-missing")] {
        let url = sidecar.stream(&p);
        assert_eq!(status(http().head(&url).header("authorization", &auth)).await, 403);
        assert_eq!(status(http().get(&url).header("authorization", &auth)).await, 403);
        let post = http()
            .post(&url)
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body("{}");
        assert_eq!(status(post).await, 403, "outcome forbidden of the batch");
    }
    // The member (granted e2e/**) appends to the same stream meanwhile.
    let r = http()
        .post(sidecar.stream(&path))
        .header("authorization", bearer(MEMBER))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
}

#[tokio::test]
async fn cors_is_off_by_default_and_allows_configured_origins() {
    let path = unique_path("cors");
    let preflight = |sidecar: &Sidecar| {
        http()
            .request(reqwest::Method::OPTIONS, sidecar.stream(&path))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, producer-id")
    };
    let closed = Sidecar::start(&[]).await;
    let r = preflight(&closed).send().await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = http()
        .get(closed.stream(&path))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let open =
        Sidecar::start(&["--cors-origins", "https://app.example, http://localhost:3000"]).await;
    let r = preflight(&open).send().await.unwrap();
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let allowed = r.headers()["access-control-allow-headers"].to_str().unwrap().to_owned();
    assert!(allowed.contains("authorization") && allowed.contains("producer-id"), "{allowed}");
    let r = http()
        .put(open.stream(&path))
        .header("origin", "https://app.example")
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://app.example");
    let exposed = r.headers()["access-control-expose-headers"].to_str().unwrap().to_owned();
    for h in [
        "stream-next-offset",
        "stream-cursor",
        "stream-closed",
        "etag",
        "producer-epoch",
        "location",
    ] {
        assert!(exposed.contains(h), "{h} in {exposed}");
    }
    let r = http()
        .request(reqwest::Method::OPTIONS, open.stream(&path))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"), "other origins get nothing");
}

#[tokio::test]
async fn metrics_are_served_only_on_their_own_listener() {
    let sidecar = Sidecar::start(&[]).await;
    assert_eq!(status(http().get(sidecar.url("/metrics"))).await, 404);
    let text = sidecar.metrics().await;
    assert!(text.contains("ds_sidecar_http_requests_total"), "{text}");
    let port = free_port();
    let off = Sidecar::start(&["--metrics-listen", "off"]).await;
    assert_eq!(status(http().get(off.url("/metrics"))).await, 404);
    assert!(http().get(format!("http://127.0.0.1:{port}/metrics")).send().await.is_err());
}

#[tokio::test]
async fn every_read_forbids_scripts_and_sniffing() {
    let sidecar = Sidecar::start(&["--long-poll-timeout-ms", "2000"]).await;
    let path = unique_path("csp");
    let url = sidecar.stream(&path);
    let r = http()
        .put(&url)
        .header("content-type", "text/html")
        .body("<script>alert(document.cookie)</script>")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let check = |r: &reqwest::Response, what: &str| {
        assert_eq!(r.headers()["content-security-policy"], "sandbox", "{what}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{what}");
    };
    let r = http().get(format!("{url}?offset=-1")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/html");
    check(&r, "catch-up");
    let r = http().get(format!("{url}?offset=-1&live=long-poll")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    check(&r, "long-poll");
    let r = http().get(format!("{url}?offset=now&live=long-poll")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    check(&r, "long-poll timeout");
    let r = http().get(format!("{url}?offset=-1&live=sse")).send().await.unwrap();
    check(&r, "SSE");
    let r = http().get(sidecar.stream(&unique_path("csp-missing"))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    check(&r, "error");
}

#[tokio::test]
async fn over_the_rate_limit_answers_429_with_retry_after() {
    let sidecar = Sidecar::start(
        &JWT_FLAGS
            .iter()
            .copied()
            .chain(["--rate-limit-per-second", "1", "--rate-limit-burst", "3"])
            .collect::<Vec<_>>(),
    )
    .await;
    let url = sidecar.stream(&unique_path("rate"));
    let (alice, bob) = (bearer("ds_e2e_alice"), bearer("ds_e2e_bob"));
    for _ in 0..3 {
        assert_ne!(status(http().head(&url).header("authorization", &alice)).await, 429);
    }
    let r = http().head(&url).header("authorization", &alice).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_ne!(status(http().head(&url).header("authorization", &bob)).await, 429, "per subject");
    assert_eq!(status(http().get(sidecar.url("/health"))).await, 200, "health is not limited");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_ne!(status(http().head(&url).header("authorization", &alice)).await, 429);
    assert!(sidecar.metric("ds_sidecar_rate_limited_total").await >= 1.0);

    // Anonymous: per client address.
    let anon = Sidecar::start(&["--rate-limit-per-second", "1", "--rate-limit-burst", "2"]).await;
    let url = anon.stream(&unique_path("rate-anon"));
    let codes: Vec<u16> =
        futures_util::future::join_all((0..4).map(|_| status(http().head(&url)))).await;
    assert!(codes.contains(&429), "{codes:?}");
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_after_the_header_timeout() {
    let sidecar = Sidecar::start(&["--header-read-timeout-ms", "500"]).await;
    let started = Instant::now();
    // Half a request head, then nothing.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.port)).await.unwrap();
    slow.write_all(b"GET /v1/stream/x HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    // Connected, never a byte.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.port)).await.unwrap();
    for socket in [&mut slow, &mut idle] {
        let mut buf = Vec::new();
        let read = timeout(Duration::from_secs(5), socket.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server closed the connection");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(status(http().get(sidecar.url("/health"))).await, 200);
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let sidecar = Sidecar::start(&["--max-connections", "3"]).await;
    let path = unique_path("conns");
    let r = http().put(sidecar.stream(&path)).header("content-type", "text/plain").send().await;
    assert_eq!(r.unwrap().status().as_u16(), 201);
    let sse = format!("{}?offset=-1&live=sse", sidecar.stream(&path));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(http().get(&sse).send().await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.port)).await.unwrap();
    let _ = extra.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let mut buf = Vec::new();
    let read = timeout(Duration::from_secs(2), extra.read_to_end(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed without an answer: {buf:?}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(http().get(sidecar.url("/health"))).await, 200, "room again");
    assert!(sidecar.metric("ds_sidecar_connections_refused_total").await >= 1.0);
}

#[tokio::test]
async fn synchronous_commit_is_pinned_whatever_the_role_default() {
    let db = sql().await;
    db.batch_execute(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ds_e2e_async') THEN
             CREATE ROLE ds_e2e_async LOGIN;
           END IF;
         END $$;
         ALTER ROLE ds_e2e_async SET synchronous_commit = off;",
    )
    .await
    .unwrap();
    let url = database_url_as("ds_e2e_async");
    let (plain, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let show = "SELECT current_setting('synchronous_commit')";
    assert_eq!(plain.query_one(show, &[]).await.unwrap().get::<_, String>(0), "off");

    for (flag, want) in [(None, "on"), (Some("local"), "local")] {
        let mut args = vec!["ds-sidecar", "--database-url", &url];
        if let Some(f) = flag {
            args.extend(["--synchronous-commit", f]);
        }
        let config = <ds_sidecar::Config as clap::Parser>::parse_from(&args);
        // The pool's own connections, built exactly as the sidecar builds them.
        let db = ds_sidecar::db::Db::new(&config).unwrap();
        assert_eq!(db.show("synchronous_commit").await.unwrap(), want);
        assert_eq!(db.show("application_name").await.unwrap(), "ds-sidecar");
    }
    // And a running sidecar opens its sessions that way (the role has no
    // privileges on `ds`: 403, but a pooled session exists).
    let sidecar = Sidecar::start_with(&url, free_port(), &[]).await;
    assert_eq!(status(http().head(sidecar.stream(&unique_path("sync")))).await, 403);
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'ds_e2e_async' \
             AND application_name = 'ds-sidecar'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(n >= 1);
}

#[tokio::test]
async fn anonymous_on_a_public_address_refuses_to_start() {
    let bin = std::env::var("DS_SIDECAR_BIN").unwrap();
    let out = tokio::process::Command::new(bin)
        .args(["--database-url", &database_url(), "--listen", &format!("0.0.0.0:{}", free_port())])
        .args(["--metrics-listen", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let out = timeout(Duration::from_secs(10), out).await.expect("exits at once").unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-anonymous") && stderr.contains("--auth jwt"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_batches_stay_within_the_byte_budget() {
    const BUDGET: usize = 1024 * 1024;
    let sidecar =
        Sidecar::start(&["--max-append-batch-bytes", &BUDGET.to_string(), "--append-lanes", "1"])
            .await;
    let path = unique_path("budget");
    let r = http().put(sidecar.stream(&path)).header("content-type", "application/octet-stream");
    assert_eq!(status(r).await, 201);
    let appends = (0..32).map(|i| {
        let url = sidecar.stream(&path);
        async move {
            http()
                .post(url)
                .header("content-type", "application/octet-stream")
                .body(vec![i as u8; 300 * 1024])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let codes = futures_util::future::join_all(appends).await;
    assert!(codes.iter().all(|c| *c == 204), "{codes:?}");
    let max = sidecar.metric("ds_sidecar_append_batch_bytes_max").await;
    assert!(max > 0.0 && max <= BUDGET as f64, "largest batch {max}");
    // One request over the budget goes alone.
    let big = http()
        .post(sidecar.stream(&path))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 2 * BUDGET]);
    assert_eq!(status(big).await, 204);
    let r = http().head(sidecar.stream(&path)).send().await.unwrap();
    assert!(next_offset(&r).ends_with(&format!("{:016}", 32 * 300 * 1024 + 2 * BUDGET)));
}

#[tokio::test]
async fn live_reads_end_when_the_token_expires() {
    let db = roles().await;
    let sidecar = role_sidecar(&[
        "--jwt-leeway-seconds",
        "0",
        "--sse-max-duration-ms",
        "60000",
        "--long-poll-timeout-ms",
        "60000",
    ])
    .await;
    let path = unique_path("expiry");
    db.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    let short = token(MEMBER, 3);
    let started = Instant::now();
    let sse = http()
        .get(format!("{}?offset=-1&live=sse", sidecar.stream(&path)))
        .bearer_auth(&short)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 200);
    let poll = http()
        .get(format!("{}?offset=now&live=long-poll", sidecar.stream(&path)))
        .bearer_auth(&short)
        .send();
    let (ended, poll) = tokio::join!(
        timeout(Duration::from_secs(15), read_events(sse, |_| true)),
        timeout(Duration::from_secs(15), poll)
    );
    assert!(ended.is_ok(), "the SSE response ended");
    assert_eq!(poll.unwrap().unwrap().status().as_u16(), 204);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(10), "{took:?}");
    // The next request with that token is refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = http().get(sidecar.stream(&path)).bearer_auth(&short).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn tokens_never_appear_in_responses() {
    let sidecar = Sidecar::start(&JWT_FLAGS).await;
    let path = unique_path("no-leak");
    let t = token("ds_e2e_member_not_created", 600);
    let r = http().put(format!("{}?token={t}", sidecar.stream(&path))).send().await.unwrap();
    let body = r.text().await.unwrap();
    assert!(!body.contains(&t) && !body.contains(JWT_SECRET), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_stops_reading_is_dropped_by_bytes() {
    let sidecar =
        Sidecar::start(&["--sse-max-queued-bytes", "65536", "--sse-send-timeout-ms", "300"]).await;
    let path = unique_path("sse-bytes");
    let url = sidecar.stream(&path);
    let r = http().put(&url).header("content-type", "application/octet-stream");
    assert_eq!(status(r).await, 201);
    // A client that asks for events and never reads them.
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", sidecar.port)).await.unwrap();
    let request = format!("GET /v1/stream/{path}?offset=-1&live=sse HTTP/1.1\r\nHost: t\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut appended = 0;
    while sidecar.metric("ds_sidecar_sse_slow_dropped_total").await < 1.0 {
        assert!(Instant::now() < deadline, "the client was dropped ({appended} MiB appended)");
        if appended < 64 {
            let r = http()
                .post(&url)
                .header("content-type", "application/octet-stream")
                .body(vec![b'x'; 1024 * 1024]);
            assert_eq!(status(r).await, 204);
            appended += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(socket);
}
