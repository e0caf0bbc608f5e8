//! Retention in the model test (README "Retention"), by bytes: a stream's
//! own data is stored in units (a hot row per JSON message or per append
//! of other types; `ds.rotate` packs them, oldest first, into segments of
//! at least `ds.segment_target_bytes`, leaving a remainder smaller than
//! that as rows). A trim drops whole units from the start while at least
//! `max_bytes` stay readable without them, never what a fork (or a fork of
//! a fork) may still read, and a fork may drop what it inherited at once;
//! the earliest retained offset becomes the end of the last unit dropped.
//! Reads and forks from below it fail with SD410.
//!
//! The maintenance worker applies policies at moments a test cannot pick,
//! so after every step the test trims every stream with a policy until
//! nothing changes (`settle_sql`), the model does the same (`settle`), and
//! the earliest offsets are compared: any trim the worker made meanwhile is
//! one of those trims, and the end state is the same.

use super::state::{Model, Stream};

/// `ds.segment_target_bytes` in the test's session (`ops::SESSION`).
const SEGMENT_TARGET: u64 = 16;

/// The `max_bytes` a policy keeps.
pub const MAX_BYTES: [u64; 3] = [0, 5, 20];

pub const NOT_RETAINED: &str = "SD410";

/// A stored unit of a stream's own data: `[start, end)`.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    pub start: u64,
    pub end: u64,
    pub segment: bool,
}

/// `ds.rotate` with every byte cold: the hot rows after the last segment,
/// oldest first, become segments of at least `SEGMENT_TARGET` bytes; a
/// remainder too small for one stays as the rows it was.
pub fn rotate(s: &mut Stream) {
    let first_row = s.units.iter().position(|u| !u.segment).unwrap_or(s.units.len());
    let mut batch: Vec<Unit> = Vec::new();
    for row in s.units.split_off(first_row) {
        batch.push(row);
        let (start, end) = (batch[0].start, row.end);
        if end - start >= SEGMENT_TARGET {
            s.units.push(Unit { start, end, segment: true });
            batch.clear();
        }
    }
    s.units.extend(batch);
}

impl Model {
    /// Paths of live streams with a policy, in path order.
    pub fn policy_paths(&self) -> Vec<usize> {
        self.streams
            .iter()
            .filter(|(_, s)| !s.soft_deleted && s.max_bytes.is_some())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Trims every stream with a policy until nothing changes; how many
    /// trims cut something.
    pub fn settle(&mut self) -> usize {
        let mut cuts = 0;
        for _ in 0..=self.streams.len() {
            let before = cuts;
            for p in self.policy_paths() {
                cuts += usize::from(self.trim(p));
            }
            if cuts == before {
                break;
            }
        }
        cuts
    }

    /// One trim of the stream at `p`; whether it cut anything.
    fn trim(&mut self, p: usize) -> bool {
        let s = &self.streams[&p];
        let Some(max_bytes) = s.max_bytes else { return false };
        let wanted = s.tail.saturating_sub(max_bytes);
        let limit = self.fork_floor(s.id).map_or(wanted, |f| wanted.min(f)).min(s.tail);
        let mut at = None;
        let first = s.own_start.max(s.retained_from);
        if first <= limit {
            at = Some(first);
        }
        for u in &s.units {
            if u.end <= limit {
                at = Some(u.end);
            }
        }
        let Some(at) = at.filter(|a| *a > s.retained_from) else { return false };
        let s = self.streams.get_mut(&p).expect("trimmed");
        s.retained_from = at;
        s.units.retain(|u| u.end > at);
        true
    }

    /// The lowest position of stream `id` that a fork below it may still
    /// read: a fork reads its source from what it (or any fork of it) may
    /// read, up to where it forked.
    fn fork_floor(&self, id: u64) -> Option<u64> {
        self.streams
            .values()
            .chain(self.retired.values())
            .filter(|f| f.fork.as_ref().is_some_and(|o| o.source_id == id))
            .filter_map(|f| {
                let need =
                    self.fork_floor(f.id).map_or(f.retained_from, |n| n.min(f.retained_from));
                (need < f.own_start).then_some(need)
            })
            .min()
    }
}

/// Trims each of `paths` (of streams with a policy), as many rounds as
/// there are streams: a fork's trim can free what its source may drop.
pub fn settle_sql(policy: &[usize], paths: &[String]) -> String {
    let list: Vec<String> = policy.iter().map(|p| format!("'{}'", paths[*p])).collect();
    let one = format!(
        "SELECT count(*) FROM unnest(ARRAY[{}]::text[]) p, LATERAL ds.trim(p) t;",
        list.join(", ")
    );
    vec![one; super::ops::PATHS].join(" ")
}

/// The earliest offset of the stream at `p` (compared after settling).
pub fn earliest_sql(p: usize, paths: &[String]) -> String {
    format!("SELECT earliest_offset FROM ds.head('{}');", paths[p])
}
