//! Idempotent producer fencing (§5.2.1) as a pure decision.
//!
//! The extension loads the stored state, asks [`decide`], and writes the new
//! state in the same transaction as the data it guards.

use crate::error::{Error, Result};
use crate::limits::{MAX_PRODUCER_ID_BYTES, MAX_PRODUCER_NUMBER};

/// Stored state of one producer on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerState {
    pub epoch: i64,
    pub last_seq: i64,
}

/// What to do with a request carrying `(epoch, seq)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Append, then store `new_state`.
    Accept { new_state: ProducerState },
    /// Already applied: succeed without appending.
    Duplicate { last_seq: i64 },
    /// Epoch below the stored one: the producer is a fenced-off zombie.
    StaleEpoch { current_epoch: i64 },
    /// A seq was skipped.
    SeqGap { expected: i64, received: i64 },
    /// A new epoch must start at seq 0.
    InvalidEpochSeq,
}

/// Producer identity and position carried by one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerClaim {
    pub id: String,
    pub epoch: i64,
    pub seq: i64,
}

impl ProducerClaim {
    /// Builds a claim from the three optional arguments: all or none.
    pub fn from_parts(
        id: Option<&str>,
        epoch: Option<i64>,
        seq: Option<i64>,
    ) -> Result<Option<ProducerClaim>> {
        let bad = |m: &str| Err(Error::InvalidProducer(m.into()));
        match (id, epoch, seq) {
            (None, None, None) => Ok(None),
            (Some(id), Some(epoch), Some(seq)) => {
                if id.is_empty() {
                    return bad("producer id must not be empty");
                }
                if id.len() > MAX_PRODUCER_ID_BYTES || id.chars().any(char::is_control) {
                    return bad("producer id must be at most 256 bytes without control characters");
                }
                for (name, v) in [("epoch", epoch), ("seq", seq)] {
                    if !(0..=MAX_PRODUCER_NUMBER).contains(&v) {
                        return Err(Error::InvalidProducer(format!(
                            "producer {name} {v} is outside 0..=2^53-1"
                        )));
                    }
                }
                Ok(Some(ProducerClaim { id: id.to_owned(), epoch, seq }))
            }
            _ => bad("producer id, epoch and seq must be given together or not at all"),
        }
    }
}

/// Decides a request `(epoch, seq)` against the stored state.
pub fn decide(state: Option<ProducerState>, epoch: i64, seq: i64) -> Decision {
    let accept = |last_seq| Decision::Accept { new_state: ProducerState { epoch, last_seq } };
    let Some(state) = state else {
        return if seq == 0 { accept(0) } else { Decision::SeqGap { expected: 0, received: seq } };
    };
    if epoch < state.epoch {
        return Decision::StaleEpoch { current_epoch: state.epoch };
    }
    if epoch > state.epoch {
        return if seq == 0 { accept(0) } else { Decision::InvalidEpochSeq };
    }
    if seq <= state.last_seq {
        Decision::Duplicate { last_seq: state.last_seq }
    } else if seq == state.last_seq + 1 {
        accept(seq)
    } else {
        Decision::SeqGap { expected: state.last_seq + 1, received: seq }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Option<ProducerState> = Some(ProducerState { epoch: 2, last_seq: 5 });

    #[test]
    fn table() {
        let acc =
            |epoch, last_seq| Decision::Accept { new_state: ProducerState { epoch, last_seq } };
        assert_eq!(decide(None, 0, 0), acc(0, 0));
        assert_eq!(decide(None, 3, 0), acc(3, 0));
        assert_eq!(decide(None, 0, 1), Decision::SeqGap { expected: 0, received: 1 });
        assert_eq!(decide(S, 1, 0), Decision::StaleEpoch { current_epoch: 2 });
        assert_eq!(decide(S, 3, 0), acc(3, 0));
        assert_eq!(decide(S, 3, 1), Decision::InvalidEpochSeq);
        assert_eq!(decide(S, 2, 5), Decision::Duplicate { last_seq: 5 });
        assert_eq!(decide(S, 2, 0), Decision::Duplicate { last_seq: 5 });
        assert_eq!(decide(S, 2, 6), acc(2, 6));
        assert_eq!(decide(S, 2, 8), Decision::SeqGap { expected: 6, received: 8 });
    }

    #[test]
    fn claims() {
        assert_eq!(ProducerClaim::from_parts(None, None, None), Ok(None));
        assert!(ProducerClaim::from_parts(Some("p"), Some(0), Some(0)).unwrap().is_some());
        for (id, e, s) in [
            (Some("p"), None, Some(0)),
            (None, Some(0), Some(0)),
            (Some(""), Some(0), Some(0)),
            (Some("p"), Some(-1), Some(0)),
            (Some("p"), Some(0), Some(MAX_PRODUCER_NUMBER + 1)),
        ] {
            assert!(ProducerClaim::from_parts(id, e, s).is_err(), "{id:?} {e:?} {s:?}");
        }
    }

    proptest! {
        /// Fencing never accepts a lower epoch, and never moves state backwards.
        #[test]
        fn never_accepts_lower_epoch(se in 0i64..100, sl in 0i64..100, e in 0i64..100, s in 0i64..100) {
            match decide(Some(ProducerState { epoch: se, last_seq: sl }), e, s) {
                Decision::Accept { new_state } => {
                    prop_assert!(e >= se);
                    prop_assert!(new_state.epoch > se || new_state.last_seq == sl + 1);
                }
                Decision::StaleEpoch { .. } => prop_assert!(e < se),
                _ => {}
            }
        }
    }
}
