//! Group commit: concurrent appends coalesced into one transaction.
//!
//! Appends go to one of N lanes chosen by a hash of the stream path, so all
//! appends to a stream queue in one FIFO: a producer's pipelined requests are
//! applied in arrival order, and two lanes never lock the same stream (no
//! deadlocks between lanes). A lane takes whatever is queued (up to
//! `max_batch`), sends it as ONE `ds.try_append_batch` call (one commit, one
//! WAL flush), and hands every request its own outcome: a bad append never
//! fails its neighbours. A 2xx still means committed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::db::{AppendRequest, Appended, Db, DbError};
use crate::protocol::headers::Producer;

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

struct Job {
    append: QueuedAppend,
    reply: oneshot::Sender<Result<Appended, DbError>>,
}

/// Why an append could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The lane's queue is full (503).
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
    pub fn start(db: Db, lanes: usize, max_batch: usize, queue: usize) -> Batcher {
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(queue.max(1));
                tokio::spawn(run_lane(db.clone(), rx, max_batch.max(1)));
                tx
            })
            .collect();
        Batcher { lanes }
    }

    /// Queues an append and waits for its committed outcome.
    pub async fn append(
        &self,
        append: QueuedAppend,
    ) -> Result<Result<Appended, DbError>, QueueError> {
        let mut h = DefaultHasher::new();
        append.path.hash(&mut h);
        let lane = &self.lanes[(h.finish() % self.lanes.len() as u64) as usize];
        let (reply, answer) = oneshot::channel();
        lane.try_send(Job { append, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Stopped,
        })?;
        answer.await.map_err(|_| QueueError::Stopped)
    }
}

async fn run_lane(db: Db, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if jobs.len() == 1 {
            let job = jobs.pop().expect("one job");
            let result = db.try_append(&job.append.request()).await;
            let _ = job.reply.send(result);
            continue;
        }
        // One lock order for every batch: by path (stable, so each stream's
        // requests keep their arrival order).
        jobs.sort_by(|a, b| a.append.path.cmp(&b.append.path));
        let appends: Vec<AppendRequest<'_>> = jobs.iter().map(|j| j.append.request()).collect();
        match db.try_append_batch(&appends).await {
            Ok(results) => {
                drop(appends);
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            // The transaction was rolled back (e.g. a deadlock with a SQL
            // user's transaction): nothing was applied, so run them one by one.
            Err(e) if e.rolled_back() => {
                drop(appends);
                tracing::warn!(error = %e, batch = jobs.len(), "append batch rolled back; retrying one by one");
                for job in jobs {
                    let result = db.try_append(&job.append.request()).await;
                    let _ = job.reply.send(result);
                }
            }
            // Unknown whether it committed (connection lost): report, never
            // retry, so nothing is appended twice.
            Err(e) => {
                drop(appends);
                let message = e.to_string();
                tracing::error!(error = %message, batch = jobs.len(), "append batch failed");
                for job in jobs {
                    let _ = job.reply.send(Err(DbError::Batch(message.clone())));
                }
            }
        }
    }
}
