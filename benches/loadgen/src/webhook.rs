//! Webhook subscriptions (benches/webhooks.sh): append-to-webhook latency
//! and deliveries/s.
//!
//! The generator is the webhook receiver too: a local HTTP server that
//! records when each subscription's webhook arrives and answers
//! `{"done": true}` (the synchronous auto-ack of PROTOCOL.md §7), so every
//! wake ends at once and the next append wakes the subscription again.
//! `--subscriptions` webhook subscriptions on one stream; then `--rounds`
//! sequential appends, each timed from sending the POST until every
//! subscription's webhook has arrived (after an idle `--gap-ms`, so each
//! append meets idle subscriptions).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::post;
use futures_util::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::common::{
    CpuMeter, Ctx, OCTET, Res, fail, histogram, put_latency, record, round1, token_body,
};

/// Requests at once while creating and deleting subscriptions.
const SETUP_CONCURRENCY: usize = 16;

pub struct WebhookArgs {
    pub subscriptions: usize,
    pub rounds: usize,
    /// Where the receiver listens (loopback).
    pub receiver: SocketAddr,
    pub gap: Duration,
    /// Longest wait for one round's webhooks.
    pub round_timeout: Duration,
}

/// What the receiver saw: the last arrival per subscription, counts.
struct Arrivals {
    last: Mutex<Vec<Option<Instant>>>,
    total: AtomicU64,
    /// Requests for an unknown path or without a wake in the body.
    malformed: AtomicU64,
    changed: Notify,
}

impl Arrivals {
    /// Whether every subscription's last webhook came after `t0`, and the
    /// first and last such arrival.
    fn all_after(&self, t0: Instant) -> Option<(Instant, Instant, Vec<Duration>)> {
        let last = self.last.lock().expect("arrivals lock");
        let mut each = Vec::with_capacity(last.len());
        for at in last.iter() {
            match at {
                Some(at) if *at >= t0 => each.push(at.duration_since(t0)),
                _ => return None,
            }
        }
        let first = last.iter().flatten().min().copied()?;
        let latest = last.iter().flatten().max().copied()?;
        Some((first, latest, each))
    }
}

async fn hook(
    State(arrivals): State<Arc<Arrivals>>,
    Path(index): Path<usize>,
    body: bytes::Bytes,
) -> ([(&'static str, &'static str); 1], &'static str) {
    let now = Instant::now();
    let is_wake = serde_json::from_slice::<Value>(&body)
        .ok()
        .is_some_and(|v| v.get("wake_id").is_some_and(Value::is_string));
    let known = {
        let mut last = arrivals.last.lock().expect("arrivals lock");
        match last.get_mut(index) {
            Some(slot) if is_wake => {
                *slot = Some(now);
                true
            }
            _ => false,
        }
    };
    if known {
        arrivals.total.fetch_add(1, Ordering::Relaxed);
    } else {
        arrivals.malformed.fetch_add(1, Ordering::Relaxed);
    }
    arrivals.changed.notify_waiters();
    ([("content-type", "application/json")], r#"{"done": true}"#)
}

/// Binds the receiver, retrying for 10 s: the port can be the local end of
/// an outgoing loopback connection (the bench ports lie in the ephemeral
/// range) until that connection closes.
async fn bind(addr: SocketAddr) -> Res<tokio::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return fail(format!("receiver {addr}: {e}")),
        }
    }
}

/// Sends `req` and fails unless the status is one of `ok`.
async fn expect(req: reqwest::RequestBuilder, ok: &[u16], what: &str) -> Res<()> {
    let resp = req.timeout(Duration::from_secs(30)).send().await?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    if ok.contains(&status) {
        Ok(())
    } else {
        fail(format!("{what}: HTTP {status} {}", body.chars().take(200).collect::<String>()))
    }
}

pub async fn run(ctx: Arc<Ctx>, a: WebhookArgs) -> Res<Value> {
    let n = a.subscriptions.max(1);
    let arrivals = Arc::new(Arrivals {
        last: Mutex::new(vec![None; n]),
        total: AtomicU64::new(0),
        malformed: AtomicU64::new(0),
        changed: Notify::new(),
    });
    let listener = bind(a.receiver).await?;
    let app =
        axum::Router::new().route("/hook/{index}", post(hook)).with_state(Arc::clone(&arrivals));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let stream_url = ctx.stream_url("webhook");
    ctx.create(&stream_url, OCTET).await?;
    let ids: Vec<String> = (0..n).map(|i| ctx.subscription_id(i)).collect();
    let stream_path = ctx.stream_path("webhook");
    let created = stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let doc = json!({
                "type": "webhook",
                "streams": [stream_path],
                "webhook": {"url": format!("http://{}/hook/{i}", a.receiver)},
            });
            expect(
                ctx.client
                    .put(ctx.subscription_url(id))
                    .header("Content-Type", "application/json")
                    .body(doc.to_string()),
                &[200, 201],
                "PUT subscription",
            )
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let measured = match created.into_iter().collect::<Res<Vec<()>>>() {
        Ok(_) => measure(&ctx, &a, &stream_url, &arrivals).await,
        Err(e) => Err(e),
    };
    // Subscriptions left behind would cost every later run's scheduler.
    stream::iter(ids.iter())
        .map(|id| expect(ctx.client.delete(ctx.subscription_url(id)), &[200, 204, 404], "DELETE"))
        .buffer_unordered(SETUP_CONCURRENCY)
        .for_each(|_| async {})
        .await;
    let _ = ctx.client.delete(&stream_url).timeout(Duration::from_secs(30)).send().await;
    server.abort();
    let mut m = measured?;
    m.insert("malformed".into(), json!(arrivals.malformed.load(Ordering::Relaxed)));
    Ok(Value::Object(m))
}

/// One warm-up round, then `rounds` measured ones.
async fn measure(
    ctx: &Ctx,
    a: &WebhookArgs,
    stream_url: &str,
    arrivals: &Arrivals,
) -> Res<serde_json::Map<String, Value>> {
    let n = a.subscriptions.max(1);
    let mut all = histogram();
    let mut first = histogram();
    let mut each = histogram();
    let mut append = histogram();
    let (mut timeouts, mut busy) = (0u64, Duration::ZERO);
    let mut cpu = None;
    let total_before = |arrivals: &Arrivals| arrivals.total.load(Ordering::Relaxed);
    let mut expected_total = 0;
    for round in 0..=a.rounds {
        tokio::time::sleep(a.gap).await;
        if round == 1 {
            cpu = Some(CpuMeter::start());
            expected_total = total_before(arrivals);
        }
        let t0 = Instant::now();
        let status = ctx.append(stream_url, OCTET, token_body(0, 100)).await?;
        let appended = t0.elapsed();
        if !(200..300).contains(&status) {
            return fail(format!("append: HTTP {status}"));
        }
        let deadline = t0 + a.round_timeout;
        let done = loop {
            let changed = arrivals.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(seen) = arrivals.all_after(t0) {
                break Some(seen);
            }
            if tokio::time::timeout_at(deadline.into(), changed).await.is_err() {
                break None;
            }
        };
        let Some((first_at, last_at, per_subscription)) = done else {
            if round == 0 {
                return fail(format!(
                    "warm-up: not every webhook arrived within {:?}",
                    a.round_timeout
                ));
            }
            timeouts += 1;
            continue;
        };
        if round == 0 {
            continue;
        }
        record(&mut append, appended);
        record(&mut first, first_at.duration_since(t0));
        record(&mut all, last_at.duration_since(t0));
        busy += last_at.duration_since(t0);
        for d in per_subscription {
            record(&mut each, d);
        }
        expected_total += n as u64;
    }
    let mut m = ctx.result("webhook", &format!("{n}sub"));
    m.insert("subscriptions".into(), json!(n));
    m.insert("rounds".into(), json!(a.rounds));
    m.insert("timeouts".into(), json!(timeouts));
    put_latency(&mut m, "", &all);
    put_latency(&mut m, "first_", &first);
    put_latency(&mut m, "delivery_", &each);
    put_latency(&mut m, "append_", &append);
    let delivered = each.len();
    m.insert(
        "deliveries_per_s".into(),
        json!(round1(delivered as f64 / busy.as_secs_f64().max(1e-9))),
    );
    // More webhooks than wakes: a subscription was woken twice for one append.
    let extra = total_before(arrivals).saturating_sub(expected_total);
    m.insert("extra_deliveries".into(), json!(extra));
    if let Some(cpu) = cpu {
        cpu.put(&mut m);
    }
    Ok(m)
}
