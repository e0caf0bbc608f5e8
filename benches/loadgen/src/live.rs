//! Scenarios 4, 6 and 7: live readers (long-poll and SSE). Every appended
//! body carries its send time (`common::token_body`), so a reader's latency
//! is "receipt time - time the append was sent", on one clock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use crate::common::{
    Counter, CpuMeter, Ctx, Res, TEXT, fail, header, histogram, put_latency, round1, rss_kb,
    scan_tokens, token_body,
};

/// What a group of readers saw.
#[derive(Default)]
pub(crate) struct Sink {
    hist: Mutex<Option<Histogram<u64>>>,
    pub(crate) received: Counter,
    pub(crate) errors: Counter,
    pub(crate) connected: Counter,
}

impl Sink {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self { hist: Mutex::new(Some(histogram())), ..Self::default() })
    }

    fn record_ns(&self, ns: u64) {
        let us = (ns / 1000).clamp(1, 600_000_000);
        if let Some(h) = self.hist.lock().expect("sink lock").as_mut() {
            h.saturating_record(us);
        }
        self.received.add(1);
    }

    fn take(&self) -> Histogram<u64> {
        self.hist.lock().expect("sink lock").take().unwrap_or_else(histogram)
    }
}

/// Follows `url` over SSE from `offset` until `deadline` (reconnecting from
/// the last `streamNextOffset` when the server closes the connection).
pub(crate) async fn sse_reader(
    ctx: Arc<Ctx>,
    url: String,
    mut offset: String,
    sink: Arc<Sink>,
    deadline: Instant,
) {
    let mut first = true;
    while Instant::now() < deadline {
        let resp = ctx.client.get(format!("{url}?offset={offset}&live=sse")).send().await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            _ => {
                sink.errors.add(1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if std::mem::take(&mut first) {
            sink.connected.add(1);
        }
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                sink.errors.add(1);
                break;
            };
            let now = ctx.now_ns();
            buf.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                let line = &buf[start..start + nl];
                start += nl + 1;
                let Some(data) = line.strip_prefix(b"data:") else { continue };
                let data = data.strip_prefix(b" ").unwrap_or(data);
                if data.first() == Some(&b'{') {
                    if let Ok(c) = serde_json::from_slice::<Value>(data) {
                        if let Some(o) = c.get("streamNextOffset").and_then(Value::as_str) {
                            o.clone_into(&mut offset);
                        }
                        if c.get("streamClosed").and_then(Value::as_bool) == Some(true) {
                            return;
                        }
                    }
                } else {
                    scan_tokens(data, |ns| sink.record_ns(now.saturating_sub(ns)));
                }
            }
            buf.drain(..start);
        }
    }
}

/// Follows `url` with long-polls from `offset` until `deadline`.
pub(crate) async fn long_poll_reader(
    ctx: Arc<Ctx>,
    url: String,
    mut offset: String,
    sink: Arc<Sink>,
    deadline: Instant,
) {
    while Instant::now() < deadline {
        let resp = ctx
            .client
            .get(format!("{url}?offset={offset}&live=long-poll"))
            .timeout(Duration::from_secs(90))
            .send()
            .await;
        let ok = match resp {
            Ok(r) if r.status().as_u16() == 200 || r.status().as_u16() == 204 => {
                let next = header(&r, "Stream-Next-Offset");
                match r.bytes().await {
                    Ok(body) => {
                        let now = ctx.now_ns();
                        scan_tokens(&body, |ns| sink.record_ns(now.saturating_sub(ns)));
                        if let Some(n) = next {
                            offset = n;
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
            _ => false,
        };
        if !ok {
            sink.errors.add(1);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Appends a token body every `interval` for `duration` (bounded by count);
/// returns (appends acknowledged with 2xx, failures).
async fn paced_writer(ctx: &Ctx, url: &str, interval: Duration, duration: Duration) -> (u64, u64) {
    let max = (duration.as_nanos() / interval.as_nanos().max(1)) as u64;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut ok, mut bad) = (0, 0);
    let deadline = Instant::now() + duration;
    for _ in 0..max {
        tick.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        match ctx.append(url, TEXT, token_body(ctx.now_ns(), 100)).await {
            Ok(s) if (200..300).contains(&s) => ok += 1,
            _ => bad += 1,
        }
    }
    (ok, bad)
}

/// Waits until `sinks` received `expected` tokens each, or `grace` passed.
pub(crate) async fn drain(sinks: &[(&Arc<Sink>, u64)], grace: Duration) {
    let until = Instant::now() + grace;
    while Instant::now() < until && sinks.iter().any(|(s, want)| s.received.get() < *want) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn put_sink(m: &mut Map<String, Value>, sink: &Sink, expected: u64) {
    let h = sink.take();
    put_latency(m, "", &h);
    m.insert("delivered".into(), json!(sink.received.get()));
    m.insert("expected".into(), json!(expected));
    m.insert("reader_errors".into(), json!(sink.errors.get()));
}

/// Who reads in scenario 4.
pub struct Readers {
    /// Long-poll readers on the server appended to.
    pub long_poll: usize,
    /// SSE readers on the server appended to (and as many on the replica).
    pub sse: usize,
    /// Base URL of a server reading from a hot standby of the same database.
    pub replica_base: Option<String>,
}

/// Scenario 4: one writer every `interval`; `lp` long-poll and `sse` SSE
/// readers on the same stream. One result per reader mode.
pub async fn latency(
    ctx: Arc<Ctx>,
    interval: Duration,
    duration: Duration,
    readers: Readers,
) -> Res<Vec<Value>> {
    let Readers { long_poll: lp, sse, replica_base } = readers;
    let url = ctx.stream_url("latency");
    let tail = ctx.create(&url, TEXT).await?;
    let (lp_sink, sse_sink, replica_sink) = (Sink::new(), Sink::new(), Sink::new());
    let replica_url = replica_base.as_deref().map(|b| ctx.stream_url_at(b, "latency"));
    let replicas = if replica_url.is_some() { sse } else { 0 };
    let deadline = Instant::now() + duration + Duration::from_secs(15);
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for _ in 0..lp {
        tasks.push(tokio::spawn(long_poll_reader(
            ctx.clone(),
            url.clone(),
            tail.clone(),
            lp_sink.clone(),
            deadline,
        )));
    }
    for _ in 0..sse {
        tasks.push(tokio::spawn(sse_reader(
            ctx.clone(),
            url.clone(),
            tail.clone(),
            sse_sink.clone(),
            deadline,
        )));
    }
    if let Some(replica_url) = &replica_url {
        for _ in 0..replicas {
            tasks.push(tokio::spawn(sse_reader(
                ctx.clone(),
                replica_url.clone(),
                tail.clone(),
                replica_sink.clone(),
                deadline,
            )));
        }
    }
    wait_connected(&sse_sink, sse as u64, Duration::from_secs(10)).await;
    wait_connected(&replica_sink, replicas as u64, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // long-polls reach the server

    let meter = CpuMeter::start();
    let (ok, bad) = paced_writer(&ctx, &url, interval, duration).await;
    drain(
        &[
            (&lp_sink, ok * lp as u64),
            (&sse_sink, ok * sse as u64),
            (&replica_sink, ok * replicas as u64),
        ],
        Duration::from_secs(5),
    )
    .await;
    for t in &tasks {
        t.abort();
    }
    let mut out = Vec::new();
    for (mode, sink, n) in [
        ("long-poll", &lp_sink, lp),
        ("sse", &sse_sink, sse),
        ("sse-replica", &replica_sink, replicas),
    ] {
        if n == 0 {
            continue;
        }
        let mut m = ctx.result("latency", mode);
        meter.put(&mut m);
        m.insert("readers".into(), json!(n));
        m.insert("interval_ms".into(), json!(interval.as_millis() as u64));
        m.insert("appends".into(), json!(ok));
        m.insert("errors".into(), json!(bad));
        put_sink(&mut m, sink, ok * n as u64);
        out.push(Value::Object(m));
    }
    Ok(out)
}

pub(crate) async fn wait_connected(sink: &Sink, n: u64, max: Duration) {
    let until = Instant::now() + max;
    while sink.connected.get() < n && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn put_rss(m: &mut Map<String, Value>, key: &str, pid: Option<u32>) {
    if let Some((rss, hwm)) = pid.and_then(rss_kb) {
        m.insert(format!("server_rss_kb_{key}"), json!(rss));
        m.insert("server_hwm_kb".into(), json!(hwm));
    }
}

/// Scenario 6: `clients` SSE readers on one stream, `rate` appends/s.
pub async fn fanout(ctx: Arc<Ctx>, clients: usize, rate: u32, duration: Duration) -> Res<Value> {
    if rate == 0 {
        return fail("rate must be positive");
    }
    let url = ctx.stream_url("fanout");
    let tail = ctx.create(&url, TEXT).await?;
    let mut m = ctx.result("fanout", &format!("{clients}c"));
    put_rss(&mut m, "idle", ctx.server_pid);
    let sink = Sink::new();
    let deadline = Instant::now() + duration + Duration::from_secs(90);
    let connect_start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        tasks.push(tokio::spawn(sse_reader(
            ctx.clone(),
            url.clone(),
            tail.clone(),
            sink.clone(),
            deadline,
        )));
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    wait_connected(&sink, clients as u64, Duration::from_secs(45)).await;
    m.insert("connected".into(), json!(sink.connected.get()));
    m.insert("connect_s".into(), json!(round1(connect_start.elapsed().as_secs_f64())));
    tokio::time::sleep(Duration::from_millis(500)).await;
    put_rss(&mut m, "connected", ctx.server_pid);

    let meter = CpuMeter::start();
    let (ok, bad) = paced_writer(&ctx, &url, Duration::from_secs(1) / rate, duration).await;
    let expected = ok * sink.connected.get();
    drain(&[(&sink, expected)], Duration::from_secs(10)).await;
    meter.put(&mut m);
    put_rss(&mut m, "end", ctx.server_pid);
    for t in &tasks {
        t.abort();
    }
    m.insert("clients".into(), json!(clients));
    m.insert("rate_per_s".into(), json!(rate));
    m.insert("appends".into(), json!(ok));
    m.insert("appends_per_s".into(), json!(round1(ok as f64 / duration.as_secs_f64())));
    m.insert("errors".into(), json!(bad));
    m.insert(
        "throughput".into(),
        json!(round1(sink.received.get() as f64 / duration.as_secs_f64())),
    );
    m.insert("unit".into(), json!("deliveries/s"));
    put_sink(&mut m, &sink, expected);
    Ok(Value::Object(m))
}

/// Scenario 7: `waiters` long-polls at the tail of one stream, one append;
/// how long until every waiter has its answer.
pub async fn wake(ctx: Arc<Ctx>, waiters: usize, settle: Duration) -> Res<Value> {
    let url = ctx.stream_url("wake");
    let tail = ctx.create(&url, TEXT).await?;
    let mut m = ctx.result("wake", &format!("{waiters}w"));
    put_rss(&mut m, "idle", ctx.server_pid);
    // (answer time ns, status) per waiter; u64::MAX until answered.
    let answers: Arc<Mutex<Vec<(u64, u16)>>> = Arc::new(Mutex::new(Vec::with_capacity(waiters)));
    let started = Counter::default();
    let mut tasks = Vec::with_capacity(waiters);
    for i in 0..waiters {
        let (ctx, url, tail, answers, started) =
            (ctx.clone(), url.clone(), tail.clone(), answers.clone(), started.clone());
        tasks.push(tokio::spawn(async move {
            started.add(1);
            let r = ctx
                .client
                .get(format!("{url}?offset={tail}&live=long-poll"))
                .timeout(Duration::from_secs(90))
                .send()
                .await;
            let status = match r {
                Ok(r) => {
                    let s = r.status().as_u16();
                    if r.bytes().await.is_err() { 0 } else { s }
                }
                Err(_) => 0,
            };
            answers.lock().expect("answers lock").push((ctx.now_ns(), status));
        }));
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    tokio::time::sleep(settle).await;
    put_rss(&mut m, "connected", ctx.server_pid);
    let early = answers.lock().expect("answers lock").len();

    let meter = CpuMeter::start();
    let t_append = ctx.now_ns();
    let status = ctx.append(&url, TEXT, token_body(t_append, 100)).await?;
    let until = Instant::now() + Duration::from_secs(60);
    while answers.lock().expect("answers lock").len() < waiters && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    meter.put(&mut m);
    for t in &tasks {
        t.abort();
    }
    let answers = std::mem::take(&mut *answers.lock().expect("answers lock"));
    let mut h = histogram();
    let mut ok = 0u64;
    let mut last = 0u64;
    for &(ns, s) in &answers {
        if ns >= t_append && s == 200 {
            ok += 1;
            h.saturating_record(((ns - t_append) / 1000).max(1));
            last = last.max(ns - t_append);
        }
    }
    m.insert("waiters".into(), json!(waiters));
    m.insert("started".into(), json!(started.get()));
    m.insert("answered_before_append".into(), json!(early));
    m.insert("answered_200".into(), json!(ok));
    m.insert("errors".into(), json!(answers.len() as u64 - ok));
    m.insert("append_status".into(), json!(status));
    m.insert(
        "all_answered_ms".into(),
        if ok == waiters as u64 { json!(last as f64 / 1e6) } else { Value::Null },
    );
    m.insert("throughput".into(), json!(round1(ok as f64 / (last.max(1) as f64 / 1e9))));
    m.insert("unit".into(), json!("wakeups/s"));
    put_latency(&mut m, "", &h);
    put_rss(&mut m, "end", ctx.server_pid);
    Ok(Value::Object(m))
}
