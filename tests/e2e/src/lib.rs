//! Harness for the end-to-end tests: starts `ds-sidecar` processes against
//! the test cluster, talks HTTP and SSE to them, and SQL to the cluster.
//! `scripts/test.sh` sets `DS_TEST_DATABASE_URL` and `DS_SIDECAR_BIN`.

pub mod cluster;
pub mod webhook;

use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};

/// The test database.
pub fn database_url() -> String {
    std::env::var("DS_TEST_DATABASE_URL").expect("DS_TEST_DATABASE_URL (run `make test`)")
}

/// A SQL connection to the test database.
pub async fn sql() -> Client {
    let (client, connection) =
        tokio_postgres::connect(&database_url(), NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// Every `ds.*` function's signature, comma-separated, for `GRANT EXECUTE`.
pub async fn every_ds_function(db: &Client) -> String {
    db.query_one(
        "SELECT string_agg(p.oid::regprocedure::text, ', ') FROM pg_proc p \
         WHERE p.pronamespace = 'ds'::regnamespace",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// A stream path no other test (or earlier run) uses.
pub fn unique_path(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("e2e/{name}/{nanos}")
}

/// An HTTP client for tests: no proxies, generous pool.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().pool_max_idle_per_host(0).build().unwrap()
}

/// A free TCP port on 127.0.0.1 (right now). With `DS_TEST_PORT_RANGE`
/// (`first-last`, for machines where each user has a port range), the next
/// free one of that range, in turn (a port handed out is not handed out
/// again until the range wraps, even before it is bound).
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let range = std::env::var("DS_TEST_PORT_RANGE").ok().and_then(|r| {
        let (a, b) = r.split_once('-')?;
        Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
    });
    let Some((first, last)) = range.filter(|(a, b)| a <= b) else {
        // The kernel may hand the same port out again once it is released:
        // never give one port twice in a row (a sidecar's listener and its
        // metrics listener got the same one, and it could not start).
        static RECENT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
        let mut recent = RECENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for _ in 0..64 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            if !recent.contains(&port) {
                if recent.len() >= 256 {
                    recent.remove(0);
                }
                recent.push(port);
                return port;
            }
        }
        panic!("the kernel keeps handing out recently used ports");
    };
    let span = u32::from(last - first) + 1;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % span;
        let port = first + n as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in DS_TEST_PORT_RANGE {first}-{last}");
}

/// The test database URL with another user.
pub fn database_url_as(user: &str) -> String {
    let url = database_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("postgresql://{user}@{host}")
}

/// The HS256 secret of test sidecars started with [`JWT_FLAGS`].
pub const JWT_SECRET: &str = "e2e-secret-0123456789abcdef-0123456789";

/// Flags of a sidecar with `--auth jwt` and the test secret.
pub const JWT_FLAGS: [&str; 4] = ["--auth", "jwt", "--jwt-secret", JWT_SECRET];

/// An HS256 token for `role` that expires in `exp_in` seconds (negative:
/// expired), signed with [`JWT_SECRET`].
pub fn token(role: &str, exp_in: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims =
        serde_json::json!({"role": role, "sub": format!("e2e-{role}"), "exp": now + exp_in});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A running sidecar process, killed on drop.
pub struct Sidecar {
    pub port: u16,
    /// Port of the `/metrics` listener (`None` when it is off).
    pub metrics_port: Option<u16>,
    child: Child,
}

impl Sidecar {
    /// Starts a sidecar on a free port with extra flags; waits for /health.
    /// A sidecar that exits at startup (its port taken meanwhile by another
    /// process) is started again on other ports, twice at most.
    pub async fn start(extra: &[&str]) -> Sidecar {
        for _ in 0..2 {
            if let Some(sidecar) =
                Sidecar::try_start_with(&database_url(), free_port(), extra).await
            {
                return sidecar;
            }
        }
        Sidecar::start_on(free_port(), extra).await
    }

    /// Starts a sidecar on `port` (e.g. to restart one in place).
    pub async fn start_on(port: u16, extra: &[&str]) -> Sidecar {
        Sidecar::start_with(&database_url(), port, extra).await
    }

    /// Starts a sidecar against `database_url` on `port`. Unless `extra`
    /// says otherwise, `/metrics` listens on a free port of its own.
    pub async fn start_with(database_url: &str, port: u16, extra: &[&str]) -> Sidecar {
        match Sidecar::try_start_with(database_url, port, extra).await {
            Some(sidecar) => sidecar,
            None => panic!("the sidecar on port {port} exited at startup (see its log above)"),
        }
    }

    /// [`Self::start_with`], or `None` when the process exits before it is
    /// healthy (it panics when it is still not healthy after 30 s).
    async fn try_start_with(database_url: &str, port: u16, extra: &[&str]) -> Option<Sidecar> {
        let bin = std::env::var("DS_SIDECAR_BIN").expect("DS_SIDECAR_BIN (run `make test`)");
        let mut metrics_port = None;
        let mut args = vec![
            "--database-url".to_owned(),
            database_url.to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        if !extra.contains(&"--metrics-listen") {
            let p = free_port();
            metrics_port = Some(p);
            args.extend(["--metrics-listen".to_owned(), format!("127.0.0.1:{p}")]);
        }
        let child = Command::new(bin)
            .args(args)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ds-sidecar");
        let mut sidecar = Sidecar { port, metrics_port, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http().get(sidecar.url("/health")).send().await.ok().map(|r| r.status().as_u16())
            != Some(200)
        {
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                eprintln!("ds-sidecar on port {port} exited at startup: {status}");
                return None;
            }
            assert!(Instant::now() < deadline, "sidecar on port {port} did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(sidecar)
    }

    /// URL of `path` on this sidecar.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// URL of a stream.
    pub fn stream(&self, stream_path: &str) -> String {
        self.url(&format!("/v1/stream/{stream_path}"))
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let port = self.metrics_port.expect("metrics listener");
        http()
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of an unlabelled metric (`name` as exposed, e.g.
    /// `ds_sidecar_rate_limited_total`).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    /// Kills the process at once (no graceful shutdown) and waits for it.
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub data: String,
}

/// Reads an SSE response, calling `on_event` until it returns false or the
/// stream ends. Returns whether `on_event` asked to stop.
pub async fn read_events(
    response: reqwest::Response,
    mut on_event: impl FnMut(Event) -> bool,
) -> bool {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { return false };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let mut event = Event { event: "message".into(), data: String::new() };
            let mut lines = Vec::new();
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    lines.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                }
            }
            event.data = lines.join("\n");
            if !on_event(event) {
                return true;
            }
        }
    }
    false
}

/// Creates the JSON stream `path` through `sidecar` (asserting 201);
/// returns its tail.
pub async fn create_json_stream(sidecar: &Sidecar, path: &str) -> String {
    create_stream(sidecar, path, "application/json").await
}

/// Creates the stream `path` of `content_type` through `sidecar`
/// (asserting 201); returns its tail.
pub async fn create_stream(sidecar: &Sidecar, path: &str, content_type: &str) -> String {
    let r =
        http().put(sidecar.stream(path)).header("content-type", content_type).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201, "create {path}");
    next_offset(&r)
}

/// `Stream-Next-Offset` of a response.
pub fn next_offset(response: &reqwest::Response) -> String {
    response.headers()["stream-next-offset"].to_str().unwrap().to_owned()
}
