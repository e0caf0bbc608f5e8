//! Command-line and environment configuration of the sidecar.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How requests are authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Nobody is asked who they are: every request runs as the sidecar's own
    /// database role (loopback only unless `--allow-anonymous`).
    None,
    /// A JWT (`Authorization: Bearer`, or `?token=`) names the Postgres role
    /// each request runs as.
    Jwt,
}

/// A secret given on the command line or in the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Secret, String> {
        Ok(Secret(s.to_owned()))
    }
}

/// An optional listen address: `off` disables the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl FromStr for OptionalAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<OptionalAddr, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(OptionalAddr(None));
        }
        s.parse().map(|a| OptionalAddr(Some(a))).map_err(|e| format!("{e} (or `off`)"))
    }
}

/// Everything the sidecar can be told at startup; each flag also reads an
/// environment variable (`DS_*`).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ds-sidecar",
    version,
    about = "HTTP sidecar speaking the Durable Streams protocol"
)]
pub struct Config {
    /// Postgres connection URL of the database with `CREATE EXTENSION durable_streams`.
    #[arg(long, env = "DS_DATABASE_URL")]
    pub database_url: String,

    /// Address to listen on.
    #[arg(long, env = "DS_LISTEN", default_value = "127.0.0.1:4437")]
    pub listen: SocketAddr,

    /// Maximum number of pooled database connections (the LISTEN connection is extra).
    #[arg(long, env = "DS_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,

    /// How long a long-poll waits for data before answering 204.
    #[arg(long, env = "DS_LONG_POLL_TIMEOUT_MS", default_value_t = 30_000)]
    pub long_poll_timeout_ms: u64,

    /// How long an SSE connection stays open before the server ends it (§10.2).
    #[arg(long, env = "DS_SSE_MAX_DURATION_MS", default_value_t = 60_000)]
    pub sse_max_duration_ms: u64,

    /// Largest accepted request body; larger ones get 413.
    #[arg(long, env = "DS_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Largest response chunk asked of `ds.read_chunk` (default: the extension's).
    #[arg(long, env = "DS_READ_CHUNK_BYTES")]
    pub read_chunk_bytes: Option<i64>,

    /// Maximum concurrent SSE connections; more get 503.
    #[arg(long, env = "DS_MAX_SSE_CLIENTS", default_value_t = 10_000)]
    pub max_sse_clients: usize,

    /// Maximum concurrent waiting long-polls; more get 503.
    #[arg(long, env = "DS_MAX_LONG_POLL_WAITERS", default_value_t = 10_000)]
    pub max_long_poll_waiters: usize,

    /// Maximum SSE clients plus waiting long-polls on any one stream; more get 503.
    #[arg(long, env = "DS_MAX_WAITERS_PER_STREAM", default_value_t = 10_000)]
    pub max_waiters_per_stream: usize,

    /// How long an SSE client may take to accept one event before it is
    /// dropped (memory per client stays bounded either way).
    #[arg(long, env = "DS_SSE_SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub sse_send_timeout_ms: u64,

    /// Group commit: appends are spread over this many lanes (by stream),
    /// each committing whatever queued up as one transaction. One lane makes
    /// the biggest batches (fewest commits); more overlap one batch's WAL
    /// flush with the next batch's work, which pays with more cores.
    #[arg(long, env = "DS_APPEND_LANES", default_value_t = 1)]
    pub append_lanes: usize,

    /// How long an append may wait for a stream another transaction holds
    /// locked (Postgres `lock_timeout` on the sidecar's connections); then 503.
    #[arg(long, env = "DS_LOCK_TIMEOUT_MS", default_value_t = 10_000)]
    pub lock_timeout_ms: u64,

    /// Most appends one group-commit transaction carries (1 disables batching).
    #[arg(long, env = "DS_MAX_APPEND_BATCH", default_value_t = 256)]
    pub max_append_batch: usize,

    /// Most bytes of request bodies one group-commit transaction carries; a
    /// request that would go over starts the next batch (one larger than
    /// this goes alone).
    #[arg(long, env = "DS_MAX_APPEND_BATCH_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_append_batch_bytes: usize,

    /// Log format: `text` or `json`.
    #[arg(long, env = "DS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Authentication: `none` (every request acts as the sidecar's own
    /// database role) or `jwt` (a bearer token names the role).
    #[arg(long, env = "DS_AUTH", value_enum, default_value_t = AuthMode::None)]
    pub auth: AuthMode,

    /// With `--auth none`, allow listening on a non-loopback address.
    #[arg(long, env = "DS_ALLOW_ANONYMOUS", default_value_t = false)]
    pub allow_anonymous: bool,

    /// HS256 secret for `--auth jwt` (at least 32 bytes). Prefer the
    /// environment variable or `--jwt-secret-file` (arguments are visible to
    /// other local users).
    #[arg(long, env = "DS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// File holding the HS256 secret (trailing newline ignored).
    #[arg(long, env = "DS_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Local JWKS file with RS256 and EdDSA (Ed25519) public keys, selected
    /// by the token's `kid`.
    #[arg(long, env = "DS_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Required `aud` claim (when set, tokens without it are refused).
    #[arg(long, env = "DS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim (when set, tokens without it are refused).
    #[arg(long, env = "DS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Clock skew allowed when checking `exp` and `nbf`.
    #[arg(long, env = "DS_JWT_LEEWAY_SECONDS", default_value_t = 30)]
    pub jwt_leeway_seconds: u64,

    /// The claim naming the Postgres role a request runs as.
    #[arg(long, env = "DS_JWT_ROLE_CLAIM", default_value = "role")]
    pub jwt_role_claim: String,

    /// Origins allowed cross-origin access (comma-separated
    /// `scheme://host[:port]`, or `*` for any). Default: none.
    #[arg(long, env = "DS_CORS_ORIGINS", default_value = "")]
    pub cors_origins: String,

    /// Address of the Prometheus `/metrics` listener, or `off`.
    #[arg(long, env = "DS_METRICS_LISTEN", default_value = "127.0.0.1:9437")]
    pub metrics_listen: OptionalAddr,

    /// Requests per second allowed per token subject (per client IP when
    /// anonymous); 0 turns rate limiting off.
    #[arg(long, env = "DS_RATE_LIMIT_PER_SECOND", default_value_t = 0)]
    pub rate_limit_per_second: u32,

    /// Requests allowed in a burst above the rate (default: one second's worth).
    #[arg(long, env = "DS_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,

    /// Most clients (subjects or IPs) the rate limiter remembers; beyond it
    /// idle ones are forgotten, and while it is still full the newcomers
    /// share one limit.
    #[arg(long, env = "DS_RATE_LIMIT_MAX_KEYS", default_value_t = 100_000)]
    pub rate_limit_max_keys: usize,

    /// Time a client has to send a request's headers (slowloris guard).
    #[arg(long, env = "DS_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Most open client connections; more are closed at once.
    #[arg(long, env = "DS_MAX_CONNECTIONS", default_value_t = 25_000)]
    pub max_connections: usize,

    /// Longest wait for a pooled database connection; then 503 + Retry-After.
    #[arg(long, env = "DS_POOL_TIMEOUT_MS", default_value_t = 5_000)]
    pub pool_timeout_ms: u64,

    /// Postgres `statement_timeout` of the sidecar's connections (0: none).
    /// Live reads hold no connection while they wait, so this can be tight.
    #[arg(long, env = "DS_STATEMENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub statement_timeout_ms: u64,

    /// How much longer than `--statement-timeout-ms` a database call may
    /// take before the sidecar stops waiting for it and answers 503 (outcome
    /// unknown). Postgres never cancels a commit's wait for a synchronous
    /// standby, so without this bound an append hangs while that standby is
    /// away.
    #[arg(long, env = "DS_COMMIT_WAIT_TIMEOUT_MS", default_value_t = 10_000)]
    pub commit_wait_timeout_ms: u64,

    /// Longest time to open a database connection.
    #[arg(long, env = "DS_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
    pub connect_timeout_ms: u64,

    /// Most bytes queued for one SSE client; a client that falls further
    /// behind is dropped (and counted in `sse_slow_dropped`).
    #[arg(long, env = "DS_SSE_MAX_QUEUED_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub sse_max_queued_bytes: usize,

    /// A hot standby of `--database-url` to serve reads from (repeatable;
    /// in the environment, separate several with `;`). Reads go round-robin
    /// to standbys that have replayed what this sidecar knows was committed;
    /// writes and LISTEN stay on the primary.
    #[arg(long = "read-database-url", env = "DS_READ_DATABASE_URL", value_delimiter = ';')]
    pub read_database_urls: Vec<String>,

    /// Longest a read waits for a standby to replay what this sidecar knows
    /// was committed; then that read (and later ones, until the standby
    /// catches up) goes to the primary.
    #[arg(long, env = "DS_MAX_REPLICA_LAG_MS", default_value_t = 2_000)]
    pub max_replica_lag_ms: u64,

    /// `synchronous_commit` of the sidecar's connections, whatever the
    /// server or role default (`off` is not allowed: a 2xx means durable).
    #[arg(long, env = "DS_SYNCHRONOUS_COMMIT", default_value = "on",
          value_parser = ["on", "remote_write", "remote_apply", "local"])]
    pub synchronous_commit: String,

    /// This sidecar's public base URL (`scheme://host[:port][/prefix]`), as
    /// clients and webhook receivers reach it: subscription callback and
    /// JWKS URLs are built from it, never from a request's Host header.
    /// Default: `http://<--listen>`.
    #[arg(long, env = "DS_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Most webhook deliveries in flight at once (this sidecar).
    #[arg(long, env = "DS_WEBHOOK_CONCURRENCY", default_value_t = 64)]
    pub webhook_concurrency: usize,

    /// Most webhook deliveries in flight at once to one host:port.
    #[arg(long, env = "DS_WEBHOOK_CONCURRENCY_PER_HOST", default_value_t = 8)]
    pub webhook_concurrency_per_host: usize,

    /// Time allowed for a webhook request, response included.
    #[arg(long, env = "DS_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,

    /// Time allowed to connect to a webhook receiver.
    #[arg(long, env = "DS_WEBHOOK_CONNECT_TIMEOUT_MS", default_value_t = 3_000)]
    pub webhook_connect_timeout_ms: u64,

    /// Consecutive failed deliveries to one host:port that open its
    /// circuit breaker (deliveries to it then wait for a probe).
    #[arg(long, env = "DS_WEBHOOK_BREAKER_THRESHOLD", default_value_t = 5)]
    pub webhook_breaker_threshold: u32,

    /// How long an open circuit breaker waits before one probe delivery.
    #[arg(long, env = "DS_WEBHOOK_BREAKER_COOL_DOWN_MS", default_value_t = 30_000)]
    pub webhook_breaker_cool_down_ms: u64,
}

impl Config {
    /// A configuration with defaults for everything but the database URL.
    pub fn with_database_url(database_url: impl Into<String>) -> Config {
        Config::parse_from(["ds-sidecar", "--database-url", &database_url.into()])
    }

    /// [`Config::long_poll_timeout_ms`] as a duration.
    pub fn long_poll_timeout(&self) -> Duration {
        Duration::from_millis(self.long_poll_timeout_ms)
    }

    /// [`Config::sse_send_timeout_ms`] as a duration.
    pub fn sse_send_timeout(&self) -> Duration {
        Duration::from_millis(self.sse_send_timeout_ms)
    }

    /// [`Config::sse_max_duration_ms`] as a duration.
    pub fn sse_max_duration(&self) -> Duration {
        Duration::from_millis(self.sse_max_duration_ms)
    }

    /// The public base URL without a trailing slash ([`Config::public_url`]).
    pub fn public_base(&self) -> Result<String, String> {
        let Some(url) = &self.public_url else { return Ok(format!("http://{}", self.listen)) };
        let base = url.trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(|| format!("--public-url {url:?} must start with http:// or https://"))?;
        if rest.is_empty()
            || rest.starts_with('/')
            || base.contains(['?', '#', ' '])
            || !base.is_ascii()
        {
            return Err(format!(
                "--public-url {url:?} must be scheme://host[:port][/prefix], without query or fragment"
            ));
        }
        Ok(base.to_owned())
    }

    /// Refuses configurations that would expose every stream by accident:
    /// `--auth none` on a non-loopback address without `--allow-anonymous`.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.auth == AuthMode::None && !self.listen.ip().is_loopback() && !self.allow_anonymous {
            return Err(format!(
                "refusing to listen on {} without authentication: anyone who can reach it could \
                 read and write every stream. Use --auth jwt, listen on a loopback address, or \
                 pass --allow-anonymous if that is really intended",
                self.listen
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn public_base_url() {
        let mut c = Config::with_database_url("postgresql://localhost/db");
        assert_eq!(c.public_base().unwrap(), "http://127.0.0.1:4437");
        c.public_url = Some("https://streams.example.com/ds/".into());
        assert_eq!(c.public_base().unwrap(), "https://streams.example.com/ds");
        for bad in [
            "streams.example.com",
            "ftp://x",
            "https://",
            "https:///x",
            "https://x/?a",
            "https://x y",
        ] {
            c.public_url = Some(bad.into());
            assert!(c.public_base().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults() {
        let c = Config::with_database_url("postgresql://localhost/db");
        assert_eq!(c.listen, "127.0.0.1:4437".parse().unwrap());
        assert_eq!(c.long_poll_timeout(), Duration::from_secs(30));
        assert_eq!(c.sse_max_duration(), Duration::from_secs(60));
        assert!(c.read_chunk_bytes.is_none());
        assert_eq!(c.auth, AuthMode::None);
        assert_eq!(c.metrics_listen, OptionalAddr(Some("127.0.0.1:9437".parse().unwrap())));
        assert_eq!(c.synchronous_commit, "on");
        assert_eq!(c.rate_limit_per_second, 0);
        assert!(c.cors_origins.is_empty());
        assert!(c.read_database_urls.is_empty());
        assert_eq!(c.max_replica_lag_ms, 2_000);
    }

    #[test]
    fn read_replicas_repeat() {
        let c = Config::parse_from([
            "ds-sidecar",
            "--database-url",
            "postgresql://p/db",
            "--read-database-url",
            "postgresql://s1/db",
            "--read-database-url",
            "host=s2,s3 dbname=db;postgresql://s4/db",
        ]);
        assert_eq!(
            c.read_database_urls,
            ["postgresql://s1/db", "host=s2,s3 dbname=db", "postgresql://s4/db"]
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = Config::parse_from([
            "ds-sidecar",
            "--database-url",
            "postgresql://x/db",
            "--jwt-secret",
            "hunter2hunter2",
        ]);
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn synchronous_commit_off_is_refused() {
        let r = Config::try_parse_from([
            "ds-sidecar",
            "--database-url",
            "postgresql://x/db",
            "--synchronous-commit",
            "off",
        ]);
        assert!(r.is_err());
    }

    #[test]
    fn anonymous_exposure() {
        let parse = |args: &[&str]| {
            let mut all = vec!["ds-sidecar", "--database-url", "postgresql://x/db"];
            all.extend_from_slice(args);
            Config::parse_from(all)
        };
        assert!(parse(&[]).check_exposure().is_ok());
        assert!(parse(&["--listen", "[::1]:4437"]).check_exposure().is_ok());
        let err = parse(&["--listen", "0.0.0.0:4437"]).check_exposure().unwrap_err();
        assert!(err.contains("--allow-anonymous"), "{err}");
        assert!(parse(&["--listen", "0.0.0.0:4437", "--allow-anonymous"]).check_exposure().is_ok());
        assert!(parse(&["--listen", "0.0.0.0:4437", "--auth", "jwt"]).check_exposure().is_ok());
        assert_eq!(parse(&["--metrics-listen", "off"]).metrics_listen, OptionalAddr(None));
    }
}
