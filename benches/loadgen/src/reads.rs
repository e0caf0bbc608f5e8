//! Closed-loop small catch-up reads (`GET ?offset=-1` of a one-message
//! stream): the per-request cost of the read path, e.g. with and without
//! authentication (benches/auth.sh).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{CpuMeter, Ctx, OCTET, Res, fail, histogram, put_latency, record, round1};

pub async fn run(ctx: Arc<Ctx>, readers: usize, streams: usize, duration: Duration) -> Res<Value> {
    if readers == 0 || streams == 0 {
        return fail("readers and streams must be positive");
    }
    let mut urls = Vec::with_capacity(streams);
    for s in 0..streams {
        let url = ctx.stream_url(&format!("read-{s}"));
        ctx.create(&url, OCTET).await?;
        let status = ctx.append(&url, OCTET, bytes::Bytes::from(vec![b'r'; 100])).await?;
        if !(200..300).contains(&status) {
            return fail(format!("append answered {status}"));
        }
        urls.push(url);
    }
    let urls = Arc::new(urls);
    let meter = CpuMeter::start();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for r in 0..readers {
        let (ctx, urls) = (ctx.clone(), urls.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = histogram();
            let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let url = format!("{}?offset=-1", urls[r % urls.len()]);
                let res = async {
                    let resp = ctx.client.get(url).timeout(Duration::from_secs(30)).send().await?;
                    let status = resp.status().as_u16();
                    resp.bytes().await?;
                    Res::Ok(status)
                }
                .await;
                record(&mut h, t.elapsed());
                let key = res.map_or_else(|_| "error".to_owned(), |s| s.to_string());
                *statuses.entry(key).or_default() += 1;
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
    let mut m = ctx.result("read", &format!("{readers}r-{streams}s"));
    meter.put(&mut m);
    m.insert("throughput".into(), json!(round1(ok as f64 / elapsed)));
    m.insert("unit".into(), json!("reads/s"));
    m.insert("ok".into(), json!(ok));
    m.insert("errors".into(), json!(total - ok));
    m.insert("statuses".into(), json!(statuses));
    put_latency(&mut m, "", &h);
    Ok(Value::Object(m))
}
