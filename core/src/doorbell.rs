//! Pure bookkeeping of the extension's doorbell (`src/doorbell.rs`,
//! `src/worker.rs`): which streams advanced since the worker last looked,
//! and what the worker has announced so far.
//!
//! [`PendingSet`] is a fixed-size hash set of stream states without
//! pointers, so it can live in shared memory: committing transactions add
//! their streams in O(1) each (a batch over thousands of streams must not
//! cost a scan per stream under the lock), the worker takes them all.
//!
//! [`Announced`] is the worker's record of the last state it announced per
//! stream (and the stream's path). When streams could not be remembered
//! (the set was full), the worker compares the tables with this record and
//! announces exactly the streams whose state differs, instead of `*`.

use std::collections::HashMap;

/// One stream's latest committed state, as announced.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Advanced {
    pub stream_id: i64,
    pub tail: i64,
    pub closed: bool,
}

impl Advanced {
    /// Folds a later (or concurrent) commit of the same stream into this one:
    /// tails only grow and a closed stream stays closed.
    pub fn merge(&mut self, other: Advanced) {
        self.tail = self.tail.max(other.tail);
        self.closed |= other.closed;
    }

    /// Whether announcing `self` tells a reader nothing beyond `other`.
    fn covered_by(&self, other: Advanced) -> bool {
        self.tail <= other.tail && (!self.closed || other.closed)
    }
}

/// At most `N` streams' states, found by stream id through `SLOTS` hash
/// slots (linear probing). `SLOTS` must be a power of two of at least `2 N`,
/// so probing always meets an empty slot and chains stay short.
#[derive(Copy, Clone)]
pub struct PendingSet<const N: usize, const SLOTS: usize> {
    len: usize,
    items: [Advanced; N],
    /// 1 + the index into `items` of the stream hashed here; 0 when empty.
    slots: [u32; SLOTS],
}

impl<const N: usize, const SLOTS: usize> Default for PendingSet<N, SLOTS> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize, const SLOTS: usize> PendingSet<N, SLOTS> {
    const SHAPE: () = assert!(
        SLOTS.is_power_of_two() && SLOTS >= 2 * N && N < u32::MAX as usize,
        "SLOTS must be a power of two of at least 2 N"
    );

    /// An empty set.
    pub const fn new() -> Self {
        #[allow(clippy::let_unit_value)]
        let () = Self::SHAPE;
        PendingSet {
            len: 0,
            items: [Advanced { stream_id: 0, tail: 0, closed: false }; N],
            slots: [0; SLOTS],
        }
    }

    /// Streams in the set.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set holds no stream.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn home(stream_id: i64) -> usize {
        // Fibonacci hashing: stream ids are sequential, this spreads them.
        let bits = SLOTS.trailing_zeros();
        if bits == 0 {
            return 0;
        }
        ((stream_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    /// The slot holding `stream_id`, or the empty slot where it would go.
    fn slot(&self, stream_id: i64) -> usize {
        let mut i = Self::home(stream_id);
        loop {
            match self.slots[i] {
                0 => return i,
                k if self.items[k as usize - 1].stream_id == stream_id => return i,
                _ => i = (i + 1) & (SLOTS - 1),
            }
        }
    }

    /// Adds a stream's state, merged into the one already there; false
    /// (and nothing changed) when the stream is new and the set is full.
    pub fn add(&mut self, advanced: Advanced) -> bool {
        let i = self.slot(advanced.stream_id);
        match self.slots[i] {
            0 if self.len == N => false,
            0 => {
                self.items[self.len] = advanced;
                self.len += 1;
                self.slots[i] = self.len as u32;
                true
            }
            k => {
                self.items[k as usize - 1].merge(advanced);
                true
            }
        }
    }

    /// Takes every state out of the set.
    pub fn take(&mut self) -> Vec<Advanced> {
        let taken = self.items[..self.len].to_vec();
        // Every entry goes, so clearing the slots one by one never breaks a
        // chain that a later lookup here needs: find them all, then clear.
        let used: Vec<usize> = taken.iter().map(|a| self.slot(a.stream_id)).collect();
        for i in used {
            self.slots[i] = 0;
        }
        self.len = 0;
        taken
    }
}

/// What the worker knows of one stream.
#[derive(Debug, Clone)]
struct Known {
    path: String,
    /// The last state announced, if any since the worker started.
    announced: Option<Advanced>,
}

/// The worker's record of stream paths and of the last state it announced
/// per stream, bounded to `max` streams (emptied when full: it is only an
/// optimisation, every lookup falls back to the tables).
#[derive(Debug)]
pub struct Announced {
    known: HashMap<i64, Known>,
    max: usize,
}

impl Announced {
    /// An empty record of at most `max` streams.
    pub fn new(max: usize) -> Announced {
        Announced { known: HashMap::new(), max: max.max(1) }
    }

    /// The path of `stream_id`, if known.
    pub fn path(&self, stream_id: i64) -> Option<&str> {
        self.known.get(&stream_id).map(|k| k.path.as_str())
    }

    /// Which of `ids` have no known path.
    pub fn unknown(&self, ids: impl IntoIterator<Item = i64>) -> Vec<i64> {
        ids.into_iter().filter(|id| !self.known.contains_key(id)).collect()
    }

    /// Makes room for `more` new streams, emptying the record if needed.
    pub fn reserve(&mut self, more: usize) {
        if self.known.len() + more > self.max {
            self.known.clear();
        }
    }

    /// Remembers the path of a stream (ids never change their path).
    pub fn learn_path(&mut self, stream_id: i64, path: String) {
        if self.known.len() < self.max {
            self.known.entry(stream_id).or_insert(Known { path, announced: None });
        }
    }

    /// Whether `state` must be announced: false only when a state announced
    /// before already covers it (a tail as far, closed if it is). Records
    /// the state as announced when true. Streams without a known path are
    /// never announced (gone, or unknown to the caller).
    pub fn should_announce(&mut self, state: Advanced) -> bool {
        let Some(known) = self.known.get_mut(&state.stream_id) else { return false };
        match &mut known.announced {
            Some(last) if state.covered_by(*last) => false,
            Some(last) => {
                last.merge(state);
                true
            }
            None => {
                known.announced = Some(state);
                true
            }
        }
    }

    /// For a stream's state read from the tables (after an overflow):
    /// whether it must be announced, i.e. it differs from the state last
    /// announced or nothing was announced for it yet. Records it when true.
    pub fn changed(&mut self, state: Advanced, path: &str) -> bool {
        if !self.known.contains_key(&state.stream_id) {
            self.learn_path(state.stream_id, path.to_owned());
            self.should_announce(state);
            return true;
        }
        self.should_announce(state)
    }

    /// Streams recorded.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether no stream is recorded.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adv(stream_id: i64, tail: i64, closed: bool) -> Advanced {
        Advanced { stream_id, tail, closed }
    }

    #[test]
    fn the_set_merges_by_stream_and_is_bounded() {
        let mut set = PendingSet::<4, 8>::new();
        assert!(set.add(adv(1, 10, false)));
        assert!(set.add(adv(2, 5, false)));
        assert!(set.add(adv(1, 7, true)), "merged");
        assert_eq!(set.len(), 2);
        assert!(set.add(adv(3, 1, false)) && set.add(adv(4, 1, false)));
        assert!(!set.add(adv(5, 1, false)), "full");
        assert!(set.add(adv(2, 9, false)), "known streams still merge when full");
        let mut taken = set.take();
        taken.sort_by_key(|a| a.stream_id);
        assert_eq!(
            taken,
            vec![adv(1, 10, true), adv(2, 9, false), adv(3, 1, false), adv(4, 1, false)]
        );
        assert!(set.is_empty());
        assert!(set.take().is_empty());
        assert!(set.add(adv(5, 1, false)), "room again");
        assert_eq!(set.take(), vec![adv(5, 1, false)]);
    }

    #[test]
    fn the_set_survives_many_rounds_of_colliding_ids() {
        // Sequential and strided ids, more rounds than slots: every take
        // must leave the slots empty, or later lookups would find stale ones.
        let mut set = PendingSet::<1024, 2048>::new();
        for round in 0..50i64 {
            let ids: Vec<i64> = (0..1000).map(|i| i * (round % 7 + 1) * 2048 + round).collect();
            for (n, &id) in ids.iter().enumerate() {
                assert!(set.add(adv(id, n as i64, false)));
                assert!(set.add(adv(id, n as i64 + 1, false)));
            }
            assert_eq!(set.len(), 1000);
            let mut taken = set.take();
            taken.sort_by_key(|a| a.stream_id);
            let mut want: Vec<Advanced> =
                ids.iter().enumerate().map(|(n, &id)| adv(id, n as i64 + 1, false)).collect();
            want.sort_by_key(|a| a.stream_id);
            assert_eq!(taken, want);
            assert!(set.slots.iter().all(|&s| s == 0));
        }
    }

    #[test]
    fn announcements_are_not_repeated() {
        let mut a = Announced::new(10);
        assert!(!a.should_announce(adv(1, 5, false)), "no path known");
        a.learn_path(1, "a".into());
        assert_eq!(a.path(1), Some("a"));
        assert_eq!(a.unknown([1, 2]), vec![2]);
        assert!(a.should_announce(adv(1, 5, false)));
        assert!(!a.should_announce(adv(1, 5, false)), "same state");
        assert!(!a.should_announce(adv(1, 3, false)), "an older state");
        assert!(a.should_announce(adv(1, 5, true)), "closed at the same tail");
        assert!(!a.should_announce(adv(1, 5, false)));
        assert!(a.should_announce(adv(1, 6, true)));
    }

    #[test]
    fn a_table_scan_finds_exactly_what_changed() {
        let mut a = Announced::new(10);
        a.learn_path(1, "a".into());
        a.learn_path(2, "b".into());
        assert!(a.should_announce(adv(1, 5, false)));
        assert!(a.should_announce(adv(2, 7, false)));
        assert!(!a.changed(adv(1, 5, false), "a"), "unchanged");
        assert!(a.changed(adv(2, 9, false), "b"), "advanced");
        assert!(!a.changed(adv(2, 9, false), "b"), "now recorded");
        assert!(a.changed(adv(3, 1, false), "c"), "never announced: may have changed");
        assert_eq!(a.path(3), Some("c"));
        assert!(!a.changed(adv(3, 1, false), "c"));
    }

    #[test]
    fn the_record_is_bounded() {
        let mut a = Announced::new(2);
        a.learn_path(1, "a".into());
        a.learn_path(2, "b".into());
        a.learn_path(3, "c".into());
        assert_eq!(a.len(), 2, "no room: not recorded");
        assert!(a.changed(adv(3, 1, false), "c"), "unrecorded streams are always announced");
        assert!(a.changed(adv(3, 1, false), "c"));
        a.reserve(1);
        assert!(a.is_empty(), "emptied to make room");
    }
}
