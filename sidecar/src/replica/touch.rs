//! The bounded set of sliding-TTL restarts a standby's reads owe the
//! primary (forwarded with `ds.touch`).

use std::collections::HashSet;

/// The (role, path) pairs whose sliding TTL a standby read should have
/// restarted, deduplicated and bounded in count and bytes: beyond either
/// bound new pairs are dropped (and counted) until the next flush.
#[derive(Debug)]
pub struct TouchSet {
    entries: HashSet<(Option<String>, String)>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

/// What [`TouchSet::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new pair.
    New,
    /// Already there.
    Known,
    /// The set is full: dropped.
    Dropped,
}

impl TouchSet {
    /// An empty set holding at most `max_entries` pairs and `max_bytes`.
    pub fn new(max_entries: usize, max_bytes: usize) -> TouchSet {
        TouchSet { entries: HashSet::new(), bytes: 0, max_entries, max_bytes }
    }

    /// Remembers that `role` read `path`.
    pub fn insert(&mut self, role: Option<&str>, path: &str) -> Inserted {
        let key = (role.map(str::to_owned), path.to_owned());
        if self.entries.contains(&key) {
            return Inserted::Known;
        }
        let size = path.len() + role.map_or(0, str::len);
        if self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            return Inserted::Dropped;
        }
        self.bytes += size;
        self.entries.insert(key);
        Inserted::New
    }

    /// Takes everything out (the set is empty afterwards).
    pub fn take(&mut self) -> Vec<(Option<String>, String)> {
        self.bytes = 0;
        self.entries.drain().collect()
    }

    /// Number of pairs held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of roles and paths held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_touch_set_dedups_and_is_bounded_in_count_and_bytes() {
        let mut s = TouchSet::new(3, 20);
        assert_eq!(s.insert(None, "a"), Inserted::New);
        assert_eq!(s.insert(None, "a"), Inserted::Known);
        assert_eq!(s.insert(Some("r"), "a"), Inserted::New, "per role");
        assert_eq!((s.len(), s.bytes()), (2, 3));
        assert_eq!(s.insert(None, "0123456789abcdefg"), Inserted::New);
        assert_eq!(s.insert(None, "b"), Inserted::Dropped, "count bound");
        assert_eq!(s.insert(None, "a"), Inserted::Known, "known pairs are not dropped");
        let taken = s.take();
        assert_eq!(taken.len(), 3);
        assert!(s.is_empty() && s.bytes() == 0);
        assert_eq!(s.insert(None, "0123456789"), Inserted::New);
        assert_eq!(s.insert(None, "0123456789a"), Inserted::Dropped, "byte bound");
        assert_eq!(s.insert(None, "x"), Inserted::New);
    }
}
