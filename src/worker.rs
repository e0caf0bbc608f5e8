//! The background worker, registered from `_PG_init` when the library is in
//! `shared_preload_libraries`. Today it rings the doorbell (`doorbell.rs`):
//! one notification per wake-up naming every stream that advanced. Rotation
//! and expiry join this loop with the worker issue.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;

use ds_core::notification::{self, Announcement, CHANNEL, MAX_PAYLOAD};

use crate::{doorbell, gucs};

/// How long the worker sleeps when nobody rings.
const IDLE_WAKE: Duration = Duration::from_secs(10);

/// Registers the worker with the postmaster.
pub fn register() {
    BackgroundWorkerBuilder::new("durable_streams worker")
        .set_type("durable_streams")
        .set_function("durable_streams_worker_main")
        .set_library("durable_streams")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Entry point of the worker process.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn durable_streams_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = gucs::worker_database();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    doorbell::register_worker();
    log!(
        "durable_streams worker: announcing appends in database \"{database}\" on channel {CHANNEL}"
    );

    // Hints may have been lost while no worker ran: the first pass says "*".
    let mut announce_everything = true;
    while BackgroundWorker::wait_latch(Some(IDLE_WAKE)) {
        if BackgroundWorker::sighup_received() {
            // SAFETY: standard config reload in a background worker.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let (ids, overflow) = doorbell::take_pending();
        if ids.is_empty() && !overflow && !announce_everything {
            continue;
        }
        let everything = overflow || announce_everything;
        announce_everything = !BackgroundWorker::transaction(|| announce(&ids, everything));
    }
    doorbell::unregister_worker();
    log!("durable_streams worker: exiting");
}

/// Sends the notifications for one wake-up; false if the extension is not
/// installed in this database (yet), so nothing could be said.
fn announce(ids: &[i64], everything: bool) -> bool {
    Spi::connect_mut(|client| {
        let installed = client
            .select("SELECT pg_catalog.to_regclass('ds.streams') IS NOT NULL", None, &[])
            .and_then(|t| t.first().get_one::<bool>())
            .ok()
            .flatten()
            .unwrap_or(false);
        if !installed {
            return false;
        }
        let mut lines = Vec::new();
        if everything {
            lines.push(Announcement::Everything.line());
        }
        if !ids.is_empty() {
            let rows = client
                .select(
                    "SELECT tail_pos, path FROM ds.streams WHERE stream_id = ANY($1) ORDER BY stream_id",
                    None,
                    &[ids.to_vec().into()],
                )
                .expect("reading stream tails");
            for row in rows {
                let tail: i64 = row.get(1).ok().flatten().unwrap_or(0);
                let path: String = row.get(2).ok().flatten().unwrap_or_default();
                lines.push(
                    Announcement::Advanced { path, tail: ds_core::Offset::from_i64(tail) }.line(),
                );
            }
        }
        for payload in notification::pack(&lines, MAX_PAYLOAD) {
            client
                .update(
                    "SELECT pg_catalog.pg_notify($1, $2)",
                    None,
                    &[CHANNEL.into(), payload.into()],
                )
                .expect("pg_notify");
        }
        true
    })
}
