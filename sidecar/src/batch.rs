//! Group commit: concurrent appends coalesced into one transaction.
//!
//! Appends go to one of N lanes chosen by a hash of the stream path, so all
//! appends to a stream queue in one FIFO: a producer's pipelined requests are
//! applied in arrival order. A lane takes whatever is queued (up to
//! `max_batch`), sends it as ONE `ds.try_append_batch` call (one commit, one
//! WAL flush, a handful of statements however many streams), and hands every
//! request its own outcome: a bad append never fails its neighbours. A 2xx
//! still means committed.
//!
//! A lane never waits for a row lock: its batches skip streams another
//! transaction holds (an application's `BEGIN; SELECT ds.append(...)` still
//! open) and get `busy` for them. Those requests take a detour: a task per
//! such stream that sends them one by one, allowed to wait (bounded by the
//! connection's `lock_timeout`). While a stream has a detour, its later
//! requests follow the same detour, so per-stream order holds.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ds_core::outcome::AppendOutcome;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::db::{AppendRequest, Appended, Db, DbError};
use crate::protocol::headers::Producer;

/// Most streams with a detour at once, per lane.
const MAX_DETOURS: usize = 64;
/// Most requests waiting in one stream's detour.
const DETOUR_QUEUE: usize = 256;

/// One append, owned so it can wait in a queue.
#[derive(Debug, Clone)]
pub struct QueuedAppend {
    pub path: String,
    pub data: Bytes,
    pub content_type: Option<String>,
    pub stream_seq: Option<String>,
    pub producer: Option<Producer>,
    pub close: bool,
}

impl QueuedAppend {
    /// Borrowed form for the SQL call.
    pub fn request(&self) -> AppendRequest<'_> {
        AppendRequest {
            path: &self.path,
            data: &self.data,
            content_type: self.content_type.as_deref(),
            stream_seq: self.stream_seq.as_deref(),
            producer: self.producer.as_ref(),
            close: self.close,
        }
    }
}

/// What a queued append ends with.
pub type Answer = Result<Result<Appended, DbError>, QueueError>;

struct Job {
    append: QueuedAppend,
    reply: oneshot::Sender<Answer>,
}

/// Why an append could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// A queue is full (503).
    Full,
    /// The lane stopped (shutdown).
    Stopped,
}

/// The lanes of group commit.
pub struct Batcher {
    lanes: Vec<mpsc::Sender<Job>>,
}

impl Batcher {
    /// Starts `lanes` lane tasks, each with a queue of `queue` requests.
    /// At most `detour_connections` detoured appends use a connection at once.
    pub fn start(
        db: Db,
        lanes: usize,
        max_batch: usize,
        queue: usize,
        detour_connections: usize,
    ) -> Batcher {
        let permits = Arc::new(Semaphore::new(detour_connections.max(1)));
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(queue.max(1));
                let detours = Detours::new(db.clone(), permits.clone());
                tokio::spawn(run_lane(db.clone(), rx, max_batch.max(1), detours));
                tx
            })
            .collect();
        Batcher { lanes }
    }

    /// Queues an append and waits for its committed outcome.
    pub async fn append(&self, append: QueuedAppend) -> Answer {
        let mut h = DefaultHasher::new();
        append.path.hash(&mut h);
        let lane = &self.lanes[(h.finish() % self.lanes.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        lane.try_send(Job { append, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Stopped,
        })?;
        answer.await.map_err(|_| QueueError::Stopped)?
    }
}

async fn run_lane(db: Db, mut rx: mpsc::Receiver<Job>, max_batch: usize, mut detours: Detours) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        detours.reap();
        let jobs: Vec<Job> = jobs.into_iter().filter_map(|job| detours.follow(job)).collect();
        if jobs.is_empty() {
            continue;
        }
        let appends: Vec<AppendRequest<'_>> = jobs.iter().map(|j| j.append.request()).collect();
        let outcome = db.try_append_batch(&appends).await;
        drop(appends);
        match outcome {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    if AppendOutcome::from_name(&result.outcome) == Some(AppendOutcome::Busy) {
                        detours.push(job);
                    } else {
                        let _ = job.reply.send(Ok(Ok(result)));
                    }
                }
            }
            // Rolled back (e.g. out of disk): nothing was applied, so each
            // request is tried on its own, off the lane.
            Err(e) if e.rolled_back() => {
                tracing::warn!(error = %e, batch = jobs.len(), "append batch rolled back; retrying one by one");
                for job in jobs {
                    detours.push(job);
                }
            }
            // Unknown whether it committed (connection lost): report, never
            // retry, so nothing is appended twice.
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, batch = jobs.len(), "append batch failed");
                for job in jobs {
                    let _ = job.reply.send(Ok(Err(DbError::Batch(message.clone()))));
                }
            }
        }
    }
}

/// One stream's requests that are sent one by one.
struct Detour {
    queue: mpsc::Sender<Job>,
    /// Requests sent to the detour and not answered yet.
    unfinished: Arc<AtomicUsize>,
}

/// A lane's detours, by stream path. Only the lane adds work, so a detour
/// with nothing unfinished can be dropped without losing a request.
struct Detours {
    db: Db,
    permits: Arc<Semaphore>,
    by_path: HashMap<String, Detour>,
}

impl Detours {
    fn new(db: Db, permits: Arc<Semaphore>) -> Detours {
        Detours { db, permits, by_path: HashMap::new() }
    }

    /// Drops detours that are done (their tasks end with their queues).
    fn reap(&mut self) {
        self.by_path.retain(|_, d| d.unfinished.load(Ordering::Acquire) > 0);
    }

    /// Sends `job` after its stream's earlier requests if they took a
    /// detour; gives it back otherwise.
    fn follow(&mut self, job: Job) -> Option<Job> {
        if self.by_path.contains_key(&job.append.path) {
            self.push(job);
            None
        } else {
            Some(job)
        }
    }

    /// Queues `job` on its stream's detour, starting one if needed.
    fn push(&mut self, job: Job) {
        if !self.by_path.contains_key(&job.append.path) {
            if self.by_path.len() >= MAX_DETOURS {
                let _ = job.reply.send(Err(QueueError::Full));
                return;
            }
            let (queue, rx) = mpsc::channel(DETOUR_QUEUE);
            let unfinished = Arc::new(AtomicUsize::new(0));
            tokio::spawn(run_detour(self.db.clone(), self.permits.clone(), rx, unfinished.clone()));
            self.by_path.insert(job.append.path.clone(), Detour { queue, unfinished });
        }
        let detour = &self.by_path[&job.append.path];
        detour.unfinished.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = detour.queue.try_send(job) {
            detour.unfinished.fetch_sub(1, Ordering::AcqRel);
            let job = match e {
                mpsc::error::TrySendError::Full(job) | mpsc::error::TrySendError::Closed(job) => {
                    job
                }
            };
            let _ = job.reply.send(Err(QueueError::Full));
        }
    }
}

async fn run_detour(
    db: Db,
    permits: Arc<Semaphore>,
    mut rx: mpsc::Receiver<Job>,
    unfinished: Arc<AtomicUsize>,
) {
    while let Some(job) = rx.recv().await {
        let answer = match permits.acquire().await {
            Ok(_permit) => Ok(db.try_append(&job.append.request()).await),
            Err(_) => Err(QueueError::Stopped),
        };
        let _ = job.reply.send(answer);
        unfinished.fetch_sub(1, Ordering::AcqRel);
    }
}
