//! Webhook subscriptions end to end: real sidecars, the real extension and
//! a local webhook receiver (`ds_e2e::webhook`).

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ds_e2e::webhook::{
    Receiver, all_acked, append, clear_leftovers, create_stream, delete_subs, eventually, get_sub,
    put_sub,
};
use ds_e2e::{Sidecar, http, sql, unique_path};
use ed25519_dalek::Verifier as _;
use serde_json::{Value, json};

/// Verifies a webhook signature against the JWKS at `jwks_url`, as a
/// receiver would (selecting the key by `kid`).
async fn verify_with_jwks(jwks_url: &str, header: &str, raw: &[u8]) -> bool {
    let r = http().get(jwks_url).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/jwk-set+json");
    assert_eq!(r.headers()["cache-control"], "public, max-age=300");
    let jwks: Value = r.json().await.unwrap();
    let mut parts = header.split(',');
    let t = parts.next().unwrap().strip_prefix("t=").unwrap();
    let kid = parts.next().unwrap().strip_prefix("kid=").unwrap();
    let sig = URL_SAFE_NO_PAD.decode(parts.next().unwrap().strip_prefix("ed25519=").unwrap());
    let key =
        jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).expect("kid in JWKS");
    assert_eq!(
        (&key["kty"], &key["crv"], &key["alg"]),
        (&json!("OKP"), &json!("Ed25519"), &json!("EdDSA"))
    );
    let x: [u8; 32] =
        URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap().try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&sig.unwrap()).unwrap();
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(raw);
    key.verify(&message, &sig).is_ok()
}

#[tokio::test]
async fn signed_webhooks_done_auto_ack_and_callbacks_are_fenced() {
    clear_leftovers().await;
    let sidecar = Sidecar::start(&[]).await;
    let base = unique_path("subs-sync");
    // Synchronous: the receiver answers {"done": true}.
    let id = format!("sync-{}", base.replace('/', "-"));
    let sync = Receiver::start(200, r#"{"done": true}"#, &id).await;
    let (status, doc) = put_sub(
        &sidecar,
        &id,
        json!({"type": "webhook", "pattern": format!("{base}/*"), "webhook": {"url": sync.url()}}),
    )
    .await;
    assert_eq!(status, 201, "{doc}");
    let signing = &doc["webhook"]["signing"];
    assert_eq!(signing["alg"], "ed25519");
    assert_eq!(signing["jwks_url"], sidecar.stream("__ds/jwks.json"));
    create_stream(&sidecar, &format!("{base}/a")).await;
    let got = sync.wait_for(1, Duration::from_secs(10)).await;
    let header = got[0].signature.clone().expect("signed");
    assert!(header.contains(&format!("kid={}", signing["kid"].as_str().unwrap())));
    assert!(verify_with_jwks(signing["jwks_url"].as_str().unwrap(), &header, &got[0].raw).await);
    let mut tampered = got[0].raw.clone();
    tampered.push(b' ');
    assert!(!verify_with_jwks(signing["jwks_url"].as_str().unwrap(), &header, &tampered).await);
    assert_eq!(got[0].body["subscription_id"], id.as_str());
    assert_eq!(
        got[0].body["callback_url"],
        sidecar.stream(&format!("__ds/subscriptions/{id}/callback"))
    );
    eventually(Duration::from_secs(10), "auto-ack", || all_acked(&sidecar, &id)).await;

    // Asynchronous: the receiver answers {} and calls back.
    let id2 = format!("async-{}", base.replace('/', "-"));
    let r#async = Receiver::start(200, "{}", &id2).await;
    let stream = format!("{base}-explicit");
    create_stream(&sidecar, &stream).await;
    let (status, _) = put_sub(
        &sidecar,
        &id2,
        json!({"type": "webhook", "streams": [stream], "webhook": {"url": r#async.url()}, "lease_ttl_ms": 10000}),
    )
    .await;
    assert_eq!(status, 201);
    append(&sidecar, &stream).await;
    let wake = r#async.wait_for(1, Duration::from_secs(10)).await[0].body.clone();
    let tail = wake["streams"][0]["tail_offset"].clone();
    let ack = json!({"wake_id": wake["wake_id"], "generation": wake["generation"],
                     "acks": [{"stream": stream, "offset": tail}], "done": true});
    let callback = |token: String, body: Value| {
        let url = wake["callback_url"].as_str().unwrap().to_owned();
        async move {
            let r = http().post(url).bearer_auth(token).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let token = wake["callback_token"].as_str().unwrap().to_owned();
    let (status, body) = callback("dst_wrong".into(), ack.clone()).await;
    assert_eq!((status, &body["error"]["code"]), (401, &json!("TOKEN_INVALID")), "{body}");
    let (status, body) = callback(token.clone(), ack.clone()).await;
    assert_eq!((status, body), (200, json!({"ok": true, "next_wake": false})));
    let (status, body) = callback(token, ack).await;
    assert_eq!((status, &body["error"]["code"]), (409, &json!("FENCED")), "{body}");
    assert!(all_acked(&sidecar, &id2).await);
    let no_token =
        http().post(wake["callback_url"].as_str().unwrap()).json(&json!({})).send().await.unwrap();
    assert_eq!(no_token.status().as_u16(), 401);
    delete_subs(&sidecar, &[&id, &id2]).await;
}

#[tokio::test]
async fn failed_deliveries_back_off_survive_a_restart_and_recover() {
    clear_leftovers().await;
    let mut sidecar = Sidecar::start(&[]).await;
    let port = sidecar.port;
    let path = unique_path("subs-retry");
    let id = format!("retry-{}", path.replace('/', "-"));
    let receiver = Receiver::start(500, "{}", &id).await;
    create_stream(&sidecar, &path).await;
    let (status, _) = put_sub(
        &sidecar,
        &id,
        json!({"type": "webhook", "streams": [path], "webhook": {"url": receiver.url()}}),
    )
    .await;
    assert_eq!(status, 201);
    append(&sidecar, &path).await;
    let got = receiver.wait_for(4, Duration::from_secs(25)).await;
    let gaps: Vec<f64> = got.windows(2).map(|w| (w[1].at - w[0].at).as_secs_f64()).collect();
    // 1 s, 2 s, 4 s (±20%), each up to one loop period (1 s) late.
    assert!(
        gaps[0] >= 0.75 && gaps[1] >= 1.55 && gaps[2] >= 3.15 && gaps[2] > gaps[0] + 1.0,
        "gaps {gaps:?}"
    );
    assert_eq!(get_sub(&sidecar, &id).await["status"], "failed");
    // The fourth failure is recorded (attempts = 4: next in 8 s ± 20%).
    let db = sql().await;
    eventually(Duration::from_secs(5), "attempts = 4", || async {
        let row = db
            .query_one("SELECT attempts FROM ds.subscriptions WHERE id = $1", &[&id])
            .await
            .unwrap();
        row.get::<_, i32>(0) >= 4
    })
    .await;
    let third = receiver.received().len();
    let third_at = receiver.received()[third - 1].at;
    // A restart does not reset the schedule: the next attempt waits.
    sidecar.kill().await;
    sidecar = Sidecar::start_on(port, &[]).await;
    receiver.set_reply(200, r#"{"done": true}"#);
    let got = receiver.wait_for(third + 1, Duration::from_secs(20)).await;
    let waited = (got[third].at - third_at).as_secs_f64();
    let all: Vec<f64> = got.windows(2).map(|w| (w[1].at - w[0].at).as_secs_f64()).collect();
    assert!(waited >= 6.2, "the persisted next attempt was not honoured: {waited:.2} s ({all:?})");
    eventually(Duration::from_secs(10), "acked and active", || async {
        get_sub(&sidecar, &id).await["status"] == "active" && all_acked(&sidecar, &id).await
    })
    .await;
    delete_subs(&sidecar, &[&id]).await;
}

#[tokio::test]
async fn two_sidecars_deliver_each_wake_once() {
    clear_leftovers().await;
    let a = Sidecar::start(&[]).await;
    let b = Sidecar::start(&[]).await;
    let base = unique_path("subs-two");
    let prefix = format!("two-{}-", base.replace('/', "-"));
    let receiver = Receiver::start(200, r#"{"done": true}"#, &prefix).await;
    let ids: Vec<String> = (0..12).map(|i| format!("{prefix}{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let stream = format!("{base}/{i}");
        create_stream(&a, &stream).await;
        let via = if i % 2 == 0 { &a } else { &b };
        let (status, _) = put_sub(
            via,
            id,
            json!({"type": "webhook", "streams": [stream], "webhook": {"url": receiver.url()}}),
        )
        .await;
        assert_eq!(status, 201);
    }
    for round in 0..3 {
        for i in 0..ids.len() {
            append(if (i + round) % 2 == 0 { &a } else { &b }, &format!("{base}/{i}")).await;
        }
        for id in &ids {
            eventually(Duration::from_secs(15), "all acked", || all_acked(&a, id)).await;
        }
    }
    let got = receiver.received();
    let mut wakes: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            (
                r.body["subscription_id"].as_str().unwrap().to_owned(),
                r.body["wake_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let delivered = wakes.len();
    wakes.sort();
    wakes.dedup();
    assert_eq!(wakes.len(), delivered, "a wake was delivered twice");
    assert!(delivered >= ids.len() * 3, "{delivered} deliveries");
    delete_subs(&a, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
}

#[tokio::test]
async fn a_name_resolving_to_a_forbidden_address_is_refused_at_delivery() {
    clear_leftovers().await;
    // This machine's own name: not `localhost`, so it passes the syntax
    // check of an https URL, but it resolves to a loopback or private address.
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_lowercase();
    let addrs: Vec<_> = tokio::net::lookup_host((name.as_str(), 443)).await.unwrap().collect();
    assert!(
        addrs.iter().any(|a| ds_core::webhook_url::forbidden_ip(a.ip()).is_some()),
        "{name} resolves to {addrs:?}: this test needs a host name of a private address"
    );
    let sidecar = Sidecar::start(&[]).await;
    let path = unique_path("subs-private");
    let id = format!("private-{}", path.replace('/', "-"));
    let receiver = Receiver::start(200, r#"{"done": true}"#, &id).await;
    create_stream(&sidecar, &path).await;
    let url = format!("https://{name}:{}/hook", receiver.port);
    let (status, doc) = put_sub(
        &sidecar,
        &id,
        json!({"type": "webhook", "streams": [path], "webhook": {"url": url}}),
    )
    .await;
    assert_eq!(status, 201, "{doc}");
    append(&sidecar, &path).await;
    let db = sql().await;
    eventually(Duration::from_secs(10), "a refused delivery", || async {
        let row = db
            .query_one("SELECT last_error FROM ds.subscriptions WHERE id = $1", &[&id])
            .await
            .unwrap();
        row.get::<_, Option<String>>(0).is_some_and(|e| e.contains("resolved to"))
    })
    .await;
    assert_eq!(get_sub(&sidecar, &id).await["status"], "failed");
    assert!(
        sidecar
            .metrics()
            .await
            .contains("ds_sidecar_webhook_deliveries_total{outcome=\"refused\"}")
    );
    assert!(receiver.received().is_empty(), "nothing reached the receiver");
    // A literal private address is refused when the subscription is made.
    let (status, body) = put_sub(
        &sidecar,
        &format!("{id}-lit"),
        json!({"type": "webhook", "streams": [path], "webhook": {"url": "http://10.0.0.1/hook"}}),
    )
    .await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("WEBHOOK_URL_REJECTED")));
    delete_subs(&sidecar, &[&id]).await;
}

#[tokio::test]
async fn the_breaker_opens_and_half_opens() {
    clear_leftovers().await;
    let flags = ["--webhook-breaker-threshold", "2", "--webhook-breaker-cool-down-ms", "6000"];
    let sidecar = Sidecar::start(&flags).await;
    let base = unique_path("subs-breaker");
    let prefix = format!("breaker-{}-", base.replace('/', "-"));
    let receiver = Receiver::start(500, "{}", &prefix).await;
    let ids: Vec<String> = (0..4).map(|i| format!("{prefix}{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let stream = format!("{base}/{i}");
        create_stream(&sidecar, &stream).await;
        let (status, _) = put_sub(
            &sidecar,
            id,
            json!({"type": "webhook", "streams": [stream], "webhook": {"url": receiver.url()}}),
        )
        .await;
        assert_eq!(status, 201);
        append(&sidecar, &stream).await;
    }
    eventually(Duration::from_secs(10), "an open breaker", || async {
        let m = sidecar.metrics().await;
        m.contains("ds_sidecar_webhook_breakers_open 1")
            && m.contains("ds_sidecar_webhook_deliveries_total{outcome=\"circuit_open\"}")
    })
    .await;
    // While open, nothing reaches the receiver.
    let during = receiver.received().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let opened_at = Instant::now();
    let after = receiver.received().len();
    assert_eq!(after, during, "requests reached the receiver while the breaker was open");
    // The receiver recovers: after the cool-down a probe closes the breaker
    // and every subscription is delivered.
    receiver.set_reply(200, r#"{"done": true}"#);
    for id in &ids {
        eventually(Duration::from_secs(30), "delivered after recovery", || all_acked(&sidecar, id))
            .await;
    }
    assert!(opened_at.elapsed() > Duration::from_millis(500));
    assert!(sidecar.metrics().await.contains("ds_sidecar_webhook_breakers_open 0"));
    delete_subs(&sidecar, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
}
