//! Command-line and environment configuration of the sidecar.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

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

    /// Log format: `text` or `json`.
    #[arg(long, env = "DS_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
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
    fn defaults() {
        let c = Config::with_database_url("postgresql://localhost/db");
        assert_eq!(c.listen, "127.0.0.1:4437".parse().unwrap());
        assert_eq!(c.long_poll_timeout(), Duration::from_secs(30));
        assert_eq!(c.sse_max_duration(), Duration::from_secs(60));
        assert!(c.read_chunk_bytes.is_none());
    }
}
