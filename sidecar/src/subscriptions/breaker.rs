//! A circuit breaker per webhook host (pure: time is passed in).
//!
//! A host that failed [`Breakers::threshold`] deliveries in a row is
//! *open*: deliveries to it are not attempted (they count as failed
//! attempts, so the persisted backoff keeps growing) until `cool_down` has
//! passed; then ONE probe is let through (*half-open*). The probe's success
//! closes the breaker, its failure opens it for another `cool_down`.
//!
//! The map is bounded: at `max_hosts` entries, a closed entry (or, when
//! every entry is open, the one opened longest ago) is evicted to make
//! room. Forgetting a closed host loses nothing but its failure count.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One host's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Deliveries go through; `failures` in a row so far.
    Closed { failures: u32 },
    /// No deliveries until `until`.
    Open { until: Instant },
    /// One probe is in flight (since `since`); others wait.
    HalfOpen { since: Instant },
}

/// Whether a delivery may be attempted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead: this is the half-open probe.
    Probe,
    /// The breaker is open.
    Refused,
}

/// Circuit breakers for many hosts.
#[derive(Debug)]
pub struct Breakers {
    hosts: HashMap<String, State>,
    threshold: u32,
    cool_down: Duration,
    max_hosts: usize,
}

impl Breakers {
    /// Opens after `threshold` consecutive failures for `cool_down`; keeps
    /// at most `max_hosts` hosts.
    pub fn new(threshold: u32, cool_down: Duration, max_hosts: usize) -> Breakers {
        Breakers {
            hosts: HashMap::new(),
            threshold: threshold.max(1),
            cool_down,
            max_hosts: max_hosts.max(1),
        }
    }

    /// Asks to deliver to `host` at `now`.
    pub fn admit(&mut self, host: &str, now: Instant) -> Admission {
        let Some(state) = self.hosts.get_mut(host) else { return Admission::Allowed };
        match *state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { since: now };
                Admission::Probe
            }
            State::Open { .. } => Admission::Refused,
            // A probe that never reported (its task died) must not keep the
            // host shut forever: after another cool-down, probe again.
            State::HalfOpen { since } if now >= since + self.cool_down => {
                *state = State::HalfOpen { since: now };
                Admission::Probe
            }
            State::HalfOpen { .. } => Admission::Refused,
        }
    }

    /// Records a successful delivery to `host`: closes its breaker.
    pub fn succeeded(&mut self, host: &str) {
        // A host without failures needs no entry.
        self.hosts.remove(host);
    }

    /// Records a failed delivery to `host` at `now`; true when this opened
    /// the breaker.
    pub fn failed(&mut self, host: &str, now: Instant) -> bool {
        if !self.hosts.contains_key(host) {
            self.make_room(now);
        }
        let open = State::Open { until: now + self.cool_down };
        let state = self.hosts.entry(host.to_owned()).or_insert(State::Closed { failures: 0 });
        match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                *state = open;
                true
            }
            State::Closed { failures } => {
                *state = State::Closed { failures: failures + 1 };
                false
            }
            State::HalfOpen { .. } => {
                *state = open;
                true
            }
            // Late reports of deliveries admitted before it opened.
            State::Open { .. } => false,
        }
    }

    /// Hosts whose breaker is open or half-open.
    pub fn open_count(&self) -> usize {
        self.hosts.values().filter(|s| !matches!(s, State::Closed { .. })).count()
    }

    /// Number of hosts remembered.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether no host is remembered.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    fn make_room(&mut self, now: Instant) {
        if self.hosts.len() < self.max_hosts {
            return;
        }
        let victim = self
            .hosts
            .iter()
            .min_by_key(|(_, s)| match s {
                State::Closed { failures } => (0, *failures as u128),
                State::Open { until } => (1, until.saturating_duration_since(now).as_nanos()),
                State::HalfOpen { .. } => (2, 0),
            })
            .map(|(h, _)| h.clone());
        if let Some(h) = victim {
            self.hosts.remove(&h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(30);

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let mut b = Breakers::new(5, COOL, 100);
        let t = Instant::now();
        for _ in 0..4 {
            assert!(!b.failed("h", t));
            assert_eq!(b.admit("h", t), Admission::Allowed);
        }
        assert!(b.failed("h", t), "the fifth failure opens");
        assert_eq!(b.admit("h", t), Admission::Refused);
        assert_eq!(b.admit("other", t), Admission::Allowed, "per host");
        assert_eq!(b.open_count(), 1);
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breakers::new(3, COOL, 100);
        let t = Instant::now();
        b.failed("h", t);
        b.failed("h", t);
        b.succeeded("h");
        b.failed("h", t);
        b.failed("h", t);
        assert_eq!(b.admit("h", t), Admission::Allowed);
        assert!(b.is_empty() || b.open_count() == 0);
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let mut b = Breakers::new(1, COOL, 100);
        let t = Instant::now();
        assert!(b.failed("h", t));
        assert_eq!(b.admit("h", t + COOL - Duration::from_millis(1)), Admission::Refused);
        assert_eq!(b.admit("h", t + COOL), Admission::Probe);
        assert_eq!(b.admit("h", t + COOL), Admission::Refused, "one probe at a time");
        // The probe fails: open again for a whole cool-down.
        assert!(b.failed("h", t + COOL));
        assert_eq!(b.admit("h", t + COOL + COOL / 2), Admission::Refused);
        assert_eq!(b.admit("h", t + COOL * 2), Admission::Probe);
        b.succeeded("h");
        assert_eq!(b.admit("h", t + COOL * 2), Admission::Allowed);
        assert_eq!(b.open_count(), 0);
    }

    #[test]
    fn a_lost_probe_is_retried_after_a_cool_down() {
        let mut b = Breakers::new(1, COOL, 100);
        let t = Instant::now();
        b.failed("h", t);
        assert_eq!(b.admit("h", t + COOL), Admission::Probe);
        assert_eq!(b.admit("h", t + COOL * 2), Admission::Probe);
    }

    #[test]
    fn the_map_is_bounded_and_keeps_open_breakers() {
        let mut b = Breakers::new(1, COOL, 3);
        let t = Instant::now();
        b.failed("open-1", t);
        b.failed("open-2", t + Duration::from_secs(1));
        let mut bb = Breakers::new(2, COOL, 3);
        bb.failed("closed", t);
        bb.failed("open", t);
        bb.failed("open", t);
        bb.failed("x", t);
        bb.failed("y", t);
        assert_eq!(bb.len(), 3);
        assert_eq!(bb.admit("open", t), Admission::Refused, "open breakers are kept");
        b.failed("open-3", t + Duration::from_secs(2));
        b.failed("open-4", t + Duration::from_secs(3));
        assert_eq!(b.len(), 3);
        assert_eq!(b.admit("open-2", t), Admission::Refused, "the later-opening one stays");
        assert_eq!(b.admit("open-1", t), Admission::Allowed, "the earliest-to-close is evicted");
    }
}
