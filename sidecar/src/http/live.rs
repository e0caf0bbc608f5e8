//! Live reads: long-poll (§5.7) and SSE (§5.8).
//!
//! Both subscribe to the tail hub *before* reading, then re-read with
//! `ds.read_chunk` after every wake-up: a notification is only a hint. No
//! database connection is held while waiting. Both stop waiting at shutdown,
//! and when the request's token expires.
//!
//! With authentication, a waiter's first read is always its own (as its
//! role), so a waiter that may not read the stream gets its 403 and never
//! joins a read shared with others (`flight.rs`).
//!
//! After their first read, long-polls and SSE sessions ride out a database
//! outage (a failover): a failed re-read is retried after a backoff or the
//! next wake-up until the request's deadline, instead of ending the request.
//!
//! The events of one shared read are rendered once ([`Rendered`]): the
//! waiters it serves send the same bytes (profile of 10,000 SSE clients on
//! one stream: allocation was the largest cost after the socket writes).
//!
//! An SSE client's queue is bounded in frames and in bytes
//! (`--sse-max-queued-bytes`): a client that does not drain it within
//! `--sse-send-timeout-ms` is dropped and counted (`sse_slow_dropped`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc};
use tokio::time::{Instant, sleep, sleep_until};

use super::streams::{chunk_response, has_data, sql_from, start_offset};
use super::{ApiError, Headers, NO_STORE};
use crate::AppState;
use crate::auth::Principal;
use crate::db::{Chunk, DbError};
use crate::failover::{self, Backoff};
use crate::metrics::GaugeGuard;
use crate::protocol::cursor;
use crate::protocol::headers::{
    STREAM_CLOSED, STREAM_CURSOR, STREAM_NEXT_OFFSET, STREAM_SSE_DATA_ENCODING, STREAM_UP_TO_DATE,
};
use crate::protocol::query::ReadParams;
use crate::protocol::sse::{self, Control, Encoding};
use crate::tail::Subscription;
use ds_core::Offset;

fn slot(
    state: &AppState,
    slots: &Arc<tokio::sync::Semaphore>,
    what: &'static str,
) -> Result<OwnedSemaphorePermit, ApiError> {
    Arc::clone(slots).try_acquire_owned().map_err(|_| {
        state.metrics.rejected_busy.inc();
        ApiError::Busy(what)
    })
}

/// Subscribes to `path`, or 503 when the stream has all the waiters it may.
fn subscribe(state: &AppState, path: &str) -> Result<Subscription, ApiError> {
    state.hub.subscribe(path).map_err(|_| {
        state.metrics.rejected_busy.inc();
        ApiError::Busy("too many waiters on this stream")
    })
}

/// `204` at the tail: nothing new (yet), or EOF when `closed`.
fn tail_response(next_offset: &str, closed: bool, cursor: Option<String>) -> Response {
    let mut h = Headers::default();
    h.set(STREAM_NEXT_OFFSET, next_offset)
        .set(header::CACHE_CONTROL, NO_STORE)
        .flag(STREAM_UP_TO_DATE, true)
        .flag(STREAM_CLOSED, closed);
    if let Some(c) = cursor.filter(|_| !closed) {
        h.set(STREAM_CURSOR, c);
    }
    (StatusCode::NO_CONTENT, h.0).into_response()
}

/// `wait`, shortened to the time the caller's token has left.
fn until_expiry(caller: &Principal, wait: Duration) -> Instant {
    Instant::now() + caller.remaining().map_or(wait, |left| left.min(wait))
}

/// One live read: shared with other waiters ([`crate::flight`]), except a
/// waiter's first read with authentication, which must be its own.
async fn live_read(
    state: &AppState,
    caller: &Principal,
    own: bool,
    path: &str,
    from: &str,
) -> Result<Chunk, DbError> {
    let max = state.config.read_chunk_bytes;
    if own {
        state.db.read_chunk(caller.role(), path, from, max).await
    } else {
        state.flights.read(&state.db, &state.hub, caller.role(), path, from, max).await
    }
}

/// The chunk after `prev` taken from this process's own latest append to
/// `path`, when that append starts exactly where `prev` ends: no read needed
/// (`tail::Fresh`; 0.3-0.5 ms of an append-to-SSE-event at p50 here). Never
/// for JSON streams (the append handler keeps no body for them) nor past
/// the read size limit. Built once per append and shared, so SSE sessions
/// render its events once for all.
fn fresh_chunk(state: &AppState, path: &str, prev: &Chunk) -> Option<Chunk> {
    let from = Offset::parse(&prev.next_offset).ok()?;
    let fresh = state.hub.fresh(path, from)?;
    let too_big = state
        .config
        .read_chunk_bytes
        .is_some_and(|max| i64::try_from(fresh.body.len()).map_or(true, |len| len > max));
    if too_big {
        return None;
    }
    state.metrics.live_fresh_reads.inc();
    let chunk = fresh.chunk.get_or_init(|| Chunk {
        body: fresh.body.clone(),
        next_offset: fresh.tail.to_string(),
        up_to_date: true,
        closed: fresh.closed,
        content_type: prev.content_type.clone(),
        stream_id: prev.stream_id,
        sse_data: Arc::default(),
    });
    Some(chunk.clone())
}

/// `live=long-poll`: answer at once when there is data (or EOF), otherwise
/// wait for a wake-up until the timeout (or the token's expiry).
pub(super) async fn long_poll(
    state: AppState,
    caller: Principal,
    path: String,
    params: ReadParams,
) -> Result<Response, ApiError> {
    let _permit = slot(&state, &state.long_poll_slots, "too many long-poll waiters")?;
    let _waiting = GaugeGuard::new(&state.metrics.long_poll_waiters);
    let mut sub = subscribe(&state, &path)?;
    let deadline = until_expiry(&caller, state.config.long_poll_timeout());
    let mut from = sql_from(&params).to_owned();
    let mut start = start_offset(params.from);
    let mut own = caller.role.is_some();
    let mut first = true;
    let mut outage = Backoff::default();
    let mut prev: Option<Chunk> = None;
    loop {
        let fresh = prev.take().and_then(|p| fresh_chunk(&state, &path, &p));
        // Boxed for the same reason as in `SseSession::run`.
        let read = match fresh {
            Some(chunk) => Ok(chunk),
            None => Box::pin(live_read(&state, &caller, own, &path, &from)).await,
        };
        let chunk = match read {
            Ok(chunk) => chunk,
            // The database went away after the first read (a failover):
            // keep waiting and re-read after a backoff or the next wake-up
            // (the LISTEN connection coming back wakes everybody). Past the
            // deadline the client gets the 503.
            Err(e) if !first && failover::outage(&e).is_some() && Instant::now() < deadline => {
                tracing::debug!(%path, error = %e, "long-poll re-read failed; waiting for the database");
                tokio::select! {
                    () = sleep(outage.next_wait()) => {}
                    () = sub.changed() => {}
                    () = sleep_until(deadline) => {}
                    () = state.shutdown.cancelled() => return Err(e.into()),
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        own = false;
        first = false;
        outage = Backoff::default();
        let cursor = cursor::generate(params.cursor.as_deref());
        if has_data(start.as_deref(), &chunk) {
            return Ok(chunk_response(chunk, &from, true, Some(cursor), None, state.cacheable()));
        }
        if chunk.closed {
            return Ok(tail_response(&chunk.next_offset, true, None));
        }
        from.clone_from(&chunk.next_offset);
        start = Some(chunk.next_offset.clone());
        prev = Some(chunk);
        tokio::select! {
            () = sub.changed() => {}
            () = sleep_until(deadline) => return Ok(tail_response(&from, false, Some(cursor))),
            () = state.shutdown.cancelled() => return Ok(tail_response(&from, false, Some(cursor))),
        }
    }
}

/// `live=sse`: a `text/event-stream` of data and control events, ended
/// after EOF, after the maximum duration (or the token's expiry), at
/// shutdown or on disconnect.
pub(super) async fn sse(
    state: AppState,
    caller: Principal,
    path: String,
    params: ReadParams,
) -> Result<Response, ApiError> {
    let permit = slot(&state, &state.sse_slots, "too many SSE clients")?;
    let sub = subscribe(&state, &path)?;
    // The first read is the client's own and happens before the response
    // starts, so a missing stream is a plain 404 and a refused one a 403.
    let first = live_read(&state, &caller, true, &path, sql_from(&params)).await?;
    let encoding = Encoding::for_content_type(&first.content_type);
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    let queue = Arc::new(Queued::new(state.config.sse_max_queued_bytes));
    let deadline = until_expiry(&caller, state.config.sse_max_duration());
    let session = SseSession {
        state,
        caller,
        path,
        params,
        encoding,
        sub,
        tx,
        queue: Arc::clone(&queue),
        deadline,
        _permit: permit,
    };
    tokio::spawn(session.run(first));

    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx).map(|b| {
            b.map(|b| {
                queue.taken(b.len());
                Ok::<_, Infallible>(b)
            })
        })
    });
    let mut h = Headers::default();
    h.set(header::CONTENT_TYPE, "text/event-stream")
        .set(header::CACHE_CONTROL, "no-cache")
        .set(axum::http::HeaderName::from_static("x-accel-buffering"), "no");
    if encoding == Encoding::Base64 {
        h.set(STREAM_SSE_DATA_ENCODING, "base64");
    }
    Ok((StatusCode::OK, h.0, Body::from_stream(body)).into_response())
}

/// Data events up to this size share one write with their control event.
const INLINE_DATA_EVENT: usize = 4096;

/// Bytes queued for one SSE client and not yet taken by hyper.
struct Queued {
    bytes: AtomicUsize,
    max: usize,
    drained: Notify,
}

impl Queued {
    fn new(max: usize) -> Queued {
        Queued { bytes: AtomicUsize::new(0), max: max.max(1), drained: Notify::new() }
    }

    /// Reserves room for `len` bytes if it fits (a lone frame always fits).
    fn try_reserve(&self, len: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q == 0 || q + len <= self.max).then_some(q + len)
            })
            .is_ok()
    }

    /// The body took a frame of `len` bytes.
    fn taken(&self, len: usize) {
        self.bytes.fetch_sub(len, Ordering::AcqRel);
        self.drained.notify_one();
    }
}

/// What one SSE event of a chunk is sent as: a large data event on its own
/// (the shared buffer itself), then the main frame (a small data event
/// copied in, plus the control event).
#[derive(Clone)]
struct Frames {
    data: Option<Bytes>,
    main: Bytes,
}

/// The frames last rendered, shared by every waiter served by the same
/// read: when one append wakes 10,000 SSE clients of a stream, they all get
/// the same bytes (same chunk, and the same cursor unless a client sent its
/// own), so the events are rendered once instead of once per client.
struct Rendered(std::sync::Mutex<Option<RenderedKey>>);

struct RenderedKey {
    /// The chunk's shared slot: identifies the read (held, so its address
    /// cannot be reused by another chunk while remembered).
    chunk: Arc<std::sync::OnceLock<Bytes>>,
    cursor: Option<String>,
    with_data: bool,
    frames: Frames,
}

static RENDERED: Rendered = Rendered(std::sync::Mutex::new(None));

impl Rendered {
    fn frames(
        &self,
        chunk: &Chunk,
        cursor: Option<String>,
        with_data: bool,
        encoding: Encoding,
    ) -> Frames {
        let mut last = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(k) = last.as_ref()
            && Arc::ptr_eq(&k.chunk, &chunk.sse_data)
            && k.cursor == cursor
            && k.with_data == with_data
        {
            return k.frames.clone();
        }
        let frames = render(chunk, cursor.clone(), with_data, encoding);
        *last = Some(RenderedKey {
            chunk: Arc::clone(&chunk.sse_data),
            cursor,
            with_data,
            frames: frames.clone(),
        });
        frames
    }
}

/// Renders the events of `chunk` for a client with this `cursor`.
fn render(chunk: &Chunk, cursor: Option<String>, with_data: bool, encoding: Encoding) -> Frames {
    let mut frame = String::new();
    let data = with_data.then(|| {
        chunk
            .sse_data
            .get_or_init(|| {
                let mut data = String::new();
                sse::push_data_event(&mut data, &chunk.body, encoding);
                Bytes::from(data)
            })
            .clone()
    });
    // A small data event is copied into the same write as its control
    // event; a large one is sent as the shared buffer itself.
    let mut separate = None;
    match data {
        Some(d) if d.len() <= INLINE_DATA_EVENT => {
            frame.push_str(std::str::from_utf8(&d).expect("SSE events are UTF-8"));
        }
        other => separate = other,
    }
    let control = Control {
        stream_next_offset: chunk.next_offset.clone(),
        stream_cursor: cursor,
        up_to_date: chunk.up_to_date || chunk.closed,
        stream_closed: chunk.closed,
    };
    sse::push_control_event(&mut frame, &control);
    Frames { data: separate, main: Bytes::from(frame) }
}

struct SseSession {
    state: AppState,
    caller: Principal,
    path: String,
    params: ReadParams,
    encoding: Encoding,
    sub: Subscription,
    tx: mpsc::Sender<Bytes>,
    queue: Arc<Queued>,
    /// The maximum duration, or the token's expiry if sooner.
    deadline: Instant,
    _permit: OwnedSemaphorePermit,
}

impl SseSession {
    async fn run(mut self, first: Chunk) {
        let _client = GaugeGuard::new(&self.state.metrics.sse_clients);
        let deadline = self.deadline;
        let mut start = start_offset(self.params.from);
        let mut chunk = first;
        let mut announce = true;
        loop {
            let with_data = has_data(start.as_deref(), &chunk);
            if with_data || chunk.closed || announce {
                if !self.emit(&chunk, with_data).await || chunk.closed {
                    return;
                }
                announce = false;
            }
            start = Some(chunk.next_offset.clone());
            if !chunk.up_to_date {
                // More data is already there: keep catching up.
                if Instant::now() >= deadline {
                    return;
                }
            } else {
                tokio::select! {
                    () = self.sub.changed() => {}
                    () = sleep_until(deadline) => return,
                    () = self.state.shutdown.cancelled() => return,
                    () = self.tx.closed() => return,
                }
            }
            if let Some(fresh) = fresh_chunk(&self.state, &self.path, &chunk) {
                chunk = fresh;
                continue;
            }
            // Boxed: idle clients hold the session's future, not the read's.
            chunk = match Box::pin(self.reread(&chunk.next_offset, deadline)).await {
                Ok(c) => c,
                Err(e) => {
                    // Typically the stream was deleted; end the event stream.
                    tracing::debug!(path = %self.path, error = %e, "SSE read failed; ending stream");
                    return;
                }
            };
        }
    }

    /// The next read from `from`. While the database is unavailable (a
    /// failover) the session stays open and reads again after a backoff or
    /// the next wake-up, until `deadline`.
    async fn reread(&mut self, from: &str, deadline: Instant) -> Result<Chunk, DbError> {
        let mut outage = Backoff::default();
        loop {
            match live_read(&self.state, &self.caller, false, &self.path, from).await {
                Err(e) if failover::outage(&e).is_some() && Instant::now() < deadline => {
                    tracing::debug!(path = %self.path, error = %e, "SSE re-read failed; waiting for the database");
                    tokio::select! {
                        () = sleep(outage.next_wait()) => {}
                        () = self.sub.changed() => {}
                        () = sleep_until(deadline) => {}
                        () = self.state.shutdown.cancelled() => return Err(e),
                        () = self.tx.closed() => return Err(e),
                    }
                }
                result => return result,
            }
        }
    }

    /// Sends one data event (if any) plus its control event; false when the
    /// client is gone.
    async fn emit(&self, chunk: &Chunk, with_data: bool) -> bool {
        let cursor = (!chunk.closed).then(|| cursor::generate(self.params.cursor.as_deref()));
        let frames = RENDERED.frames(chunk, cursor, with_data, self.encoding);
        if let Some(data) = frames.data
            && !self.send(data).await
        {
            return false;
        }
        self.send(frames.main).await
    }

    /// Queues one frame for the client. A client that does not make room
    /// for it in time (in frames and in bytes) is dropped: it would
    /// otherwise hold its slot (and a bounded but idle buffer) forever. The
    /// timer is only armed when the queue is full.
    async fn send(&self, frame: Bytes) -> bool {
        let len = frame.len();
        if !self.queue.try_reserve(len) {
            let room = async {
                loop {
                    let drained = self.queue.drained.notified();
                    if self.queue.try_reserve(len) {
                        return;
                    }
                    drained.await;
                }
            };
            if tokio::time::timeout(self.state.config.sse_send_timeout(), room).await.is_err() {
                return self.drop_slow();
            }
        }
        let frame = match self.tx.try_send(frame) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(frame)) => frame,
        };
        match tokio::time::timeout(self.state.config.sse_send_timeout(), self.tx.send(frame)).await
        {
            Ok(sent) => sent.is_ok(),
            Err(_) => self.drop_slow(),
        }
    }

    fn drop_slow(&self) -> bool {
        tracing::info!(path = %self.path, "dropping an SSE client that stopped reading");
        self.state.metrics.sse_slow_dropped.inc();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(body: &'static [u8], next: &str) -> Chunk {
        Chunk {
            body: Bytes::from_static(body),
            next_offset: next.into(),
            up_to_date: true,
            closed: false,
            content_type: "text/plain".into(),
            stream_id: 1,
            sse_data: Arc::default(),
        }
    }

    #[test]
    fn waiters_of_one_read_share_its_rendered_events() {
        let rendered = Rendered(std::sync::Mutex::new(None));
        let read = chunk(b"hello", "o1");
        let (a, b) = (read.clone(), read.clone());
        let fa = rendered.frames(&a, Some("7".into()), true, Encoding::Text);
        let fb = rendered.frames(&b, Some("7".into()), true, Encoding::Text);
        assert_eq!(fa.main.as_ptr(), fb.main.as_ptr(), "the same bytes, rendered once");
        assert_eq!(
            &fa.main[..],
            b"event: data\ndata:hello\n\nevent: control\n\
              data:{\"streamNextOffset\":\"o1\",\"streamCursor\":\"7\",\"upToDate\":true}\n\n"
        );
        // Another cursor, another read with equal contents, or no data: rendered anew.
        let other_cursor = rendered.frames(&a, Some("8".into()), true, Encoding::Text);
        assert!(
            std::str::from_utf8(&other_cursor.main).unwrap().contains("\"streamCursor\":\"8\"")
        );
        let other_read =
            rendered.frames(&chunk(b"hello", "o1"), Some("8".into()), true, Encoding::Text);
        assert_ne!(other_read.main.as_ptr(), other_cursor.main.as_ptr());
        let control_only = rendered.frames(&a, Some("8".into()), false, Encoding::Text);
        assert!(control_only.main.starts_with(b"event: control\n"));
        // A large data event goes as the shared buffer of its own.
        static BIG: [u8; 5000] = [b'x'; 5000];
        let big = rendered.frames(&chunk(&BIG, "o2"), None, true, Encoding::Text);
        assert_eq!(big.data.map(|d| d.len()), Some("event: data\ndata:\n\n".len() + 5000));
        assert!(big.main.starts_with(b"event: control\n"));
    }

    #[test]
    fn an_sse_queue_is_bounded_in_bytes() {
        let q = Queued::new(100);
        assert!(q.try_reserve(60));
        assert!(q.try_reserve(40), "exactly full");
        assert!(!q.try_reserve(1), "over the budget");
        q.taken(60);
        assert!(q.try_reserve(50));
        assert!(!q.try_reserve(20));
        q.taken(40);
        q.taken(50);
        // A frame larger than the whole budget fits only into an empty queue.
        assert!(q.try_reserve(500));
        assert!(!q.try_reserve(1));
    }
}
