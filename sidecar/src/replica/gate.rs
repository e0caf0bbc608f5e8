//! The wake gate: notifications from the primary are held until the
//! watermark has passed what they announce.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{GATE_MAX_BYTES, GATE_MAX_PAYLOADS, Router};
use crate::tail::{TailHub, Wake};

#[derive(Default)]
struct Pending {
    payloads: Vec<String>,
    bytes: usize,
    everything: bool,
}

/// Stands between the LISTEN connection and the hub: holds what the
/// primary announced until the watermark has passed it, then wakes the
/// waiters (whose standby reads then wait for replay). Never blocks the
/// LISTEN connection; bounded (an overflow becomes "wake everyone").
#[derive(Default)]
pub struct WakeGate {
    pending: Mutex<Pending>,
    ready: Notify,
}

impl Wake for WakeGate {
    fn wake_from_payload(&self, payload: &str) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if !p.everything {
            if p.payloads.len() >= GATE_MAX_PAYLOADS || p.bytes + payload.len() > GATE_MAX_BYTES {
                p.payloads = Vec::new();
                p.bytes = 0;
                p.everything = true;
            } else {
                p.bytes += payload.len();
                p.payloads.push(payload.to_owned());
            }
        }
        drop(p);
        self.ready.notify_one();
    }

    fn wake_all(&self) {
        let mut p = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        p.payloads = Vec::new();
        p.bytes = 0;
        p.everything = true;
        drop(p);
        self.ready.notify_one();
    }
}

/// Delivers what the gate holds, once per coalesced batch: reads the
/// primary's position, raises the watermark, wakes.
pub(super) async fn run_gate(
    gate: Arc<WakeGate>,
    router: Arc<Router>,
    hub: Arc<TailHub>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = gate.ready.notified() => {}
            () = shutdown.cancelled() => return,
        }
        let p = std::mem::take(&mut *gate.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if p.payloads.is_empty() && !p.everything {
            continue;
        }
        // Woken even if this fails: the standbys serve what they have, and
        // the next wake-up or the long-poll timeout catches up.
        router.wrote().await;
        for payload in &p.payloads {
            hub.wake_from_payload(payload);
        }
        if p.everything {
            hub.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_gate_holds_payloads_and_collapses_an_overflow() {
        let gate = WakeGate::default();
        gate.wake_from_payload("1 a");
        gate.wake_from_payload("2 b");
        {
            let p = gate.pending.lock().unwrap();
            assert_eq!(p.payloads, ["1 a", "2 b"]);
            assert!(!p.everything);
        }
        // The wake is not lost even though nobody waited yet.
        tokio::time::timeout(Duration::from_secs(1), gate.ready.notified()).await.unwrap();
        for i in 0..GATE_MAX_PAYLOADS {
            gate.wake_from_payload(&format!("{i} x"));
        }
        let p = std::mem::take(&mut *gate.pending.lock().unwrap());
        assert!(p.everything && p.payloads.is_empty(), "overflow became wake-everyone");
        gate.wake_all();
        assert!(gate.pending.lock().unwrap().everything);
    }
}
