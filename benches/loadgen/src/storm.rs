//! Wake storms: `waiters` live readers spread over `streams` streams while
//! `writers` append to random streams. Every writer appends once per
//! `interval`, all on the same tick, so each tick is a burst that the
//! server's group commit turns into batches over up to `writers` streams:
//! the shape that made the doorbell announce `*` (wake everybody) before.
//! Reports delivery latency and completeness; the server-side cost (reads
//! per delivery, CPU) is measured around it by `benches/storm.sh`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{CpuMeter, Ctx, Res, TEXT, fail, round1, token_body};
use crate::live::{Sink, drain, long_poll_reader, put_sink, sse_reader, wait_connected};

/// The shape of one storm.
pub struct StormArgs {
    pub waiters: usize,
    pub streams: usize,
    pub writers: usize,
    pub interval: Duration,
    pub duration: Duration,
    /// Long-poll waiters instead of SSE.
    pub long_poll: bool,
}

/// A small deterministic generator (xorshift), so runs are comparable.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

pub async fn run(ctx: Arc<Ctx>, a: StormArgs) -> Res<Value> {
    if a.streams == 0 || a.writers == 0 || a.waiters < a.streams {
        return fail("need streams > 0, writers > 0 and waiters >= streams");
    }
    let urls: Vec<String> =
        (0..a.streams).map(|i| ctx.stream_url(&format!("storm-{i:05}"))).collect();
    let mut tails = Vec::with_capacity(a.streams);
    for url in &urls {
        tails.push(ctx.create(url, TEXT).await?);
    }
    let mode = if a.long_poll { "long-poll" } else { "sse" };
    let mut m =
        ctx.result("storm", &format!("{}w-{}s-{}wr-{mode}", a.waiters, a.streams, a.writers));
    let sink = Sink::new();
    let deadline = Instant::now() + a.duration + Duration::from_secs(60);
    let mut tasks = Vec::with_capacity(a.waiters);
    for i in 0..a.waiters {
        let (url, tail) = (urls[i % a.streams].clone(), tails[i % a.streams].clone());
        tasks.push(if a.long_poll {
            tokio::spawn(long_poll_reader(ctx.clone(), url, tail, sink.clone(), deadline))
        } else {
            tokio::spawn(sse_reader(ctx.clone(), url, tail, sink.clone(), deadline))
        });
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    if !a.long_poll {
        wait_connected(&sink, a.waiters as u64, Duration::from_secs(60)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // long-polls reach the server
    m.insert("connected".into(), json!(sink.connected.get()));

    // Appends acknowledged per stream, to know what every waiter should get.
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..a.streams).map(|_| AtomicU64::new(0)).collect());
    let failed = Arc::new(AtomicU64::new(0));
    let meter = CpuMeter::start();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let ticks = (a.duration.as_nanos() / a.interval.as_nanos().max(1)) as u64;
    let mut writers = Vec::with_capacity(a.writers);
    for w in 0..a.writers {
        let (ctx, urls, acked, failed) = (ctx.clone(), urls.clone(), acked.clone(), failed.clone());
        let interval = a.interval;
        writers.push(tokio::spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
            // All writers on the same ticks: a burst per tick.
            let mut tick = tokio::time::interval_at(start, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            for _ in 0..ticks {
                tick.tick().await;
                let s = (next_random(&mut seed) % urls.len() as u64) as usize;
                match ctx.append(&urls[s], TEXT, token_body(ctx.now_ns(), 100)).await {
                    Ok(st) if (200..300).contains(&st) => {
                        acked[s].fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for w in writers {
        let _ = w.await;
    }
    let waiters_of =
        |s: usize| (a.waiters / a.streams + usize::from(s < a.waiters % a.streams)) as u64;
    let appends: u64 = acked.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let expected: u64 =
        acked.iter().enumerate().map(|(s, c)| c.load(Ordering::Relaxed) * waiters_of(s)).sum();
    drain(&[(&sink, expected)], Duration::from_secs(15)).await;
    meter.put(&mut m);
    for t in &tasks {
        t.abort();
    }
    m.insert("waiters".into(), json!(a.waiters));
    m.insert("streams".into(), json!(a.streams));
    m.insert("writers".into(), json!(a.writers));
    m.insert("interval_ms".into(), json!(a.interval.as_millis() as u64));
    m.insert("appends".into(), json!(appends));
    m.insert("errors".into(), json!(failed.load(Ordering::Relaxed)));
    m.insert("appends_per_s".into(), json!(round1(appends as f64 / a.duration.as_secs_f64())));
    m.insert(
        "throughput".into(),
        json!(round1(sink.received.get() as f64 / a.duration.as_secs_f64())),
    );
    m.insert("unit".into(), json!("deliveries/s"));
    put_sink(&mut m, &sink, expected);
    Ok(Value::Object(m))
}
