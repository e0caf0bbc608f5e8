//! Prometheus metrics served at `/metrics`.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `http_requests`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route: `stream`, `subscriptions` (`/v1/stream/__ds`), `health`, `metrics` or `other`.
    pub route: &'static str,
    /// HTTP method (`OTHER` for unusual ones).
    pub method: &'static str,
    /// Response status code.
    pub status: u16,
}

/// Labels of `http_request_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LatencyLabels {
    /// Route, as in [`RequestLabels`].
    pub route: &'static str,
    /// HTTP method, as in [`RequestLabels`].
    pub method: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~105 s: appends, catch-up reads and full long-polls alike.
    Histogram::new(exponential_buckets(0.0001, 4.0, 11))
}

/// Labels of `appends`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ds.try_append` outcome name (`unknown` for one this sidecar does
    /// not know).
    pub outcome: &'static str,
}

/// Labels of `webhook_deliveries`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `done`, `delivered`, `failed`, `refused` (forbidden address),
    /// `circuit_open` or `deferred` (host busy).
    pub outcome: &'static str,
}

/// Every metric of the sidecar.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub http_requests: Family<RequestLabels, Counter>,
    /// Time to response headers, by route and method.
    pub http_latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    /// SSE clients dropped because they stopped reading.
    pub sse_slow_dropped: Counter,
    /// Live reads answered from this process's own append, without a read.
    pub live_fresh_reads: Counter,
    /// Appends by outcome.
    pub appends: Family<OutcomeLabels, Counter>,
    /// Long-polls currently waiting.
    pub long_poll_waiters: Gauge,
    /// Open SSE connections.
    pub sse_clients: Gauge,
    /// Requests refused because a limit was reached.
    pub rejected_busy: Counter,
    /// Notifications received on the LISTEN connection.
    pub notifications: Counter,
    /// LISTEN reconnects.
    pub listen_reconnects: Counter,
    /// 1 while the LISTEN connection is up.
    pub listen_connected: Gauge,
    /// Pooled connections dropped because their server was read-only.
    pub db_connections_discarded: Counter,
    /// Pool connections open.
    pub pool_size: Gauge<i64, AtomicI64>,
    /// Pool connections idle.
    pub pool_available: Gauge<i64, AtomicI64>,
    /// Body bytes of each group-commit batch.
    pub append_batch_bytes: Histogram,
    /// The largest batch so far, in body bytes.
    pub append_batch_bytes_max: Gauge<i64, AtomicI64>,
    /// Open client connections.
    pub connections: Gauge,
    /// Connections closed at once because `--max-connections` were open.
    pub connections_refused: Counter,
    /// Requests answered 429.
    pub rate_limited: Counter,
    /// Requests answered 401.
    pub unauthenticated: Counter,
    /// Read routing to read replicas.
    pub replica: crate::replica::ReplicaMetrics,
    /// Webhook deliveries by outcome.
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    /// Webhook deliveries that were retries (the wake failed before).
    pub webhook_retries: Counter,
    /// Time of a webhook request, to the end of its (capped) response.
    pub webhook_latency: Histogram,
    /// Webhook hosts whose circuit breaker is open or half-open.
    pub webhook_breakers_open: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            http_requests: Family::default(),
            http_latency: Family::new_with_constructor(latency_histogram),
            sse_slow_dropped: Counter::default(),
            live_fresh_reads: Counter::default(),
            appends: Family::default(),
            long_poll_waiters: Gauge::default(),
            sse_clients: Gauge::default(),
            rejected_busy: Counter::default(),
            notifications: Counter::default(),
            listen_reconnects: Counter::default(),
            listen_connected: Gauge::default(),
            db_connections_discarded: Counter::default(),
            pool_size: Gauge::default(),
            pool_available: Gauge::default(),
            // 1 KiB .. 256 MiB.
            append_batch_bytes: Histogram::new(exponential_buckets(1024.0, 4.0, 10)),
            append_batch_bytes_max: Gauge::default(),
            connections: Gauge::default(),
            connections_refused: Counter::default(),
            rate_limited: Counter::default(),
            unauthenticated: Counter::default(),
            replica: Default::default(),
            webhook_deliveries: Family::default(),
            webhook_retries: Counter::default(),
            // 1 ms .. ~65 s.
            webhook_latency: Histogram::new(exponential_buckets(0.001, 4.0, 9)),
            webhook_breakers_open: Gauge::default(),
            registry: Registry::with_prefix("ds_sidecar"),
        };
        m.registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            m.http_requests.clone(),
        );
        m.registry.register(
            "http_request_duration_seconds",
            "Time from request to response headers, by route and method",
            m.http_latency.clone(),
        );
        m.registry.register(
            "sse_slow_dropped",
            "SSE clients dropped because they stopped reading",
            m.sse_slow_dropped.clone(),
        );
        m.registry.register(
            "live_fresh_reads",
            "Live reads (SSE events, long-poll answers) served from this sidecar's own committed \
             append without reading it back",
            m.live_fresh_reads.clone(),
        );
        m.registry.register("appends", "Appends by ds.try_append outcome", m.appends.clone());
        m.registry.register(
            "long_poll_waiters",
            "Long-polls currently waiting",
            m.long_poll_waiters.clone(),
        );
        m.registry.register("sse_clients", "Open SSE connections", m.sse_clients.clone());
        m.registry.register(
            "rejected_busy",
            "Requests refused because a limit was reached",
            m.rejected_busy.clone(),
        );
        m.registry.register(
            "notifications",
            "Notifications received on the LISTEN connection",
            m.notifications.clone(),
        );
        m.registry.register(
            "listen_reconnects",
            "Reconnects of the LISTEN connection",
            m.listen_reconnects.clone(),
        );
        m.registry.register(
            "listen_connected",
            "1 while the LISTEN connection is up",
            m.listen_connected.clone(),
        );
        m.registry.register(
            "db_connections_discarded",
            "Pooled connections dropped because their server was read-only (a standby, or in \
             recovery)",
            m.db_connections_discarded.clone(),
        );
        m.registry.register(
            "pool_connections",
            "Database connections open in the pool",
            m.pool_size.clone(),
        );
        m.registry.register(
            "pool_available",
            "Idle database connections in the pool",
            m.pool_available.clone(),
        );
        m.registry.register(
            "append_batch_bytes",
            "Body bytes of each group-commit batch",
            m.append_batch_bytes.clone(),
        );
        m.registry.register(
            "append_batch_bytes_max",
            "Body bytes of the largest group-commit batch so far",
            m.append_batch_bytes_max.clone(),
        );
        m.registry.register("connections", "Open client connections", m.connections.clone());
        m.registry.register(
            "connections_refused",
            "Connections closed at once because --max-connections were open",
            m.connections_refused.clone(),
        );
        m.registry.register("rate_limited", "Requests answered 429", m.rate_limited.clone());
        m.registry.register("unauthenticated", "Requests answered 401", m.unauthenticated.clone());
        m.replica.register(&mut m.registry);
        m.registry.register(
            "webhook_deliveries",
            "Webhook deliveries by outcome (done, delivered, failed, refused, circuit_open, deferred)",
            m.webhook_deliveries.clone(),
        );
        m.registry.register(
            "webhook_retries",
            "Webhook deliveries of wakes whose earlier delivery failed",
            m.webhook_retries.clone(),
        );
        m.registry.register(
            "webhook_delivery_duration_seconds",
            "Time of a webhook request, to the end of its response (read up to 64 KiB)",
            m.webhook_latency.clone(),
        );
        m.registry.register(
            "webhook_breakers_open",
            "Webhook hosts whose circuit breaker is open or half-open",
            m.webhook_breakers_open.clone(),
        );
        m
    }
}

/// Increments a gauge now and decrements it when dropped.
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Counts one more of whatever `gauge` counts, until the guard drops.
    pub fn new(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics() {
        let m = Metrics::default();
        m.http_requests
            .get_or_create(&RequestLabels { route: "stream", method: "GET", status: 200 })
            .inc();
        m.http_latency
            .get_or_create(&LatencyLabels { route: "stream", method: "GET" })
            .observe(0.002);
        m.sse_clients.inc();
        let text = m.encode();
        assert!(
            text.contains(
                "ds_sidecar_http_requests_total{route=\"stream\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("ds_sidecar_sse_clients 1"), "{text}");
        assert!(
            text.contains(
                "ds_sidecar_http_request_duration_seconds_count{route=\"stream\",method=\"GET\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
