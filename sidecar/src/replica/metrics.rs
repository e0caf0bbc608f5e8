//! Metrics of read routing.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `replica_reads`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TargetLabels {
    /// `replica` or `primary` (a fallback).
    pub target: &'static str,
}

/// Labels of `replica_fallbacks`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `lag` (did not replay in time), `down` (unreachable or failing),
    /// `none` (no healthy standby to pick) or `unsuitable` (the standby
    /// refused this read as read-only).
    pub reason: &'static str,
}

/// Metrics of read routing (registered with the sidecar's registry).
#[derive(Default)]
pub struct ReplicaMetrics {
    /// Reads by where they were served.
    pub reads: Family<TargetLabels, Counter>,
    /// Reads sent to the primary instead of a standby, by reason.
    pub fallbacks: Family<ReasonLabels, Counter>,
    /// Standby reads that had to wait for replay.
    pub replay_waits: Counter,
    /// Standbys currently taking reads.
    pub up: Gauge,
    /// Sliding-TTL restarts forwarded to the primary.
    pub touches_forwarded: Counter,
    /// Sliding-TTL restarts dropped because the set was full.
    pub touches_dropped: Counter,
    /// Failed `ds.touch` flushes.
    pub touch_errors: Counter,
}

impl ReplicaMetrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("replica_reads", "Reads by where they were served", self.reads.clone());
        registry.register(
            "replica_fallbacks",
            "Reads sent to the primary instead of a standby, by reason",
            self.fallbacks.clone(),
        );
        registry.register(
            "replica_replay_waits",
            "Standby reads that waited for the standby to replay",
            self.replay_waits.clone(),
        );
        registry.register("replicas_up", "Standbys currently taking reads", self.up.clone());
        registry.register(
            "replica_touches_forwarded",
            "Sliding-TTL restarts forwarded to the primary",
            self.touches_forwarded.clone(),
        );
        registry.register(
            "replica_touches_dropped",
            "Sliding-TTL restarts dropped because the pending set was full",
            self.touches_dropped.clone(),
        );
        registry.register(
            "replica_touch_errors",
            "Failed ds.touch flushes to the primary",
            self.touch_errors.clone(),
        );
    }
}
