//! Retention: where a trim may cut a stream, as pure functions.
//!
//! A trim drops whole stored units (a rotated segment, a hot row) from the
//! start of a stream and raises the stream's earliest retained position to
//! the end of the last unit dropped, so the cut always falls on a message
//! boundary. The extension (`src/retention.rs`) reads the inputs in the
//! trim's transaction and carries the cut out; the rules live here.
//!
//! - By bytes (`max_bytes`): like Kafka's `retention.bytes`, a unit is
//!   dropped only if at least `max_bytes` stay readable after it, so a
//!   stream keeps at least `max_bytes` (and less than `max_bytes` plus one
//!   unit).
//! - By age (`max_age`): the leading run of units known to be older than
//!   `max_age` is dropped. Only segments carry a time (their rotation time,
//!   later than every message inside, so "segment older than max_age" is a
//!   safe bound); hot rows carry none and are never dropped by age.
//! - Forks: a source never cuts above what a live fork (or a fork of a fork)
//!   may still read of it, see [`fork_floor`].

/// A stored unit a trim drops whole: `[start, end)`, and whether it is known
/// to be older than the policy's `max_age` (segments only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub start: i64,
    pub end: i64,
    pub old: bool,
}

/// What one trim of one stream knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    /// The tail position.
    pub tail: i64,
    /// The earliest retained position now.
    pub retained_from: i64,
    /// Where the stream's own data starts (a fork's divergence point; 0).
    pub own_start: i64,
    /// Most bytes to keep readable (None: no byte limit).
    pub max_bytes: Option<i64>,
    /// The lowest position forks may still read of this stream (None: no
    /// fork reads it).
    pub fork_floor: Option<i64>,
}

/// The new earliest retained position, or `None` when nothing can be cut.
/// `units` are the stream's own stored units in position order, contiguous
/// from its lowest stored position (the caller may pass only a prefix: the
/// cut then stays within it, and the next trim goes on).
pub fn cut(stream: &Stream, units: &[Unit]) -> Option<i64> {
    let Stream { tail, retained_from, own_start, max_bytes, fork_floor } = *stream;
    // Positions a cut may land on: the start of the stream's own data (a
    // fork that drops only what it inherited) and the end of each unit.
    let mut boundaries = Vec::with_capacity(units.len() + 1);
    boundaries.push(own_start.max(retained_from));
    let mut expected = None;
    for u in units {
        if u.end <= u.start || expected.is_some_and(|e| e != u.start) {
            break; // not contiguous: never cut past a hole we cannot explain
        }
        expected = Some(u.end);
        boundaries.push(u.end);
    }
    let by_bytes = max_bytes.map(|b| tail.saturating_sub(b));
    // The old prefix ends at the end of the last leading old unit.
    let by_age =
        units.iter().take(boundaries.len() - 1).take_while(|u| u.old).last().map(|u| u.end);
    let wanted = by_bytes.into_iter().chain(by_age).max()?;
    let limit = fork_floor.map_or(wanted, |f| wanted.min(f)).min(tail);
    let at = boundaries.into_iter().filter(|b| *b <= limit).max()?;
    (at > retained_from).then_some(at)
}

/// A stream in a fork tree below the stream being trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descendant {
    pub stream_id: i64,
    /// The stream it was forked from.
    pub source: i64,
    /// Its divergence point: it reads its source below this.
    pub fork_pos: i64,
    /// Its earliest retained position.
    pub retained_from: i64,
}

/// The lowest position of `root` that any fork below it may still read, or
/// `None` when none reads any of it. A fork `F` reads its source in
/// `[need(F), F.fork_pos)`, where `need(F)` is the lowest position F's own
/// readers or any fork of F may read: the smaller of F's earliest retained
/// position and what F's own forks need of F. Depth is bounded by the
/// number of descendants (a cycle, impossible in storage, stops there).
pub fn fork_floor(root: i64, descendants: &[Descendant]) -> Option<i64> {
    floor_of(root, descendants, descendants.len())
}

fn floor_of(id: i64, all: &[Descendant], depth: usize) -> Option<i64> {
    if depth == 0 {
        return None;
    }
    all.iter()
        .filter(|d| d.source == id)
        .filter_map(|d| {
            let need = floor_of(d.stream_id, all, depth - 1)
                .map_or(d.retained_from, |f| f.min(d.retained_from));
            (need < d.fork_pos).then_some(need)
        })
        .min()
}

/// Validates a per-stream policy: `max_age` (in microseconds, months as 30
/// days like Postgres' interval comparison) becomes whole seconds, at least
/// one and at most [`crate::limits::MAX_TTL_SECONDS`]; `max_bytes` must not
/// be negative.
pub fn validate_policy(
    max_age_micros: Option<i128>,
    max_bytes: Option<i64>,
) -> crate::error::Result<(Option<i64>, Option<i64>)> {
    let invalid = |what: String| crate::Error::InvalidArguments(what);
    if let Some(b) = max_bytes
        && b < 0
    {
        return Err(invalid(format!("retention max_bytes {b} is negative")));
    }
    let Some(micros) = max_age_micros else { return Ok((None, max_bytes)) };
    let seconds = micros / 1_000_000;
    if seconds < 1 {
        return Err(invalid("retention max_age must be at least 1 second".into()));
    }
    let max = crate::limits::MAX_TTL_SECONDS;
    if seconds > i128::from(max) {
        return Err(invalid(format!("retention max_age must be at most {max} seconds")));
    }
    Ok((Some(seconds as i64), max_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn units(sizes: &[(i64, bool)], from: i64) -> Vec<Unit> {
        let mut at = from;
        sizes
            .iter()
            .map(|&(n, old)| {
                let u = Unit { start: at, end: at + n, old };
                at += n;
                u
            })
            .collect()
    }

    fn plain(tail: i64, max_bytes: Option<i64>) -> Stream {
        Stream { tail, retained_from: 0, own_start: 0, max_bytes, fork_floor: None }
    }

    #[test]
    fn bytes_keep_at_least_max_bytes() {
        let u = units(&[(10, false), (10, false), (10, false)], 0);
        assert_eq!(cut(&plain(30, Some(15)), &u), Some(10));
        assert_eq!(cut(&plain(30, Some(10)), &u), Some(20));
        assert_eq!(cut(&plain(30, Some(0)), &u), Some(30));
        assert_eq!(cut(&plain(30, Some(25)), &u), None);
        assert_eq!(cut(&plain(30, Some(30)), &u), None);
        assert_eq!(cut(&plain(30, None), &u), None);
    }

    #[test]
    fn age_drops_the_leading_old_run_only() {
        let u = units(&[(10, true), (10, true), (10, false), (10, true)], 0);
        assert_eq!(cut(&plain(40, None), &u), Some(20));
        let u = units(&[(10, false), (10, true)], 0);
        assert_eq!(cut(&plain(20, None), &u), None);
        // Either bound drops: the larger cut wins.
        let u = units(&[(10, true), (10, false), (10, false)], 0);
        assert_eq!(cut(&plain(30, Some(5)), &u), Some(20));
        assert_eq!(cut(&plain(30, Some(25)), &u), Some(10));
    }

    #[test]
    fn forks_hold_the_cut_down_at_a_boundary() {
        let u = units(&[(10, true), (10, true), (10, true)], 0);
        let mut s = plain(30, None);
        s.fork_floor = Some(25);
        assert_eq!(cut(&s, &u), Some(20));
        s.fork_floor = Some(9);
        assert_eq!(cut(&s, &u), None);
        s.fork_floor = Some(10);
        assert_eq!(cut(&s, &u), Some(10));
    }

    #[test]
    fn a_trimmed_stream_cuts_from_its_retained_start() {
        let u = units(&[(10, false), (10, false)], 20);
        let s = Stream { retained_from: 20, ..plain(40, Some(5)) };
        assert_eq!(cut(&s, &u), Some(30));
        let s = Stream { retained_from: 20, ..plain(40, Some(20)) };
        assert_eq!(cut(&s, &u), None);
    }

    #[test]
    fn a_fork_may_drop_only_what_it_inherited() {
        // Fork at 100 with 30 own bytes: keeping 30 releases the inherited part.
        let u = units(&[(10, false), (10, false), (10, false)], 100);
        let s = Stream { own_start: 100, ..plain(130, Some(30)) };
        assert_eq!(cut(&s, &u), Some(100));
        let s = Stream { own_start: 100, ..plain(130, Some(50)) };
        assert_eq!(cut(&s, &u), None, "no boundary inside the inherited range");
        let s = Stream { own_start: 100, ..plain(130, Some(15)) };
        assert_eq!(cut(&s, &u), Some(110));
    }

    #[test]
    fn never_past_a_hole_or_the_given_prefix() {
        let mut u = units(&[(10, true), (10, true)], 0);
        u.push(Unit { start: 25, end: 30, old: true });
        assert_eq!(cut(&plain(30, Some(0)), &u), Some(20));
        assert_eq!(cut(&plain(30, Some(0)), &u[..1]), Some(10));
        assert_eq!(cut(&plain(30, Some(0)), &[]), None);
    }

    #[test]
    fn policies() {
        assert_eq!(validate_policy(None, None).unwrap(), (None, None));
        assert_eq!(validate_policy(Some(90_000_000), Some(0)).unwrap(), (Some(90), Some(0)));
        assert!(validate_policy(None, Some(-1)).is_err());
        assert!(validate_policy(Some(999_999), None).is_err());
        assert!(validate_policy(Some(-5_000_000), None).is_err());
        assert!(validate_policy(Some(i128::MAX), None).is_err());
    }

    fn d(stream_id: i64, source: i64, fork_pos: i64, retained_from: i64) -> Descendant {
        Descendant { stream_id, source, fork_pos, retained_from }
    }

    #[test]
    fn fork_floors() {
        assert_eq!(fork_floor(1, &[]), None);
        // A fork reads [its retained start, fork_pos).
        assert_eq!(fork_floor(1, &[d(2, 1, 100, 0)]), Some(0));
        assert_eq!(fork_floor(1, &[d(2, 1, 100, 40)]), Some(40));
        // A fork that trimmed past its fork point reads nothing of the source.
        assert_eq!(fork_floor(1, &[d(2, 1, 100, 100)]), None);
        assert_eq!(fork_floor(1, &[d(2, 1, 100, 150)]), None);
        // The lowest of several forks.
        assert_eq!(fork_floor(1, &[d(2, 1, 100, 60), d(3, 1, 50, 30)]), Some(30));
        // A fork of a fork needs what it reads through its source.
        let tree = [d(2, 1, 100, 120), d(3, 2, 130, 20)];
        assert_eq!(fork_floor(1, &tree), Some(20));
        // ... but only below the middle fork's own fork point.
        let tree = [d(2, 1, 100, 120), d(3, 2, 130, 125)];
        assert_eq!(fork_floor(1, &tree), None);
        // A cycle (impossible in storage) terminates.
        assert_eq!(fork_floor(1, &[d(2, 1, 10, 5), d(1, 2, 10, 5)]), Some(5));
    }

    proptest! {
        /// The cut is a boundary, within the fork floor and the tail, above
        /// the old start, and keeps at least max_bytes when only bytes count.
        #[test]
        fn cut_is_safe(
            sizes in proptest::collection::vec((1i64..50, any::<bool>()), 0..20),
            retained in 0i64..40,
            max_bytes in proptest::option::of(0i64..600),
            floor in proptest::option::of(0i64..600),
        ) {
            let u = units(&sizes, retained);
            let tail = u.last().map_or(retained, |u| u.end);
            let s = Stream { tail, retained_from: retained, own_start: 0, max_bytes, fork_floor: floor };
            if let Some(c) = cut(&s, &u) {
                prop_assert!(c > retained && c <= tail);
                prop_assert!(u.iter().any(|u| u.end == c));
                if let Some(f) = floor { prop_assert!(c <= f); }
                let by_age_only = u.iter().take_while(|u| u.old).last().map(|u| u.end);
                if by_age_only.is_none_or(|a| a < c) {
                    prop_assert!(tail - c >= max_bytes.unwrap_or(0));
                }
            }
        }
    }
}
