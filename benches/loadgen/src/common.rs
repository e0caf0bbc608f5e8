//! What every scenario shares: the HTTP client and stream naming, latency
//! histograms, timestamp tokens carried in message bodies, the load
//! generator's own CPU time and the server's RSS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

pub const OCTET: &str = "application/octet-stream";
pub const TEXT: &str = "text/plain";

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Fails a scenario with a message.
pub fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(msg.into().into())
}

/// One scenario run against one target.
pub struct Ctx {
    pub client: reqwest::Client,
    base: String,
    /// Path under which the server keeps streams (`/v1/stream/`, or `/`).
    prefix: String,
    run: String,
    pub target: String,
    pub server_pid: Option<u32>,
    t0: Instant,
}

impl Ctx {
    /// `token`: sent as `Authorization: Bearer` with every request;
    /// `prefix`: the path before a stream's name (`/v1/stream/`).
    pub fn new(
        base: &str,
        prefix: &str,
        target: &str,
        server_pid: Option<u32>,
        token: Option<&str>,
    ) -> Res<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            prefix: format!("/{}/", prefix.trim_matches('/')).replace("//", "/"),
            run: format!("r{:x}", nanos % (1 << 48)),
            target: target.to_owned(),
            server_pid,
            t0: Instant::now(),
        })
    }

    /// URL of stream `name`, unique to this run.
    pub fn stream_url(&self, name: &str) -> String {
        self.stream_url_at(&self.base, name)
    }

    /// [`Ctx::stream_url`] on another server (`base` without a trailing `/`).
    pub fn stream_url_at(&self, base: &str, name: &str) -> String {
        format!("{}{}bench/{}/{}", base.trim_end_matches('/'), self.prefix, self.run, name)
    }

    /// Stream `name`'s path as subscriptions name it (below the prefix).
    pub fn stream_path(&self, name: &str) -> String {
        format!("bench/{}/{}", self.run, name)
    }

    /// Id of subscription `index`, unique to this run.
    pub fn subscription_id(&self, index: usize) -> String {
        format!("bench-{}-{index}", self.run)
    }

    /// URL of subscription `id` (`{prefix}__ds/subscriptions/{id}`).
    pub fn subscription_url(&self, id: &str) -> String {
        format!("{}{}__ds/subscriptions/{id}", self.base, self.prefix)
    }

    /// Nanoseconds since this run started: the clock of the message tokens.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Creates a stream (PUT) and returns its tail offset.
    pub async fn create(&self, url: &str, content_type: &str) -> Res<String> {
        let resp = self
            .client
            .put(url)
            .header("Content-Type", content_type)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = resp.status();
        if status.as_u16() != 201 && status.as_u16() != 200 {
            return fail(format!("PUT {url}: {status}"));
        }
        header(&resp, "Stream-Next-Offset").map_or_else(|| fail("PUT: no Stream-Next-Offset"), Ok)
    }

    /// Appends one body; returns the HTTP status.
    pub async fn append(&self, url: &str, content_type: &str, body: bytes::Bytes) -> Res<u16> {
        let resp = self
            .client
            .post(url)
            .header("Content-Type", content_type)
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = resp.status().as_u16();
        resp.bytes().await?;
        Ok(status)
    }

    /// Fields every result line carries.
    pub fn result(&self, scenario: &str, variant: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("scenario".into(), json!(scenario));
        m.insert("variant".into(), json!(variant));
        m.insert("target".into(), json!(self.target));
        m
    }
}

pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Latency histogram in microseconds (1 µs .. 10 min, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, 600_000_000);
    h.saturating_record(us);
}

/// Adds p50/p99/max (ms) and the sample count of `h` under `prefix`.
pub fn put_latency(m: &mut Map<String, Value>, prefix: &str, h: &Histogram<u64>) {
    let ms = |us: u64| us as f64 / 1000.0;
    if h.is_empty() {
        for k in ["p50_ms", "p99_ms", "max_ms"] {
            m.insert(format!("{prefix}{k}"), Value::Null);
        }
    } else {
        m.insert(format!("{prefix}p50_ms"), json!(ms(h.value_at_quantile(0.5))));
        m.insert(format!("{prefix}p99_ms"), json!(ms(h.value_at_quantile(0.99))));
        m.insert(format!("{prefix}max_ms"), json!(ms(h.max())));
    }
    m.insert(format!("{prefix}samples"), json!(h.len()));
}

/// A 100-byte-or-longer body carrying the send time: `|` + 20 digits of
/// nanoseconds, padded with `x`. Concatenated bodies stay parseable.
pub fn token_body(ns: u64, len: usize) -> bytes::Bytes {
    let mut s = format!("|{ns:020}");
    while s.len() < len {
        s.push('x');
    }
    bytes::Bytes::from(s)
}

/// Calls `f` with every timestamp token found in `data`.
pub fn scan_tokens(data: &[u8], mut f: impl FnMut(u64)) {
    let mut i = 0;
    while i + 21 <= data.len() {
        if data[i] == b'|' && data[i + 1..i + 21].iter().all(u8::is_ascii_digit) {
            let ns = data[i + 1..i + 21].iter().fold(0u64, |a, d| a * 10 + u64::from(d - b'0'));
            f(ns);
            i += 21;
        } else {
            i += 1;
        }
    }
}

/// CPU time (user + system) of this process.
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Measures the load generator's CPU use over a phase: 100 = one core busy.
pub struct CpuMeter {
    cpu: Duration,
    wall: Instant,
}

impl CpuMeter {
    pub fn start() -> Self {
        Self { cpu: cpu_time(), wall: Instant::now() }
    }

    pub fn put(&self, m: &mut Map<String, Value>) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = cpu_time().saturating_sub(self.cpu).as_secs_f64();
        m.insert("loadgen_cpu_pct".into(), json!(round1(cpu / wall.max(1e-9) * 100.0)));
        m.insert("elapsed_s".into(), json!(round3(wall)));
    }
}

/// `VmRSS` and `VmHWM` (kB) of a process.
pub fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Raises the soft open-files limit to the hard one (10,000 clients need fds).
pub fn raise_nofile() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        rl.rlim_cur
    }
}

/// A counter shared between tasks.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_roundtrip_when_concatenated() {
        let mut data = token_body(12, 100).to_vec();
        assert_eq!(data.len(), 100);
        data.extend_from_slice(&token_body(99_999_999_999, 100));
        let mut seen = vec![];
        scan_tokens(&data, |ns| seen.push(ns));
        assert_eq!(seen, vec![12, 99_999_999_999]);
    }
}
