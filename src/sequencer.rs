//! The sequencer worker: gives `ds.enqueue` appends their offsets after
//! their transactions commit (see `enqueue.rs`).
//!
//! Woken by an enqueuing transaction's commit (its latch), it runs short
//! transactions, each locking up to `BATCH_STREAMS` streams that have
//! committed pending appends (`SKIP LOCKED`: a stream another transaction
//! holds is sequenced by that transaction's own locking append, or in a
//! later round) and moving their appends into the hot log in ONE statement
//! (`apply::sequence_committed`). Its commit rings the doorbell like any
//! append. Each batch is a durable commit of its own (synchronous_commit
//! stays on): readers must never see an offset that a crash could give to
//! other bytes.
//!
//! Ordering: a batch takes every pending append its snapshot sees as
//! committed, per stream in (xid, order within the transaction). A
//! transaction T2 that began after T1 committed has a larger xid and is
//! never visible to a snapshot that misses T1, so T1's appends always come
//! first; transactions that overlapped may be sequenced either way.

use std::time::{Duration, Instant};

use pgrx::bgworkers::BackgroundWorkerBuilder;
use pgrx::prelude::*;

use crate::worker::{VersionGate, in_transaction, reload_if_asked, start_worker, wait};
use crate::{apply, enqueue, storage};

/// Streams one sequencing transaction locks at most.
const BATCH_STREAMS: usize = 256;
/// How often the sequencer looks without being woken: rows of a prepared
/// transaction (whose COMMIT PREPARED wakes nobody), or of commits made
/// while it restarted.
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// Shortest time between the starts of two sequencing rounds: the commits
/// of that interval share one round (and one WAL flush); an idle stream's
/// append is sequenced at once.
const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(1);
/// Under load (a round moved at least `BUSY_ROUND_MESSAGES`), the next
/// round starts no sooner than `BUSY_GAP_FACTOR` times the last one took
/// after it started, up to `MAX_ROUND_INTERVAL`. A round costs about
/// 300 µs of CPU whatever it moves, plus about 10 µs per message (measured
/// with 64 clients inserting into a captured table, 2 cores): at a fixed
/// 1 ms interval rounds moved 18 messages and the sequencer spent 26 µs per
/// message; rounds 20 ms apart moved 77 and spent 14; this rule (factor 3)
/// moved 76 and spent 13 to 16. Scaling the gap with
/// the round's own duration grows batches only when the machine is busy
/// (rounds take longer), so a light load keeps its latency.
const BUSY_ROUND_MESSAGES: usize = 16;
const BUSY_GAP_FACTOR: u32 = 3;
const MAX_ROUND_INTERVAL: Duration = Duration::from_millis(20);
/// Rounds in a row without progress before the sequencer waits for its
/// latch (streams held by long transactions are retried at `IDLE_WAKE`).
const MAX_ROUNDS_PER_WAKE: usize = 64;

/// The least time from the start of a round that moved `messages` and took
/// `took` to the start of the next (see `BUSY_GAP_FACTOR`).
fn next_gap(messages: usize, took: Duration) -> Duration {
    if messages < BUSY_ROUND_MESSAGES {
        return MIN_ROUND_INTERVAL;
    }
    (took * BUSY_GAP_FACTOR).clamp(MIN_ROUND_INTERVAL, MAX_ROUND_INTERVAL)
}

/// Registers the worker with the postmaster.
pub fn register() {
    let name = "durable_streams sequencer";
    BackgroundWorkerBuilder::new(name)
        .set_type(name)
        .set_function("durable_streams_sequencer_main")
        .set_library("durable_streams")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Entry point of the sequencer worker.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn durable_streams_sequencer_main(_arg: pg_sys::Datum) {
    let database = start_worker();
    enqueue::register_sequencer();
    log!("durable_streams sequencer: sequencing ds.enqueue appends in database \"{database}\"");
    // Its statements read ds.pending through an index from the floor up
    // (see `floor` below). The planner, which sees a small table, would
    // scan all of it, with every row moved since the last vacuum.
    // Generic plans, made once: a custom plan per round (which the plan
    // cache picks when it estimates one cheaper) costs more than the round.
    in_transaction("preferring index scans and generic plans", || {
        Spi::run("SET enable_seqscan = off")?;
        Spi::run("SET plan_cache_mode = force_generic_plan")?;
        Ok(())
    });
    // No transaction below `floor` (an xid) has anything committed left in
    // ds.pending: rounds look from there up, never at the rows moved
    // earlier that wait for vacuum. 0 after a restart: look at everything.
    let mut floor = 0u64;
    let mut gate = VersionGate::default();
    let mut wake = Duration::ZERO;
    let mut last_round = Instant::now();
    let mut gap = MIN_ROUND_INTERVAL;
    while wait(wake) {
        reload_if_asked("sequencer");
        if !gate.open("sequencer", &database) {
            wake = gate.recheck_in().max(Duration::from_millis(100));
            continue;
        }
        wake = IDLE_WAKE;
        if storage::in_recovery() {
            continue;
        }
        for _ in 0..MAX_ROUNDS_PER_WAKE {
            let since = last_round.elapsed();
            if since < gap {
                std::thread::sleep(gap - since);
            }
            last_round = Instant::now();
            // Read before the round's snapshot (see enqueue::quiet_point).
            let quiet = enqueue::quiet_point();
            let round = in_transaction("sequencing enqueued appends", || {
                // No ds.pending: the extension is not installed (dropped, or
                // not created yet). Nothing to do, and nothing to warn about
                // every wake until it is.
                if storage::ds_table(c"pending").is_none() {
                    return Ok(None);
                }
                Spi::connect_mut(|client| apply::sequence_committed(client, BATCH_STREAMS, floor))
                    .map(Some)
            });
            // None: the round failed (logged at WARNING); retried next wake.
            let Some(Some(round)) = round else { break };
            gap = next_gap(round.messages, last_round.elapsed());
            floor = round.next_floor;
            if round.drained
                && let Some(quiet) = quiet
            {
                // Committed: locking appends may skip looking for pending rows.
                enqueue::sequenced_through(quiet);
            }
            if round.messages == 0 {
                break;
            }
        }
    }
    enqueue::unregister_sequencer();
    log!("durable_streams sequencer: exiting");
    crate::worker::exit_to_be_restarted();
}
