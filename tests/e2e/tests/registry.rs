//! Stream registries over HTTP (README, "Stream registries"): a tenant reads
//! the registry of its prefix live with SSE and sees a PUT and a DELETE as
//! they commit; it cannot read another tenant's registry, nor write its own.

use std::time::{Duration, Instant};

use ds_e2e::{JWT_FLAGS, Sidecar, every_ds_function, http, read_events, sql, token, unique_path};
use serde_json::Value;
use tokio::time::timeout;

const TENANT_A: &str = "ds_e2e_registry_a";
const TENANT_B: &str = "ds_e2e_registry_b";

/// Roles of both tenants, each with every privilege on its own prefix;
/// recording on for every session (reset by `finish`).
async fn setup(base: &str) -> tokio_postgres::Client {
    let db = sql().await;
    let functions = every_ds_function(&db).await;
    db.batch_execute(&format!(
        "DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{TENANT_A}') THEN
             CREATE ROLE {TENANT_A} NOLOGIN;
             CREATE ROLE {TENANT_B} NOLOGIN;
           END IF;
         END $$;
         GRANT USAGE ON SCHEMA ds TO {TENANT_A}, {TENANT_B};
         GRANT EXECUTE ON FUNCTION {functions} TO {TENANT_A}, {TENANT_B};"
    ))
    .await
    .unwrap();
    for (role, tenant) in [(TENANT_A, "a"), (TENANT_B, "b")] {
        db.execute("SELECT ds.grant($1, $2, 'all')", &[&role, &format!("{base}/{tenant}/**")])
            .await
            .unwrap();
    }
    for statement in ["ALTER SYSTEM SET ds.registry = on", "SELECT pg_reload_conf()"] {
        db.batch_execute(statement).await.unwrap();
    }
    db
}

async fn finish(db: &tokio_postgres::Client, base: &str) {
    for (role, tenant) in [(TENANT_A, "a"), (TENANT_B, "b")] {
        db.execute("SELECT ds.drop_registry($1)", &[&format!("{base}/{tenant}/")]).await.unwrap();
        db.execute("SELECT ds.revoke($1, $2)", &[&role, &format!("{base}/{tenant}/**")])
            .await
            .unwrap();
    }
    for statement in ["ALTER SYSTEM RESET ds.registry", "SELECT pg_reload_conf()"] {
        db.batch_execute(statement).await.unwrap();
    }
}

#[tokio::test]
async fn a_tenant_follows_its_registry_live_and_only_its_own() {
    let base = unique_path("registry");
    let db = setup(&base).await;
    let sidecar = Sidecar::start(&JWT_FLAGS).await;
    let (token_a, token_b) = (token(TENANT_A, 600), token(TENANT_B, 600));
    let (prefix_a, prefix_b) = (format!("{base}/a/"), format!("{base}/b/"));

    // A tenant admin registers its own prefix (admin on <prefix>**)...
    db.batch_execute(&format!("SET ROLE {TENANT_A}")).await.unwrap();
    db.execute("SELECT ds.create_registry($1)", &[&prefix_a]).await.unwrap();
    // ...and not the one above it.
    let e = db.execute("SELECT ds.create_registry($1)", &[&format!("{base}/")]).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "42501");
    db.batch_execute("RESET ROLE").await.unwrap();
    db.execute("SELECT ds.create_registry($1)", &[&prefix_b]).await.unwrap();
    let registry_a = sidecar.stream(&format!("{prefix_a}__registry__"));
    let registry_b = sidecar.stream(&format!("{prefix_b}__registry__"));

    // Follow the registry live, then create and delete a stream over HTTP.
    let sse = http()
        .get(format!("{registry_a}?offset=-1&live=sse"))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status().as_u16(), 200);
    let path = format!("{prefix_a}orders");
    let changes = tokio::spawn(async move {
        let mut seen: Vec<(String, String)> = Vec::new();
        read_events(sse, |event| {
            if event.event == "data" {
                let messages: Value = serde_json::from_str(&event.data).unwrap();
                for m in messages.as_array().unwrap() {
                    let key = m["key"].as_str().unwrap().to_owned();
                    let op = m["headers"]["operation"].as_str().unwrap().to_owned();
                    seen.push((key, op));
                }
            }
            seen.len() < 2
        })
        .await;
        seen
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let put = http()
        .put(sidecar.stream(&path))
        .header("content-type", "application/json")
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let delete = http().delete(sidecar.stream(&path)).bearer_auth(&token_a).send().await.unwrap();
    assert_eq!(delete.status().as_u16(), 204);
    let seen = timeout(Duration::from_secs(10), changes).await.expect("both changes").unwrap();
    assert_eq!(seen, vec![(path.clone(), "insert".into()), (path, "delete".into())]);

    // B's streams are not in A's registry, and A cannot read B's.
    let put = http()
        .put(sidecar.stream(&format!("{prefix_b}x")))
        .header("content-type", "application/json")
        .bearer_auth(&token_b)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let read = http().get(format!("{registry_b}?offset=-1")).bearer_auth(&token_a).send();
    assert_eq!(read.await.unwrap().status().as_u16(), 403);
    // The registry's record commits with the create and gets its offset
    // from the sequencer right after: wait for it (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let read = http().get(format!("{registry_b}?offset=-1")).bearer_auth(&token_b).send();
        let body: Value = read.await.unwrap().json().await.unwrap();
        if body.as_array().is_some_and(|a| !a.is_empty()) || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body[0]["key"], format!("{prefix_b}x"));
    let body: Value = http()
        .get(format!("{registry_a}?offset=-1"))
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body.as_array().unwrap().len(), 2, "only A's two changes: {body}");

    // Nobody writes a registry, its own tenant included.
    let forged = http()
        .post(&registry_a)
        .header("content-type", "application/json")
        .body(r#"{"type":"stream","key":"forged","headers":{"operation":"insert"}}"#)
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    let removed = http().delete(&registry_a).bearer_auth(&token_a).send().await.unwrap();
    assert_eq!(removed.status().as_u16(), 403);
    let squatted = http()
        .put(sidecar.stream(&format!("{prefix_a}sub/__registry__")))
        .header("content-type", "application/json")
        .bearer_auth(&token_a)
        .send()
        .await
        .unwrap();
    assert_eq!(squatted.status().as_u16(), 403);

    db.execute("SELECT ds.delete($1)", &[&format!("{prefix_b}x")]).await.unwrap();
    finish(&db, &base).await;
}
