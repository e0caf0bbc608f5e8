//! Scenario 5: fill a stream with `mib` MiB (1 MiB appends), then read it
//! from `offset=-1`, following `Stream-Next-Offset` until
//! `Stream-Up-To-Date: true`, `reads` times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{
    CpuMeter, Ctx, OCTET, Res, fail, header, histogram, put_latency, record, round1,
};

pub async fn run(ctx: Arc<Ctx>, mib: usize, reads: usize, max_seconds: u64) -> Res<Value> {
    let url = ctx.stream_url("catchup");
    ctx.create(&url, OCTET).await?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let chunk = bytes::Bytes::from(chunk);
    let fill = Instant::now();
    for _ in 0..mib {
        let s = ctx.append(&url, OCTET, chunk.clone()).await?;
        if !(200..300).contains(&s) {
            return fail(format!("fill append answered {s}"));
        }
    }
    let fill_s = fill.elapsed().as_secs_f64();
    let want = (mib as u64) << 20;

    let meter = CpuMeter::start();
    let mut h = histogram();
    let mut rates = Vec::new();
    let mut requests = 0u64;
    let deadline = Instant::now() + Duration::from_secs(max_seconds);
    for _ in 0..reads {
        let t = Instant::now();
        let mut offset = "-1".to_owned();
        let mut got = 0u64;
        for _ in 0..100_000 {
            if Instant::now() > deadline {
                return fail("catch-up read exceeded its time budget");
            }
            let resp = ctx
                .client
                .get(format!("{url}?offset={offset}"))
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            if resp.status().as_u16() != 200 {
                return fail(format!("catch-up read answered {}", resp.status()));
            }
            requests += 1;
            let next = header(&resp, "Stream-Next-Offset");
            let done = header(&resp, "Stream-Up-To-Date").as_deref() == Some("true");
            got += resp.bytes().await?.len() as u64;
            match next {
                Some(n) => offset = n,
                None => return fail("catch-up read without Stream-Next-Offset"),
            }
            if done {
                break;
            }
        }
        if got != want {
            return fail(format!("catch-up read {got} bytes, expected {want}"));
        }
        record(&mut h, t.elapsed());
        rates.push(got as f64 / 1048576.0 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let mut m = ctx.result("catchup", &format!("{mib}MiB"));
    meter.put(&mut m);
    m.insert("throughput".into(), json!(round1(rates[rates.len() / 2])));
    m.insert("unit".into(), json!("MiB/s"));
    m.insert("reads".into(), json!(reads));
    m.insert("requests_per_read".into(), json!(requests / reads.max(1) as u64));
    m.insert("fill_mib_per_s".into(), json!(round1(mib as f64 / fill_s)));
    m.insert("errors".into(), json!(0));
    put_latency(&mut m, "read_", &h);
    Ok(Value::Object(m))
}
