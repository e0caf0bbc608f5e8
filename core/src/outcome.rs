//! Outcomes of an append, returned as data by `ds.try_append`.
//!
//! The names are the `outcome` column of the SQL result; the sidecar parses
//! them back with [`AppendOutcome::from_name`], so both ends share this list.

/// Every way an append or close request can end (§5.2, §5.2.1, §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppendOutcome {
    /// The request took effect: data appended and/or stream closed.
    Ok,
    /// A producer retry of a request already applied; nothing changed.
    Duplicate,
    /// Close-only request on a stream that is already closed (idempotent).
    AlreadyClosed,
    /// Rejected: the stream is closed; `next_offset` is its final offset.
    StreamClosed,
    /// Rejected: body sent with a content type other than the stream's.
    ContentTypeMismatch,
    /// Rejected: `Stream-Seq` not greater than the last one (byte-wise).
    StreamSeqConflict,
    /// Rejected: producer epoch below the stored one.
    StaleEpoch,
    /// Rejected: producer seq skipped ahead.
    SeqGap,
    /// Rejected: producer started a new epoch with seq != 0.
    InvalidEpochSeq,
    /// Rejected: no such stream (or it expired).
    NotFound,
    /// Rejected: the stream was deleted but is kept for its forks (410).
    Gone,
    /// Rejected: the request itself is malformed; see `detail`.
    InvalidRequest,
    /// Rejected: the role the request runs as lacks the `append` privilege
    /// on the path (SQLSTATE 42501; `detail` names role, path, privilege).
    Forbidden,
    /// Rejected: the append would take the stream or its owner over a
    /// storage quota (SQLSTATE 53400; `detail` says which).
    QuotaExceeded,
    /// Not attempted: asked not to wait, and another transaction holds the
    /// stream's row lock. Nothing changed; send it again.
    Busy,
}

const NAMES: [(AppendOutcome, &str); 15] = [
    (AppendOutcome::Ok, "ok"),
    (AppendOutcome::Duplicate, "duplicate"),
    (AppendOutcome::AlreadyClosed, "already_closed"),
    (AppendOutcome::StreamClosed, "stream_closed"),
    (AppendOutcome::ContentTypeMismatch, "content_type_mismatch"),
    (AppendOutcome::StreamSeqConflict, "stream_seq_conflict"),
    (AppendOutcome::StaleEpoch, "stale_epoch"),
    (AppendOutcome::SeqGap, "seq_gap"),
    (AppendOutcome::InvalidEpochSeq, "invalid_epoch_seq"),
    (AppendOutcome::NotFound, "not_found"),
    (AppendOutcome::Gone, "gone"),
    (AppendOutcome::InvalidRequest, "invalid_request"),
    (AppendOutcome::Busy, "busy"),
    (AppendOutcome::Forbidden, "forbidden"),
    (AppendOutcome::QuotaExceeded, "quota_exceeded"),
];

impl AppendOutcome {
    /// The name used in SQL results.
    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(o, _)| *o == self).map(|(_, n)| *n).expect("every outcome is named")
    }

    /// Parses a name produced by [`AppendOutcome::name`].
    pub fn from_name(name: &str) -> Option<AppendOutcome> {
        NAMES.iter().find(|(_, n)| *n == name).map(|(o, _)| *o)
    }

    /// Whether the request counts as a success for the client.
    pub fn is_success(self) -> bool {
        matches!(self, AppendOutcome::Ok | AppendOutcome::Duplicate | AppendOutcome::AlreadyClosed)
    }
}

/// `Stream-Seq` check: byte-wise lexicographic, strictly increasing.
pub fn stream_seq_allows(last: Option<&str>, next: &str) -> bool {
    last.is_none_or(|last| next.as_bytes() > last.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (o, n) in NAMES {
            assert_eq!(o.name(), n);
            assert_eq!(AppendOutcome::from_name(n), Some(o));
        }
        assert_eq!(AppendOutcome::from_name("nope"), None);
    }

    #[test]
    fn stream_seq_is_bytewise() {
        assert!(stream_seq_allows(None, ""));
        assert!(stream_seq_allows(Some("a"), "b"));
        assert!(!stream_seq_allows(Some("b"), "b"));
        assert!(!stream_seq_allows(Some("b"), "a"));
        // Byte-wise, not numeric and not collation-aware.
        assert!(stream_seq_allows(Some("10"), "9"));
        assert!(!stream_seq_allows(Some("a"), "B"));
        assert!(stream_seq_allows(Some("Z"), "a"));
    }
}
