//! `ds-loadgen`: load generator for Durable Streams servers (benches/run.sh).
//!
//! Every scenario runs against `{base}{prefix}bench/<run id>/...` (prefix
//! `/v1/stream/` by default; `/` for the upstream Rust server), is
//! bounded in time and in count, and prints one JSON line per result with
//! throughput, latency percentiles and the generator's own CPU use
//! (`loadgen_cpu_pct`, 100 = one core), so a saturated generator shows.

mod append;
mod catchup;
mod common;
mod live;
mod reads;
mod storm;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::common::{Ctx, Res};

#[derive(Parser)]
#[command(about = "Durable Streams load generator")]
struct Cli {
    /// Server base URL; streams live under {base}{stream-prefix}.
    #[arg(long, default_value = "http://127.0.0.1:4437")]
    base: String,
    /// Path before a stream's name: `/v1/stream/` (ours, the Node server)
    /// or `/` (the upstream Rust server serves streams at any path).
    #[arg(long, default_value = "/v1/stream/")]
    stream_prefix: String,
    /// Name of the target, copied into every result line.
    #[arg(long, default_value = "target")]
    target: String,
    /// Server process id, to report its RSS (/proc/PID/status).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Hard limit on the whole scenario.
    #[arg(long, default_value_t = 180)]
    max_seconds: u64,
    /// Bearer token sent with every request (a sidecar with --auth jwt).
    #[arg(long, env = "DS_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Closed-loop appends of fixed-size bodies (scenarios 1-3).
    Append {
        #[arg(long, default_value_t = 64)]
        writers: usize,
        #[arg(long, default_value_t = 64)]
        streams: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Bound on appends per writer.
        #[arg(long, default_value_t = 1_000_000)]
        max_per_writer: u64,
        #[arg(long, default_value_t = 100)]
        body_bytes: usize,
        /// Idempotent producer headers (Producer-Id per writer, epoch 0).
        #[arg(long)]
        producer: bool,
    },
    /// Closed-loop small catch-up reads (per-request cost of reads).
    Read {
        #[arg(long, default_value_t = 64)]
        readers: usize,
        #[arg(long, default_value_t = 64)]
        streams: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
    /// Append-to-receive latency, one writer every --interval-ms (scenario 4).
    Latency {
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 1)]
        long_poll_readers: usize,
        #[arg(long, default_value_t = 1)]
        sse_readers: usize,
        /// Base URL of a second server reading the same database (a sidecar
        /// reading from a hot standby): it gets --sse-readers SSE readers of
        /// its own, reported as `sse-replica`; appends still go to --base.
        #[arg(long)]
        replica_base: Option<String>,
    },
    /// Catch-up read of a --mib MiB stream (scenario 5).
    Catchup {
        #[arg(long, default_value_t = 64)]
        mib: usize,
        #[arg(long, default_value_t = 3)]
        reads: usize,
    },
    /// SSE fan-out: --clients readers on one stream (scenario 6).
    Fanout {
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        rate: u32,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Long-poll waiters woken by one append (scenario 7).
    Wake {
        #[arg(long, default_value_t = 10_000)]
        waiters: usize,
        /// Wait after the last waiter was started, before the append.
        #[arg(long, default_value_t = 3.0)]
        settle_seconds: f64,
    },
    /// Wake storm: --waiters over --streams, --writers appending (storm.rs).
    Storm {
        #[arg(long, default_value_t = 10_000)]
        waiters: usize,
        #[arg(long, default_value_t = 1000)]
        streams: usize,
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Each writer appends once per interval, all on the same tick.
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long)]
        long_poll: bool,
    },
    /// Webhook subscriptions: append-to-webhook latency (webhook.rs).
    Webhook {
        /// Webhook subscriptions on the appended stream.
        #[arg(long, default_value_t = 1)]
        subscriptions: usize,
        /// Sequential appends measured (after one warm-up append).
        #[arg(long, default_value_t = 300)]
        rounds: usize,
        /// Where the webhook receiver listens.
        #[arg(long, default_value = "127.0.0.1:4440")]
        receiver: std::net::SocketAddr,
        /// Idle time before each append.
        #[arg(long, default_value_t = 20)]
        gap_ms: u64,
        /// Longest wait for one append's webhooks.
        #[arg(long, default_value_t = 30.0)]
        round_timeout_seconds: f64,
    },
}

fn main() -> Res<()> {
    let cli = Cli::parse();
    common::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    let ctx = Arc::new(Ctx::new(
        &cli.base,
        &cli.stream_prefix,
        &cli.target,
        cli.server_pid,
        cli.token.as_deref(),
    )?);
    let limit = Duration::from_secs(cli.max_seconds);
    let lines = rt.block_on(async {
        match tokio::time::timeout(limit, run(ctx, cli.scenario)).await {
            Ok(r) => r,
            Err(_) => common::fail(format!("scenario exceeded --max-seconds {}", cli.max_seconds)),
        }
    });
    // Readers still blocked on the server are abandoned, not awaited.
    rt.shutdown_timeout(Duration::from_secs(1));
    let after = cli.server_pid.and_then(common::rss_kb);
    for mut line in lines? {
        if let (Some((rss, hwm)), Some(m)) = (after, line.as_object_mut()) {
            m.insert("server_rss_kb_after".into(), rss.into());
            m.insert("server_hwm_kb_after".into(), hwm.into());
        }
        println!("{line}");
    }
    Ok(())
}

fn secs(s: f64) -> Res<Duration> {
    if s.is_finite() && s > 0.0 && s <= 3600.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        common::fail(format!("duration {s} s out of range (0, 3600]"))
    }
}

async fn run(ctx: Arc<Ctx>, scenario: Scenario) -> Res<Vec<Value>> {
    Ok(match scenario {
        Scenario::Append { writers, streams, seconds, max_per_writer, body_bytes, producer } => {
            let a = append::AppendArgs {
                writers,
                streams,
                duration: secs(seconds)?,
                max_per_writer,
                body_bytes,
                producer,
            };
            vec![append::run(ctx, a).await?]
        }
        Scenario::Read { readers, streams, seconds } => {
            vec![reads::run(ctx, readers, streams, secs(seconds)?).await?]
        }
        Scenario::Latency {
            interval_ms,
            seconds,
            long_poll_readers,
            sse_readers,
            replica_base,
        } => {
            let interval = Duration::from_millis(interval_ms.max(1));
            let readers =
                live::Readers { long_poll: long_poll_readers, sse: sse_readers, replica_base };
            live::latency(ctx, interval, secs(seconds)?, readers).await?
        }
        Scenario::Catchup { mib, reads } => {
            vec![catchup::run(ctx, mib.max(1), reads.max(1), 120).await?]
        }
        Scenario::Fanout { clients, rate, seconds } => {
            vec![live::fanout(ctx, clients, rate, secs(seconds)?).await?]
        }
        Scenario::Wake { waiters, settle_seconds } => {
            vec![live::wake(ctx, waiters, secs(settle_seconds)?).await?]
        }
        Scenario::Storm { waiters, streams, writers, interval_ms, seconds, long_poll } => {
            let interval = Duration::from_millis(interval_ms.max(1));
            let a = storm::StormArgs {
                waiters,
                streams,
                writers,
                interval,
                duration: secs(seconds)?,
                long_poll,
            };
            vec![storm::run(ctx, a).await?]
        }
        Scenario::Webhook { subscriptions, rounds, receiver, gap_ms, round_timeout_seconds } => {
            if !receiver.ip().is_loopback() {
                return common::fail("--receiver must be a loopback address");
            }
            let a = webhook::WebhookArgs {
                subscriptions,
                rounds: rounds.clamp(1, 100_000),
                receiver,
                gap: Duration::from_millis(gap_ms),
                round_timeout: secs(round_timeout_seconds)?,
            };
            vec![webhook::run(ctx, a).await?]
        }
    })
}
