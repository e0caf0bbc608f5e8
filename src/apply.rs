//! Carries out append and close requests set-wise, inside the caller's
//! transaction: every stream the requests name is locked with ONE statement
//! (in path order, so two batches never deadlock each other), every request
//! is decided in memory against the locked rows in array order, and the
//! writes leave as one statement per table. N appends cost a handful of
//! statements instead of four each, which is what makes group commit pay.

use std::collections::{HashMap, HashSet};

use ds_core::acl::Privilege;
use ds_core::content_type::{self, Mode};
use ds_core::json::Purpose;
use ds_core::outcome::{AppendOutcome, stream_seq_allows};
use ds_core::producer::{Decision, ProducerState, decide};
use ds_core::{Error as CoreError, limits};
use pgrx::spi::SpiClient;

use crate::acl;
use crate::append::{AppendRequest, AppendResult, messages_for};
use crate::doorbell;
use crate::enqueue;
use crate::error::DsResult;
use crate::quota::Quotas;
use crate::storage::{self, StreamRow, StreamUpdate};
use crate::tails;

/// Pending message bytes that trigger an early INSERT, so a batch of large
/// bodies never holds more than this (plus one body) in extra memory.
const FLUSH_BYTES: usize = 8 << 20;
/// Pending messages that trigger an early INSERT: with tiny messages the
/// per-row cost, not the bytes, is what grows.
const FLUSH_ROWS: usize = 65_536;

/// One locked stream as the requests see it (keyed by its path).
struct Locked {
    row: StreamRow,
    /// Written by at least one request: its row is updated at the end.
    changed: bool,
    /// Closed or given a Stream-Seq: more than its tail changed, so the row
    /// is written even if this transaction wrote it before (`crate::tails`).
    fields_changed: bool,
}

/// Messages waiting for their INSERT.
#[derive(Default)]
struct PendingMessages {
    stream_ids: Vec<i64>,
    starts: Vec<i64>,
    datas: Vec<Vec<u8>>,
    bytes: usize,
}

impl PendingMessages {
    fn flush(&mut self, client: &mut SpiClient<'_>) -> DsResult<()> {
        if !self.datas.is_empty() {
            let taken = std::mem::take(self);
            storage::insert_message_rows(client, taken.stream_ids, taken.starts, taken.datas)?;
        }
        Ok(())
    }
}

/// Whether to wait for a stream another transaction has locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Wait (SQL callers: their transaction decides).
    Wait,
    /// Answer `busy` for that stream's requests instead (the sidecar's
    /// batches, which must never stall behind one slow transaction).
    SkipLocked,
}

/// Carries out `requests` in order; one result each, in the same order.
/// Protocol outcomes are results, never errors: an `Err` means the
/// statement failed and the caller's transaction is aborted.
pub fn execute_all(
    client: &mut SpiClient<'_>,
    requests: &[AppendRequest<'_>],
    wait: LockWait,
) -> DsResult<Vec<AppendResult>> {
    let mut results: Vec<Option<AppendResult>> = requests.iter().map(precheck).collect();
    check_privileges(client, requests, &mut results)?;

    let mut paths: Vec<&str> =
        requests.iter().zip(&results).filter(|(_, r)| r.is_none()).map(|(q, _)| q.path).collect();
    paths.sort_unstable();
    paths.dedup();
    let skip_locked = wait == LockWait::SkipLocked;
    // Streams this transaction already wrote are locked by it: their rows
    // come from memory (crate::tails), the rest with one statement.
    let mut streams: HashMap<String, Locked> = HashMap::new();
    paths.retain(|p| match tails::written_row(p) {
        Some(row) => {
            streams.insert((*p).to_owned(), Locked { row, changed: false, fields_changed: false });
            false
        }
        None => true,
    });
    streams.extend(
        storage::lock_streams(client, &paths, skip_locked)?
            .into_iter()
            .map(|(path, row)| (path, Locked { row, changed: false, fields_changed: false })),
    );
    if skip_locked {
        // A path not locked either does not exist or is someone else's now.
        let missing: Vec<&str> =
            paths.iter().copied().filter(|p| !streams.contains_key(*p)).collect();
        if !missing.is_empty() {
            let busy: HashSet<String> =
                storage::existing_paths(client, &missing)?.into_iter().collect();
            for (req, slot) in requests.iter().zip(results.iter_mut()) {
                if slot.is_none() && busy.contains(req.path) {
                    *slot = Some(AppendResult::new(AppendOutcome::Busy));
                }
            }
        }
    }

    let closing: Vec<&str> = requests
        .iter()
        .zip(&results)
        .filter(|(q, r)| q.close && r.is_none() && streams.contains_key(q.path))
        .map(|(q, _)| q.path)
        .collect();
    for path in closing {
        // No `ds.enqueue` may be in flight into a stream while it closes.
        if !enqueue::lock_out_enqueuers(path, wait) {
            for (req, slot) in requests.iter().zip(results.iter_mut()) {
                if slot.is_none() && req.path == path {
                    *slot = Some(AppendResult::new(AppendOutcome::Busy));
                }
            }
        }
    }
    sequence_pending(client, &mut streams)?;

    let mut owners: Vec<_> = streams
        .values()
        .filter(|s| s.row.owner_has_quota)
        .filter_map(|s| s.row.owner_role)
        .collect();
    owners.sort_unstable_by_key(|o| o.to_u32());
    owners.dedup();
    let mut quotas = Quotas::load(client, &owners)?;
    let mut producers = load_producers(client, requests, &results, &streams)?;
    let mut dirty_producers: HashMap<(i64, String), ProducerState> = HashMap::new();
    let mut pending = PendingMessages::default();

    for (req, slot) in requests.iter().zip(results.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        let Some(stream) = streams.get_mut(req.path) else {
            *slot = Some(AppendResult::new(AppendOutcome::NotFound));
            continue;
        };
        let result = decide_one(
            stream,
            req,
            &mut quotas,
            &mut producers,
            &mut dirty_producers,
            &mut pending,
        );
        *slot = Some(result);
        if pending.bytes >= FLUSH_BYTES || pending.datas.len() >= FLUSH_ROWS {
            pending.flush(client)?;
        }
    }
    pending.flush(client)?;

    write_back(client, &streams)?;
    if !dirty_producers.is_empty() {
        storage::save_producers(client, dirty_producers)?;
    }
    Ok(results.into_iter().map(|r| r.expect("every request was decided")).collect())
}

/// Gives the committed `ds.enqueue` appends of the locked `streams` their
/// offsets (before anything else is appended to them: real-time order).
fn sequence_pending(
    client: &mut SpiClient<'_>,
    streams: &mut HashMap<String, Locked>,
) -> DsResult<usize> {
    if !enqueue::may_have_pending() {
        return Ok(0);
    }
    sequence_pending_always(client, streams, 0)
}

/// Sequences the committed pending appends (with an xid of at least
/// `floor`) of the open streams among `streams`.
fn sequence_pending_always(
    client: &mut SpiClient<'_>,
    streams: &mut HashMap<String, Locked>,
    floor: u64,
) -> DsResult<usize> {
    let open: Vec<&Locked> = streams.values().filter(|s| !s.row.closed).collect();
    if open.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = open.iter().map(|s| s.row.stream_id).collect();
    let tails: Vec<i64> = open.iter().map(|s| s.row.tail.as_i64()).collect();
    let moved = storage::sequence_pending(client, ids, tails, floor)?;
    let mut messages = 0;
    for (stream_id, tail, count) in moved {
        if let Some(s) = streams.values_mut().find(|s| s.row.stream_id == stream_id) {
            s.row.tail = ds_core::Offset::from_i64(tail);
            s.changed = true;
            messages += usize::try_from(count).unwrap_or(0);
        }
    }
    Ok(messages)
}

/// What the sequencer does in one transaction: locks (at most `limit`)
/// streams with committed `ds.enqueue` appends, skipping those another
/// transaction holds (its own locking append sequences them), and gives
/// their appends offsets. Looks only at appends with an xid of at least
/// `floor`, which the caller knows leaves nothing committed out.
pub fn sequence_committed(client: &mut SpiClient<'_>, limit: usize, floor: u64) -> DsResult<Round> {
    // Before the snapshots below: whatever committed under this xid, they
    // see (and the round moves, if it drains).
    let oldest_running = storage::oldest_running_xid(client)?;
    let found = storage::paths_with_pending(client, limit, floor)?;
    if found.paths.is_empty() && found.complete {
        return Ok(Round { messages: 0, drained: true, next_floor: oldest_running.max(floor) });
    }
    let paths: Vec<&str> = found.paths.iter().map(String::as_str).collect();
    let mut streams: HashMap<String, Locked> = storage::lock_streams(client, &paths, true)?
        .into_iter()
        .map(|(path, row)| (path, Locked { row, changed: false, fields_changed: false }))
        .collect();
    let messages = sequence_pending_always(client, &mut streams, floor)?;
    write_back(client, &streams)?;
    // Drained if every stream that had pending appends was locked and the
    // candidate list was not cut short.
    let drained = found.complete && streams.len() == paths.len();
    let next_floor = if drained { oldest_running.max(floor) } else { floor };
    Ok(Round { messages, drained, next_floor })
}

/// What one sequencer round did.
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub messages: usize,
    /// Nothing committed was left pending (as of the round's snapshot).
    pub drained: bool,
    /// The floor for the next round, once this one commits: every
    /// transaction below it had ended before the round looked, so what
    /// they committed was moved (a drained round) or still is at or above
    /// the old floor (otherwise the floor stays).
    pub next_floor: u64,
}

/// Writes the changed streams' rows (or only remembers their tails, see
/// `crate::tails`) and announces them.
fn write_back(client: &mut SpiClient<'_>, streams: &HashMap<String, Locked>) -> DsResult<()> {
    let changed: Vec<(&String, &Locked)> = streams.iter().filter(|(_, s)| s.changed).collect();
    // A stream whose row this transaction already wrote only has its tail
    // remembered; the pre-commit callback writes it once (crate::tails).
    let to_write: Vec<(&String, &Locked)> = changed
        .iter()
        .copied()
        .filter(|(_, s)| s.fields_changed || !tails::advance(s.row.stream_id, s.row.tail))
        .collect();
    if !to_write.is_empty() {
        let updates: Vec<StreamUpdate<'_>> = to_write
            .iter()
            .map(|(_, s)| StreamUpdate {
                stream_id: s.row.stream_id,
                tail: s.row.tail,
                closed: s.row.closed,
                closed_by: s.row.closed_by.as_ref(),
                last_stream_seq: s.row.last_stream_seq.as_deref(),
            })
            .collect();
        storage::update_streams(client, &updates)?;
        for (path, s) in &to_write {
            tails::stored(path, &s.row);
        }
    }
    for (path, s) in changed {
        doorbell::stream_advanced(client, s.row.stream_id, path, s.row.tail, s.row.closed)?;
    }
    Ok(())
}

/// Checks that need no stream: a result here means the request is done.
fn precheck(req: &AppendRequest<'_>) -> Option<AppendResult> {
    if let Err(e) = limits::validate_path(req.path) {
        return Some(AppendResult::invalid(&e));
    }
    if req.data.is_empty() && !req.close {
        return Some(AppendResult::invalid(&CoreError::EmptyAppend));
    }
    if let Some(ct) = req.content_type
        && !req.data.is_empty()
        && let Err(e) = content_type::essence(ct)
    {
        return Some(AppendResult::invalid(&e));
    }
    None
}

/// Refuses the requests whose role lacks `append` on their path.
fn check_privileges(
    client: &SpiClient<'_>,
    requests: &[AppendRequest<'_>],
    results: &mut [Option<AppendResult>],
) -> DsResult<()> {
    let me = acl::caller();
    for (req, slot) in requests.iter().zip(results.iter_mut()) {
        let role = req.as_role.unwrap_or(me);
        if slot.is_none()
            && let Some(reserved) = crate::registry::reserved(req.path)
        {
            *slot = Some(AppendResult::forbidden(reserved.to_string()));
        }
        if slot.is_none() && !acl::allows(client, role, req.path, Privilege::Append)? {
            let detail = acl::denied(role, req.path, Privilege::Append).to_string();
            *slot = Some(AppendResult::forbidden(detail));
        }
    }
    Ok(())
}

/// Stored states of every producer the requests name, in one statement.
fn load_producers(
    client: &mut SpiClient<'_>,
    requests: &[AppendRequest<'_>],
    results: &[Option<AppendResult>],
    streams: &HashMap<String, Locked>,
) -> DsResult<HashMap<(i64, String), ProducerState>> {
    let mut keys: Vec<(i64, &str)> = requests
        .iter()
        .zip(results)
        .filter(|(_, r)| r.is_none())
        .filter_map(|(q, _)| {
            let p = q.producer.as_ref()?;
            Some((streams.get(q.path)?.row.stream_id, p.id.as_str()))
        })
        .collect();
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    keys.sort_unstable();
    keys.dedup();
    storage::find_producers(client, &keys)
}

/// One request against its locked stream (§5.2 precedence: closed, then
/// content type, then producer, then Stream-Seq), applied in memory.
fn decide_one(
    stream: &mut Locked,
    req: &AppendRequest<'_>,
    quotas: &mut Quotas,
    producers: &mut HashMap<(i64, String), ProducerState>,
    dirty_producers: &mut HashMap<(i64, String), ProducerState>,
    pending: &mut PendingMessages,
) -> AppendResult {
    let row = &mut stream.row;
    if row.soft_deleted {
        return AppendResult::new(AppendOutcome::Gone);
    }
    if row.expired {
        return AppendResult::new(AppendOutcome::NotFound);
    }
    if row.closed {
        let retried_close = req.producer.as_ref().filter(|p| Some(*p) == row.closed_by.as_ref());
        let result = if let Some(p) = retried_close {
            AppendResult {
                producer_epoch: Some(p.epoch),
                producer_seq: Some(p.seq),
                ..AppendResult::new(AppendOutcome::Duplicate)
            }
        } else if req.data.is_empty() {
            AppendResult::new(AppendOutcome::AlreadyClosed)
        } else {
            AppendResult::new(AppendOutcome::StreamClosed)
        };
        return result.at(row.tail, true);
    }
    if let Some(ct) = req.content_type
        && !req.data.is_empty()
        && !content_type::same(ct, &row.content_type)
    {
        return AppendResult::new(AppendOutcome::ContentTypeMismatch).at(row.tail, false);
    }
    let messages = match content_type::mode(&row.content_type)
        .and_then(|mode: Mode| messages_for(mode, &row.content_type, req.data, Purpose::Append))
    {
        Ok(m) => m,
        Err(e) => return AppendResult::invalid(&e),
    };

    let mut accepted = None;
    if let Some(p) = &req.producer {
        let key = (row.stream_id, p.id.clone());
        let echo =
            |outcome| AppendResult { producer_epoch: Some(p.epoch), ..AppendResult::new(outcome) };
        let rejected = match decide(producers.get(&key).copied(), p.epoch, p.seq) {
            Decision::Accept { new_state } => {
                accepted = Some((key, new_state));
                None
            }
            Decision::Duplicate { last_seq } => Some(AppendResult {
                producer_seq: Some(last_seq),
                ..echo(AppendOutcome::Duplicate)
            }),
            Decision::StaleEpoch { current_epoch } => Some(AppendResult {
                producer_epoch: Some(current_epoch),
                ..AppendResult::new(AppendOutcome::StaleEpoch)
            }),
            Decision::SeqGap { expected, received } => Some(AppendResult {
                expected_seq: Some(expected),
                received_seq: Some(received),
                ..echo(AppendOutcome::SeqGap)
            }),
            Decision::InvalidEpochSeq => Some(echo(AppendOutcome::InvalidEpochSeq)),
        };
        if let Some(r) = rejected {
            return r.at(row.tail, false);
        }
    }
    if let Some(seq) = req.stream_seq
        && !stream_seq_allows(row.last_stream_seq.as_deref(), seq)
    {
        return AppendResult::new(AppendOutcome::StreamSeqConflict).at(row.tail, false);
    }
    let bytes = messages.iter().map(|m| m.len() as i64).sum();
    if let Err(detail) = quotas.charge_bytes(req.path, row, bytes) {
        return AppendResult::quota_exceeded(detail).at(row.tail, false);
    }

    // Accepted: advance the in-memory row; the writes follow at the end.
    let mut pos = row.tail.as_i64();
    for m in messages {
        pending.stream_ids.push(row.stream_id);
        pending.starts.push(pos);
        pending.bytes += m.len();
        pos += i64::try_from(m.len()).expect("a message is below 1 GiB");
        pending.datas.push(m);
    }
    row.tail = ds_core::Offset::from_i64(pos);
    if req.close {
        row.closed = true;
        row.closed_by = req.producer.clone();
        stream.fields_changed = true;
    }
    if let Some(seq) = req.stream_seq {
        row.last_stream_seq = Some(seq.to_owned());
        stream.fields_changed = true;
    }
    if let Some((key, state)) = accepted {
        producers.insert(key.clone(), state);
        dirty_producers.insert(key, state);
    }
    stream.changed = true;
    AppendResult {
        producer_epoch: req.producer.as_ref().map(|p| p.epoch),
        producer_seq: req.producer.as_ref().map(|p| p.seq),
        ..AppendResult::new(AppendOutcome::Ok)
    }
    .at(row.tail, req.close)
}
