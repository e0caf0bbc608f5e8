//! Request rate limits (`governor`, GCRA), per token subject when
//! authenticated and per client address when anonymous.
//!
//! Memory is bounded: the limiter remembers at most `max_keys` clients. A
//! timer forgets clients whose state equals a fresh one (`retain_recent`)
//! every second. If it is still full, requests of clients it does not know
//! share one overflow limit: under a flood of new keys the sidecar degrades
//! to a global limit instead of growing without bound.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

/// A request is over its limit; retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited(pub Duration);

impl Limited {
    /// The `Retry-After` value: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let d = self.0;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// The rate limiter of the sidecar.
pub struct Limiter {
    keyed: DefaultKeyedRateLimiter<String>,
    overflow: DefaultDirectRateLimiter,
    max_keys: usize,
    /// Overflow uses, to warn about them once in a while.
    overflowed: AtomicU64,
    /// When the map was last swept because it was full (ms since `born`):
    /// at most one sweep per [`SWEEP_EVERY`], so a flood cannot make every
    /// request scan the whole map.
    last_sweep: AtomicU64,
    born: std::time::Instant,
}

/// Least time between two sweeps of a full map.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

impl Limiter {
    /// A limiter allowing `per_second` requests per key with bursts of
    /// `burst` (default: `per_second`); `None` when `per_second` is 0.
    pub fn new(per_second: u32, burst: Option<u32>, max_keys: usize) -> Option<Limiter> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(rate);
        let quota = Quota::per_second(rate).allow_burst(burst);
        Some(Limiter {
            keyed: RateLimiter::keyed(quota),
            overflow: RateLimiter::direct(quota),
            max_keys: max_keys.max(1),
            overflowed: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
            born: std::time::Instant::now(),
        })
    }

    /// Counts one request of `key`.
    pub fn check(&self, key: &str) -> Result<(), Limited> {
        if self.keyed.len() >= self.max_keys {
            let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            let last = self.last_sweep.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= SWEEP_EVERY.as_millis() as u64
                && self
                    .last_sweep
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.keyed.retain_recent();
            }
            if self.keyed.len() >= self.max_keys {
                if self.overflowed.fetch_add(1, Ordering::Relaxed).is_multiple_of(10_000) {
                    tracing::warn!(
                        max_keys = self.max_keys,
                        "rate limiter full: clients it does not know share one limit"
                    );
                }
                return self
                    .overflow
                    .check()
                    .map_err(|n| Limited(n.wait_time_from(self.overflow.clock().now())));
            }
        }
        self.keyed
            .check_key(&key.to_owned())
            .map_err(|n| Limited(n.wait_time_from(self.keyed.clock().now())))
    }

    /// Forgets clients whose state is that of a fresh one.
    pub fn forget_idle(&self) {
        self.keyed.retain_recent();
        self.keyed.shrink_to_fit();
    }

    /// Number of clients remembered.
    pub fn len(&self) -> usize {
        self.keyed.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty()
    }

    /// Runs [`Limiter::forget_idle`] every second until `shutdown`.
    pub async fn housekeeping(limiter: std::sync::Arc<Limiter>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => limiter.forget_idle(),
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// The rate-limit key of an anonymous client: its address, IPv6 by /64
/// (one host usually owns a whole /64).
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_when_zero() {
        assert!(Limiter::new(0, Some(5), 10).is_none());
    }

    #[test]
    fn limits_each_key() {
        let l = Limiter::new(1, Some(3), 100).unwrap();
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        let limited = l.check("a").unwrap_err();
        assert!(limited.0 <= Duration::from_secs(1));
        assert_eq!(limited.retry_after_secs(), 1);
        assert!(l.check("b").is_ok(), "another key has its own budget");
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(Limited(Duration::from_millis(1)).retry_after_secs(), 1);
        assert_eq!(Limited(Duration::from_millis(1001)).retry_after_secs(), 2);
        assert_eq!(Limited(Duration::from_secs(3)).retry_after_secs(), 3);
        assert_eq!(Limited(Duration::ZERO).retry_after_secs(), 1);
    }

    #[test]
    fn memory_stays_bounded_with_many_keys() {
        // One request per 100 s: every key that made a request stays
        // "recent" for the whole test, so nothing can be forgotten.
        let slow = Quota::with_period(Duration::from_secs(100)).unwrap();
        let l = Limiter {
            keyed: RateLimiter::keyed(slow),
            overflow: RateLimiter::direct(Quota::per_second(NonZeroU32::new(1_000_000).unwrap())),
            max_keys: 1000,
            overflowed: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
            born: std::time::Instant::now(),
        };
        for i in 0..20_000 {
            let _ = l.check(&format!("key-{i}"));
        }
        assert!(l.len() <= 1000, "{} keys remembered", l.len());
        // Once full, newcomers share the overflow limit (generous here).
        assert!(l.check("newcomer").is_ok());
        assert!(l.len() <= 1000);
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let l = Limiter::new(1000, Some(1), 10).unwrap();
        for i in 0..10 {
            l.check(&format!("k{i}")).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        l.forget_idle();
        assert!(l.is_empty(), "{} keys left", l.len());
    }

    #[test]
    fn address_keys() {
        assert_eq!(address_key("192.0.2.7".parse().unwrap()), "ip:192.0.2.7");
        assert_eq!(address_key("::ffff:192.0.2.7".parse().unwrap()), "ip:192.0.2.7");
        assert_eq!(
            address_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            address_key("2001:db8:1:2:ffff::1".parse().unwrap())
        );
        assert_eq!(address_key("2001:db8:1:2::9".parse().unwrap()), "ip:2001:db8:1:2::/64");
    }
}
