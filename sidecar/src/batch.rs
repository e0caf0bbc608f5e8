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
//!
//! A batch that a read-only server (a standby: no primary during a
//! failover) refused is answered 503 at once; one whose connection broke or
//! ended with a FATAL error (outcome unknown) is answered 503 and never
//! retried, so a 2xx always means committed and nothing is applied twice.
//!
//! A batch carries at most `max_batch` requests and `max_batch_bytes` of
//! bodies: a request that would go over starts the next batch (a single
//! request over the budget goes alone).
//!
//! With authentication each request carries its role: the batch passes
//! them as `as_roles` (the extension checks request i as role i; a refusal
//! is that request's outcome `forbidden`), and a detour runs its request
//! as the role. An extension without `as_roles` rejects the batch call
//! (42883); its requests are then all sent as detours, which still run as
//! their roles.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use ds_core::outcome::AppendOutcome;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::db::{AppendRequest, Appended, Db, DbError};
use crate::failover::{self, Outage};
use crate::metrics::Metrics;
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
    /// The role the request runs as (`None`: the sidecar's own).
    pub role: Option<Arc<str>>,
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
    answer_timeout: Option<std::time::Duration>,
}

/// How lanes form their batches.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most requests in one batch.
    pub max_batch: usize,
    /// Most body bytes in one batch.
    pub max_batch_bytes: usize,
    /// Queue length of each lane.
    pub queue: usize,
    /// Most detoured appends using a connection at once.
    pub detour_connections: usize,
    /// Longest an append waits for its answer, queueing included (`None`:
    /// unbounded); then 503, outcome unknown (it may still be carried out).
    pub answer_timeout: Option<std::time::Duration>,
}

impl Batcher {
    /// Starts `lanes` lane tasks. `with_roles`: requests carry roles (pass
    /// them as `as_roles`).
    pub fn start(
        db: Db,
        lanes: usize,
        limits: Limits,
        with_roles: bool,
        metrics: Arc<Metrics>,
    ) -> Batcher {
        let permits = Arc::new(Semaphore::new(limits.detour_connections.max(1)));
        let no_as_roles = Arc::new(AtomicBool::new(false));
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(limits.queue.max(1));
                let lane = Lane {
                    db: db.clone(),
                    detours: Detours::new(db.clone(), permits.clone()),
                    max_batch: limits.max_batch.max(1),
                    max_batch_bytes: limits.max_batch_bytes.max(1),
                    with_roles,
                    no_as_roles: no_as_roles.clone(),
                    metrics: metrics.clone(),
                };
                tokio::spawn(lane.run(rx));
                tx
            })
            .collect();
        Batcher { lanes, answer_timeout: limits.answer_timeout }
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
        let Some(limit) = self.answer_timeout else {
            return answer.await.map_err(|_| QueueError::Stopped)?;
        };
        match tokio::time::timeout(limit, answer).await {
            Ok(answer) => answer.map_err(|_| QueueError::Stopped)?,
            Err(_) => Ok(Err(DbError::Unavailable(
                Outage::Unconfirmed,
                format!("no answer within {} ms", limit.as_millis()),
            ))),
        }
    }
}

/// Takes the next batch from `rx`, starting with `carry` (a request left
/// over from the previous batch) or the next request to arrive: whatever
/// is queued, up to `max_batch` requests and `max_bytes` of bodies. The
/// request that would go over the byte budget is returned as the next
/// carry. `None` when the queue is closed and empty.
async fn take_batch(
    rx: &mut mpsc::Receiver<Job>,
    carry: &mut Option<Job>,
    max_batch: usize,
    max_bytes: usize,
) -> Option<Vec<Job>> {
    let first = match carry.take() {
        Some(job) => job,
        None => rx.recv().await?,
    };
    let mut bytes = first.append.data.len();
    let mut jobs = vec![first];
    while jobs.len() < max_batch {
        let Ok(job) = rx.try_recv() else { break };
        if bytes + job.append.data.len() > max_bytes {
            *carry = Some(job);
            break;
        }
        bytes += job.append.data.len();
        jobs.push(job);
    }
    Some(jobs)
}

struct Lane {
    db: Db,
    detours: Detours,
    max_batch: usize,
    max_batch_bytes: usize,
    with_roles: bool,
    /// The extension has no `as_roles` (shared by the lanes).
    no_as_roles: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Lane {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut carry = None;
        while let Some(jobs) =
            take_batch(&mut rx, &mut carry, self.max_batch, self.max_batch_bytes).await
        {
            self.detours.reap();
            let jobs: Vec<Job> =
                jobs.into_iter().filter_map(|job| self.detours.follow(job)).collect();
            if jobs.is_empty() {
                continue;
            }
            if self.with_roles && self.no_as_roles.load(Ordering::Relaxed) {
                for job in jobs {
                    self.detours.push(job);
                }
                continue;
            }
            self.commit(jobs).await;
        }
    }

    async fn commit(&mut self, jobs: Vec<Job>) {
        let bytes: usize = jobs.iter().map(|j| j.append.data.len()).sum();
        self.metrics.append_batch_bytes.observe(bytes as f64);
        let biggest = i64::try_from(bytes).unwrap_or(i64::MAX);
        if biggest > self.metrics.append_batch_bytes_max.get() {
            self.metrics.append_batch_bytes_max.set(biggest);
        }
        let appends: Vec<AppendRequest<'_>> = jobs.iter().map(|j| j.append.request()).collect();
        let roles: Option<Vec<Option<&str>>> =
            self.with_roles.then(|| jobs.iter().map(|j| j.append.role.as_deref()).collect());
        let outcome = self.db.try_append_batch(&appends, roles.as_deref()).await;
        drop(appends);
        drop(roles);
        match outcome {
            Ok(results) => {
                for (job, result) in jobs.into_iter().zip(results) {
                    if AppendOutcome::from_name(&result.outcome) == Some(AppendOutcome::Busy) {
                        self.detours.push(job);
                    } else {
                        let _ = job.reply.send(Ok(Ok(result)));
                    }
                }
            }
            // The extension predates `as_roles`: every request goes one by
            // one, as its role (correct, slower).
            Err(e)
                if self.with_roles
                    && e.sqlstate()
                        == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) =>
            {
                if !self.no_as_roles.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "ds.try_append_batch has no as_roles (an extension without access \
                         control): appends are sent one by one, each as its role"
                    );
                }
                for job in jobs {
                    self.detours.push(job);
                }
            }
            // Rolled back because the server is read-only (a standby, or in
            // recovery: no primary right now): one by one would fail the
            // same way, so every request gets 503 (nothing was applied).
            Err(e) if e.rolled_back() && failover::outage(&e) == Some(Outage::ReadOnly) => {
                let message = e.to_string();
                tracing::warn!(error = %message, batch = jobs.len(), "append batch refused: read-only database");
                for job in jobs {
                    let reply = DbError::Unavailable(Outage::ReadOnly, message.clone());
                    let _ = job.reply.send(Ok(Err(reply)));
                }
            }
            // Rolled back (e.g. out of disk): nothing was applied, so each
            // request is tried on its own, off the lane.
            Err(e) if e.rolled_back() => {
                tracing::warn!(error = %e, batch = jobs.len(), "append batch rolled back; retrying one by one");
                for job in jobs {
                    self.detours.push(job);
                }
            }
            // Unknown whether it committed (connection lost, or a FATAL error
            // such as a shutdown of the primary): report 503, never retry,
            // so nothing is appended twice.
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, batch = jobs.len(), "append batch failed");
                let unconfirmed = failover::outage(&e) == Some(Outage::Unconfirmed);
                for job in jobs {
                    let reply = if unconfirmed {
                        DbError::Unavailable(Outage::Unconfirmed, message.clone())
                    } else {
                        DbError::Batch(message.clone())
                    };
                    let _ = job.reply.send(Ok(Err(reply)));
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
            Ok(_permit) => {
                Ok(db.try_append(job.append.role.as_deref(), &job.append.request()).await)
            }
            Err(_) => Err(QueueError::Stopped),
        };
        let _ = job.reply.send(answer);
        unfinished.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(bytes: usize) -> (Job, oneshot::Receiver<Answer>) {
        let (reply, rx) = oneshot::channel();
        let append = QueuedAppend {
            path: "p".into(),
            data: Bytes::from(vec![b'x'; bytes]),
            content_type: None,
            stream_seq: None,
            producer: None,
            close: false,
            role: None,
        };
        (Job { append, reply }, rx)
    }

    #[tokio::test]
    async fn batches_respect_count_and_byte_budgets() {
        let (tx, mut rx) = mpsc::channel(100);
        let mut answers = Vec::new();
        for bytes in [40, 40, 40, 10, 200, 5, 5, 5, 5, 5] {
            let (j, a) = job(bytes);
            answers.push(a);
            tx.try_send(j).unwrap();
        }
        drop(tx);
        let mut carry = None;
        let mut sizes = Vec::new();
        while let Some(batch) = take_batch(&mut rx, &mut carry, 3, 100).await {
            sizes.push(batch.iter().map(|j| j.append.data.len()).collect::<Vec<_>>());
        }
        // 40+40 fit, the third 40 would make 120 > 100; the 200 goes alone.
        assert_eq!(sizes, vec![vec![40, 40], vec![40, 10], vec![200], vec![5, 5, 5], vec![5, 5]]);
    }
}
