//! Stream tails a transaction has advanced but not yet written back.
//!
//! Why: an append updates its stream's row. Updating one row n times in one
//! transaction leaves n row versions that nobody can prune before the
//! transaction ends, and every later lookup of that row walks them: n appends
//! in one transaction cost O(n) each. So only the first append of a
//! transaction to a stream writes the row; later ones advance the tail here,
//! and the extension writes each changed tail once, just before commit.
//!
//! The bookkeeping follows subtransactions: a rolled-back savepoint restores
//! the tails it changed, a released one hands its changes to its parent.
//! Pure data, no Postgres: the extension feeds it transaction events.

use std::collections::{HashMap, HashSet};

/// A subtransaction id as Postgres numbers them (1 = the top level).
pub type SubXact = u32;

/// One stream this transaction wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The tail the stream's row holds now (this transaction wrote it).
    pub stored: i64,
    /// The tail after every append of this transaction.
    pub current: i64,
    /// Whose quota the stream counts against (an opaque role id).
    pub owner: Option<u32>,
}

impl Tail {
    /// Bytes appended since the row was last written.
    pub fn unstored_bytes(&self) -> i64 {
        self.current - self.stored
    }
}

#[derive(Debug, Clone)]
struct Entry<R> {
    tail: Tail,
    /// What the caller keeps with it (the extension: the stream's row).
    row: Option<R>,
    /// The subtransaction that last changed it (undo is kept once per level).
    changed_in: SubXact,
}

/// The tails of one transaction, with undo records per subtransaction.
#[derive(Debug)]
pub struct DeferredTails<R = ()> {
    entries: HashMap<i64, Entry<R>>,
    /// (subtransaction, stream, value before that subtransaction changed it).
    undo: Vec<(SubXact, i64, Option<Entry<R>>)>,
}

impl<R> Default for DeferredTails<R> {
    fn default() -> Self {
        DeferredTails { entries: HashMap::new(), undo: Vec::new() }
    }
}

impl<R: Clone> DeferredTails<R> {
    /// The stream's tail if this transaction wrote its row (and so holds it
    /// locked until the end: the value here is the truth for the stream).
    pub fn get(&self, stream_id: i64) -> Option<Tail> {
        self.entries.get(&stream_id).map(|e| e.tail)
    }

    /// What the caller stored with the stream's tail, if anything.
    pub fn row(&self, stream_id: i64) -> Option<&R> {
        self.entries.get(&stream_id).and_then(|e| e.row.as_ref())
    }

    /// Forgets what the caller stored with the stream (its tail stays).
    pub fn forget_row(&mut self, sub: SubXact, stream_id: i64) {
        if let Some(e) = self.entries.get(&stream_id).filter(|e| e.row.is_some()) {
            let tail = e.tail;
            self.change(sub, stream_id, tail, None);
        }
    }

    /// Forgets every stored row (their tails stay).
    pub fn forget_rows(&mut self, sub: SubXact) {
        let ids: Vec<i64> = self.entries.keys().copied().collect();
        for id in ids {
            self.forget_row(sub, id);
        }
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The row of `stream_id` was just written with tail `stored` in `sub`.
    pub fn stored(
        &mut self,
        sub: SubXact,
        stream_id: i64,
        stored: i64,
        owner: Option<u32>,
        row: Option<R>,
    ) {
        self.change(sub, stream_id, Tail { stored, current: stored, owner }, row);
    }

    /// `stream_id` (whose row this transaction wrote) advanced to `current`.
    /// Returns false, changing nothing, if its row was not written by this
    /// transaction: the caller must write the row instead.
    pub fn advance(&mut self, sub: SubXact, stream_id: i64, current: i64) -> bool {
        let Some(entry) = self.entries.get(&stream_id) else { return false };
        let (tail, row) = (Tail { current, ..entry.tail }, entry.row.clone());
        self.change(sub, stream_id, tail, row);
        true
    }

    fn change(&mut self, sub: SubXact, stream_id: i64, tail: Tail, row: Option<R>) {
        let previous = self.entries.get(&stream_id);
        if previous.is_none_or(|p| p.changed_in != sub) {
            self.undo.push((sub, stream_id, previous.cloned()));
        }
        self.entries.insert(stream_id, Entry { tail, row, changed_in: sub });
    }

    /// A savepoint was rolled back: its changes are undone (its row writes
    /// were rolled back by Postgres too).
    pub fn abort_sub(&mut self, sub: SubXact) {
        // Records of `sub` are the newest: children ended before it did.
        while let Some(&(s, _, _)) = self.undo.last() {
            if s != sub {
                break;
            }
            let (_, stream_id, previous) = self.undo.pop().expect("checked above");
            match previous {
                Some(e) => self.entries.insert(stream_id, e),
                None => self.entries.remove(&stream_id),
            };
        }
    }

    /// A savepoint was released: its changes belong to `parent` now. A stream
    /// the parent already has an undo record for keeps the parent's (older)
    /// one, so the log holds at most one record per stream and level.
    pub fn commit_sub(&mut self, sub: SubXact, parent: SubXact) {
        let parents: HashSet<i64> =
            self.undo.iter().filter(|r| r.0 == parent).map(|r| r.1).collect();
        self.undo.retain(|r| r.0 != sub || !parents.contains(&r.1));
        for record in self.undo.iter_mut().filter(|r| r.0 == sub) {
            record.0 = parent;
        }
        for e in self.entries.values_mut() {
            if e.changed_in == sub {
                e.changed_in = parent;
            }
        }
    }

    /// Streams whose row must be written before commit, with their tails,
    /// in stream id order (so two committers lock nothing in opposite order).
    pub fn unstored(&self) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.tail.unstored_bytes() != 0)
            .map(|(&id, e)| (id, e.tail.current))
            .collect();
        out.sort_unstable();
        out
    }

    /// Bytes appended to `owner`'s streams that their rows do not show yet.
    pub fn unstored_bytes_of(&self, owner: u32) -> i64 {
        self.entries
            .values()
            .filter(|e| e.tail.owner == Some(owner))
            .map(|e| e.tail.unstored_bytes())
            .sum()
    }

    /// Every unstored tail was written (in `sub`): the rows hold them now.
    /// Undone like any change if `sub` rolls back, since its write does.
    pub fn mark_stored(&mut self, sub: SubXact) {
        let unstored: Vec<(i64, Entry<R>)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.tail.unstored_bytes() != 0)
            .map(|(&id, e)| (id, e.clone()))
            .collect();
        for (id, e) in unstored {
            let tail = Tail { stored: e.tail.current, ..e.tail };
            self.change(sub, id, tail, e.row);
        }
    }

    /// The transaction ended: forget everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.undo.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: SubXact = 1;

    #[test]
    fn advancing_needs_a_stored_row() {
        let mut t: DeferredTails = DeferredTails::default();
        assert!(!t.advance(TOP, 7, 10));
        t.stored(TOP, 7, 10, Some(3), None);
        assert!(t.advance(TOP, 7, 25));
        assert_eq!(t.get(7), Some(Tail { stored: 10, current: 25, owner: Some(3) }));
        assert_eq!(t.unstored(), vec![(7, 25)]);
        assert_eq!(t.unstored_bytes_of(3), 15);
        assert_eq!(t.unstored_bytes_of(4), 0);
        t.mark_stored(TOP);
        assert!(t.unstored().is_empty());
        assert_eq!(t.get(7).unwrap().current, 25);
    }

    #[test]
    fn a_rolled_back_savepoint_restores_tails_and_forgets_rows_it_wrote() {
        let mut t: DeferredTails = DeferredTails::default();
        t.stored(TOP, 1, 100, None, None);
        t.advance(TOP, 1, 110);
        // SAVEPOINT a (2): advances 1, writes the row of 2.
        t.advance(2, 1, 130);
        t.advance(2, 1, 140);
        t.stored(2, 2, 5, None, None);
        t.abort_sub(2);
        assert_eq!(t.get(1).unwrap().current, 110);
        assert_eq!(t.get(2), None);
        assert_eq!(t.unstored(), vec![(1, 110)]);
    }

    #[test]
    fn a_released_savepoint_hands_changes_to_its_parent() {
        let mut t: DeferredTails = DeferredTails::default();
        t.stored(TOP, 1, 0, None, None);
        // SAVEPOINT a (2) { SAVEPOINT b (3) { advance } RELEASE b } then ROLLBACK TO a.
        t.advance(2, 1, 10);
        t.advance(3, 1, 20);
        t.commit_sub(3, 2);
        assert_eq!(t.get(1).unwrap().current, 20);
        t.abort_sub(2);
        assert_eq!(t.get(1).unwrap().current, 0);
    }

    #[test]
    fn released_savepoints_keep_the_log_at_one_record_per_stream_and_level() {
        let mut t: DeferredTails = DeferredTails::default();
        t.stored(TOP, 1, 0, None, None);
        for i in 0..1000u32 {
            let sub = 2 + i;
            t.advance(sub, 1, i64::from(i) + 1);
            t.commit_sub(sub, TOP);
        }
        assert!(t.undo.len() <= 1, "{}", t.undo.len());
        assert_eq!(t.get(1).unwrap().current, 1000);
    }

    #[test]
    fn a_write_in_a_rolled_back_savepoint_is_unstored_again() {
        let mut t: DeferredTails = DeferredTails::default();
        t.stored(TOP, 1, 0, None, None);
        t.advance(TOP, 1, 10);
        // SAVEPOINT (2): the tails are written there, then it rolls back.
        t.mark_stored(2);
        assert!(t.unstored().is_empty());
        t.abort_sub(2);
        assert_eq!(t.unstored(), vec![(1, 10)], "the write was rolled back with the savepoint");
    }

    #[test]
    fn rows_follow_savepoints_and_can_be_forgotten() {
        let mut t: DeferredTails<&str> = DeferredTails::default();
        t.stored(TOP, 1, 0, None, Some("v1"));
        t.forget_row(2, 1);
        assert_eq!(t.row(1), None);
        assert!(t.advance(2, 1, 5), "the tail stays without its row");
        t.abort_sub(2);
        assert_eq!(t.row(1), Some(&"v1"));
        assert_eq!(t.get(1).unwrap().current, 0);
        t.forget_rows(TOP);
        assert_eq!(t.row(1), None);
    }

    #[test]
    fn nested_release_then_parent_release_then_abort_of_grandparent() {
        let mut t: DeferredTails = DeferredTails::default();
        // SAVEPOINT a(2) { stored 9; SAVEPOINT b(3) { advance 9 } RELEASE b } RELEASE a
        t.stored(2, 9, 50, None, None);
        t.advance(3, 9, 60);
        t.commit_sub(3, 2);
        t.commit_sub(2, TOP);
        assert_eq!(t.get(9).unwrap(), Tail { stored: 50, current: 60, owner: None });
        t.clear();
        assert!(t.is_empty());
    }
}
