//! Single-flight reads for live waiters.
//!
//! When one append wakes a thousand SSE clients at the same offset, they all
//! need the same `ds.read_chunk`. Waiters that want the same chunk share one
//! in-flight read instead of each running its own.
//!
//! The rule that keeps this correct: a waiter may only share a read that
//! started after every wake-up it has seen. The hub counts wake-ups
//! ([`TailHub::seq`]); a read records the counter before it starts, and a
//! waiter joins only a read whose count is at least the counter the waiter
//! saw when it decided to read. Every wake-up follows the commit it
//! announces, so such a read sees everything the waiter was woken for;
//! anything committed later announces itself with a later wake-up.
//!
//! With authentication, a shared read runs as the role of the waiter that
//! started it and its result goes to waiters of other roles too. That is
//! sound because every waiter's own request was authorized by a read of its
//! own before it waited (`live.rs`): a waiter only ever gets data of a
//! stream it was allowed to read. A revoke takes effect on the next request
//! (a connected SSE client lasts at most `--sse-max-duration-ms`, and never
//! past its token's `exp`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::db::{Chunk, Db, DbError};
use crate::tail::TailHub;

/// Most reads shared at once; beyond it waiters read on their own.
const MAX_FLIGHTS: usize = 10_000;
/// A flight older than this is never joined, and is dropped from the map
/// (its waiters may all have gone away before it finished).
const MAX_AGE: Duration = Duration::from_secs(10);

type Key = (String, String, Option<i64>);

struct Flight {
    id: u64,
    seq: u64,
    started: Instant,
    /// `None` when the read failed: a waiter then reads on its own, to get
    /// its own error.
    result: Shared<BoxFuture<'static, Option<Chunk>>>,
}

/// In-flight live reads, bounded in number and age.
#[derive(Default)]
pub struct Flights {
    inflight: Arc<Mutex<HashMap<Key, Arc<Flight>>>>,
    next_id: AtomicU64,
}

impl Flights {
    /// `ds.read_chunk(path, from, max)`, shared with concurrent waiters when
    /// that is safe (see the module docs).
    pub async fn read(
        &self,
        db: &Db,
        hub: &TailHub,
        role: Option<&str>,
        path: &str,
        from: &str,
        max: Option<i64>,
    ) -> Result<Chunk, DbError> {
        let needed = hub.seq();
        let key: Key = (path.to_owned(), from.to_owned(), max);
        let flight = {
            let mut map = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            match map.get(&key) {
                Some(f) if f.seq >= needed && f.started.elapsed() < MAX_AGE => Some(Arc::clone(f)),
                _ => {
                    if map.len() >= MAX_FLIGHTS {
                        map.retain(|_, f| f.started.elapsed() < MAX_AGE);
                    }
                    (map.len() < MAX_FLIGHTS).then(|| {
                        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                        let flight = Arc::new(Flight {
                            id,
                            seq: hub.seq(),
                            started: Instant::now(),
                            result: self.start(db, role, &key, id),
                        });
                        map.insert(key, Arc::clone(&flight));
                        flight
                    })
                }
            }
        };
        match flight {
            Some(f) => match f.result.clone().await {
                Some(chunk) => Ok(chunk),
                None => db.read_chunk(role, path, from, max).await,
            },
            None => db.read_chunk(role, path, from, max).await,
        }
    }

    /// The shared read; when done it removes its own entry, whoever drives it.
    fn start(
        &self,
        db: &Db,
        role: Option<&str>,
        key: &Key,
        id: u64,
    ) -> Shared<BoxFuture<'static, Option<Chunk>>> {
        let (db, key, inflight) = (db.clone(), key.clone(), Arc::clone(&self.inflight));
        let role = role.map(str::to_owned);
        async move {
            let result = db.read_chunk(role.as_deref(), &key.0, &key.1, key.2).await.ok();
            let mut map = inflight.lock().unwrap_or_else(PoisonError::into_inner);
            // A newer flight for the same chunk may have replaced this one.
            if map.get(&key).is_some_and(|f| f.id == id) {
                map.remove(&key);
            }
            result
        }
        .boxed()
        .shared()
    }
}
