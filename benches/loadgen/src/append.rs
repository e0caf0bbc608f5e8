//! Scenarios 1-3: closed-loop appenders (each writer sends its next append
//! when the previous one answered), optionally as idempotent producers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{CpuMeter, Ctx, OCTET, Res, fail, histogram, put_latency, record, round1};

pub struct AppendArgs {
    pub writers: usize,
    pub streams: usize,
    pub duration: Duration,
    pub max_per_writer: u64,
    pub body_bytes: usize,
    pub producer: bool,
}

pub async fn run(ctx: Arc<Ctx>, a: AppendArgs) -> Res<Value> {
    if a.writers == 0 || a.streams == 0 {
        return fail("writers and streams must be positive");
    }
    let mut urls = Vec::with_capacity(a.streams);
    for s in 0..a.streams {
        let url = ctx.stream_url(&format!("append-{s}"));
        ctx.create(&url, OCTET).await?;
        urls.push(url);
    }
    let urls = Arc::new(urls);
    let body = bytes::Bytes::from(vec![b'a'; a.body_bytes]);

    // One untimed append per writer opens its connection (and, as a producer,
    // takes sequence number 0). The file-backed reference server sometimes
    // answers 404 to the first concurrent appends of just-created streams:
    // such answers are retried (a 404 appends nothing) and counted.
    let mut warm = Vec::new();
    for w in 0..a.writers {
        let (ctx, urls, body) = (ctx.clone(), urls.clone(), body.clone());
        let producer = a.producer;
        warm.push(tokio::spawn(async move {
            let mut retries = 0u64;
            loop {
                let url = &urls[w % urls.len()];
                let status = send(&ctx, url, body.clone(), producer.then_some((w, 0))).await?;
                if status != 404 || retries == 20 {
                    return Res::Ok((status, retries));
                }
                retries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    let mut warmup_retries = 0;
    for h in warm {
        let (status, retries) = h.await??;
        warmup_retries += retries;
        if !(200..300).contains(&status) {
            return fail(format!("warm-up append answered {status}"));
        }
    }

    let meter = CpuMeter::start();
    let start = Instant::now();
    let deadline = start + a.duration;
    let mut tasks = Vec::new();
    for w in 0..a.writers {
        let (ctx, urls, body) = (ctx.clone(), urls.clone(), body.clone());
        let (producer, max) = (a.producer, a.max_per_writer);
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
            let mut seq = 1u64;
            while seq <= max && Instant::now() < deadline {
                let t = Instant::now();
                let r =
                    send(&ctx, &urls[w % urls.len()], body.clone(), producer.then_some((w, seq)))
                        .await;
                record(&mut h, t.elapsed());
                let key = match r {
                    Ok(s) => s.to_string(),
                    Err(_) => "error".to_owned(),
                };
                *statuses.entry(key).or_default() += 1;
                seq += 1;
            }
            (h, statuses)
        }));
    }
    let mut h = histogram();
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for t in tasks {
        let (th, ts) = t.await?;
        h.add(&th)?;
        for (k, v) in ts {
            *statuses.entry(k).or_default() += v;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok: u64 = statuses.iter().filter(|(k, _)| k.starts_with('2')).map(|(_, v)| v).sum();
    let total: u64 = statuses.values().sum();

    let scenario = if a.producer { "append_producer" } else { "append" };
    let variant = format!("{}w-{}s", a.writers, a.streams);
    let mut m = ctx.result(scenario, &variant);
    meter.put(&mut m);
    m.insert("throughput".into(), json!(round1(ok as f64 / elapsed)));
    m.insert("unit".into(), json!("appends/s"));
    m.insert("ok".into(), json!(ok));
    m.insert("errors".into(), json!(total - ok));
    m.insert("statuses".into(), json!(statuses));
    m.insert("body_bytes".into(), json!(a.body_bytes));
    m.insert("warmup_404_retries".into(), json!(warmup_retries));
    put_latency(&mut m, "", &h);
    Ok(Value::Object(m))
}

/// One append; `producer` is (writer index, sequence number).
async fn send(
    ctx: &Ctx,
    url: &str,
    body: bytes::Bytes,
    producer: Option<(usize, u64)>,
) -> Res<u16> {
    let mut req = ctx
        .client
        .post(url)
        .header("Content-Type", OCTET)
        .body(body)
        .timeout(Duration::from_secs(30));
    if let Some((w, seq)) = producer {
        req = req
            .header("Producer-Id", format!("writer-{w}"))
            .header("Producer-Epoch", "0")
            .header("Producer-Seq", seq.to_string());
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    resp.bytes().await?;
    Ok(status)
}
