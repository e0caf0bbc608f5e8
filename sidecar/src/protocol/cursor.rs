//! `Stream-Cursor` arithmetic (PROTOCOL.md §10.1).
//!
//! Time is divided into 20-second intervals counted from 2024-10-09T00:00:00Z;
//! the cursor is the interval number. When a client echoes a cursor that is
//! not behind the current interval, the response cursor jumps ahead by a
//! random jitter of 1..=3600 seconds (rounded up to whole intervals), so a
//! cursor never repeats and CDN cache keys never cycle.

use std::time::{SystemTime, UNIX_EPOCH};

/// 2024-10-09T00:00:00Z as Unix seconds.
pub const EPOCH_UNIX_SECS: u64 = 1_728_432_000;

/// Length of one cursor interval.
pub const INTERVAL_SECS: u64 = 20;

/// Jitter range, in seconds, added on a cursor collision.
pub const JITTER_SECS: std::ops::RangeInclusive<u64> = 1..=3600;

/// The interval number of `now`.
pub fn interval_at(now: SystemTime) -> u64 {
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    secs.saturating_sub(EPOCH_UNIX_SECS) / INTERVAL_SECS
}

/// The cursor to return, given the client's echoed cursor (if any), the
/// current interval and a jitter drawn from [`JITTER_SECS`].
pub fn response_cursor(client: Option<&str>, current: u64, jitter_secs: u64) -> u64 {
    match client.and_then(|c| c.parse::<u64>().ok()) {
        Some(c) if c >= current => {
            let jitter_intervals = jitter_secs.div_ceil(INTERVAL_SECS).max(1);
            c.saturating_add(jitter_intervals)
        }
        _ => current,
    }
}

/// [`response_cursor`] for the current time with a random jitter.
pub fn generate(client: Option<&str>) -> String {
    let jitter = rand::random_range(JITTER_SECS);
    response_cursor(client, interval_at(SystemTime::now()), jitter).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn intervals_count_from_the_epoch() {
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(interval_at(at(EPOCH_UNIX_SECS)), 0);
        assert_eq!(interval_at(at(EPOCH_UNIX_SECS + 19)), 0);
        assert_eq!(interval_at(at(EPOCH_UNIX_SECS + 20)), 1);
        assert_eq!(interval_at(at(0)), 0);
    }

    #[test]
    fn no_or_stale_client_cursor_gives_current_interval() {
        assert_eq!(response_cursor(None, 1000, 5), 1000);
        assert_eq!(response_cursor(Some("999"), 1000, 5), 1000);
        assert_eq!(response_cursor(Some("garbage"), 1000, 5), 1000);
        assert_eq!(response_cursor(Some(""), 1000, 5), 1000);
    }

    #[test]
    fn collision_moves_strictly_forward() {
        assert_eq!(response_cursor(Some("1000"), 1000, 1), 1001);
        assert_eq!(response_cursor(Some("1000"), 1000, 20), 1001);
        assert_eq!(response_cursor(Some("1000"), 1000, 21), 1002);
        assert_eq!(response_cursor(Some("1000"), 1000, 3600), 1180);
        assert_eq!(response_cursor(Some("5000"), 1000, 1), 5001);
        assert_eq!(response_cursor(Some(&u64::MAX.to_string()), 1000, 1), u64::MAX);
    }

    #[test]
    fn generated_cursor_is_decimal_and_monotonic() {
        let first = generate(None);
        assert!(first.bytes().all(|b| b.is_ascii_digit()));
        for _ in 0..100 {
            let next = generate(Some(&first));
            assert!(next.parse::<u64>().unwrap() > first.parse::<u64>().unwrap());
        }
    }
}
