//! Handlers of `/v1/stream/{*path}`: create, append/close, metadata,
//! delete and catch-up reads. Live reads are in `live.rs`.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use ds_core::content_type::{self, OCTET_STREAM};
use ds_core::outcome::AppendOutcome;
use ds_core::{Offset, ReadFrom};

use super::{ApiError, Caller, Headers, NO_STORE, append as append_response, live};
use crate::AppState;
use crate::auth::Principal;
use crate::batch::{QueueError, QueuedAppend};
use crate::db::{Chunk, CreateRequest};
use crate::metrics::OutcomeLabels;
use crate::protocol::etag;
use crate::protocol::headers::{
    self, HeaderError, PRODUCER_EPOCH, PRODUCER_ID, PRODUCER_SEQ, STREAM_CLOSED, STREAM_CURSOR,
    STREAM_EARLIEST_OFFSET, STREAM_EXPIRES_AT, STREAM_FORK_OFFSET, STREAM_FORK_SUB_OFFSET,
    STREAM_FORKED_FROM, STREAM_NEXT_OFFSET, STREAM_SEQ, STREAM_TTL, STREAM_UP_TO_DATE,
};
use crate::protocol::query::{Live, ReadParams};

/// A request header as text; `None` when absent, 400 when not text.
pub(super) fn header_str<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| v.to_str().map_err(|_| HeaderError::NotText(label).into()))
        .transpose()
}

fn closed_header(headers: &HeaderMap) -> bool {
    headers::is_closed(headers.get(&STREAM_CLOSED).and_then(|v| v.to_str().ok()))
}

/// The absolute URL of this request, for `Location`.
fn location(headers: &HeaderMap, uri: &Uri, state: &AppState) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map_or_else(|| state.config.listen.to_string(), str::to_owned);
    let scheme = headers
        .get(HeaderName::from_static("x-forwarded-proto"))
        .and_then(|h| h.to_str().ok())
        .filter(|p| *p == "https")
        .unwrap_or("http");
    format!("{scheme}://{host}{}", uri.path())
}

/// `PUT`: create a stream (201) or confirm an identical one (200).
pub(super) async fn create(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(path): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let fork = headers::parse_fork(
        header_str(&headers, &STREAM_FORKED_FROM, "Stream-Forked-From")?,
        header_str(&headers, &STREAM_FORK_OFFSET, "Stream-Fork-Offset")?,
        header_str(&headers, &STREAM_FORK_SUB_OFFSET, "Stream-Fork-Sub-Offset")?,
    )?;
    let given_type = header_str(&headers, &header::CONTENT_TYPE, "Content-Type")?
        .map(str::trim)
        .filter(|ct| !ct.is_empty());
    // A fork without Content-Type inherits the source's (empty = inherit).
    let content_type = given_type.unwrap_or(if fork.is_some() { "" } else { OCTET_STREAM });
    let (ttl_seconds, expires_at) = headers::parse_expiry(
        header_str(&headers, &STREAM_TTL, "Stream-TTL")?,
        header_str(&headers, &STREAM_EXPIRES_AT, "Stream-Expires-At")?,
    )?;
    let request = CreateRequest {
        path: &path,
        content_type,
        ttl_seconds,
        expires_at,
        closed: closed_header(&headers),
        body: (!body.is_empty()).then_some(&body[..]),
    };
    let created = match &fork {
        Some(f) => state.db.fork(caller.role(), &request, f).await?,
        None => state.db.create(caller.role(), &request).await?,
    };
    state.db.wrote().await;
    let mut h = Headers::default();
    h.set(header::CONTENT_TYPE, &created.content_type)
        .set(STREAM_NEXT_OFFSET, &created.next_offset)
        .flag(STREAM_CLOSED, created.closed);
    let status = if created.created {
        state.hub.wake(&path);
        h.set(header::LOCATION, location(&headers, &uri, &state));
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, h.0).into_response())
}

/// `POST`: append, append-and-close, or close.
pub(super) async fn append(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let producer = headers::parse_producer(
        header_str(&headers, &PRODUCER_ID, "Producer-Id")?,
        header_str(&headers, &PRODUCER_EPOCH, "Producer-Epoch")?,
        header_str(&headers, &PRODUCER_SEQ, "Producer-Seq")?,
    )?;
    let close = closed_header(&headers);
    if body.is_empty() && !close {
        return Err(ApiError::BadRequest(
            "empty body: send data, or Stream-Closed: true to close the stream".into(),
        ));
    }
    let content_type = if body.is_empty() {
        None
    } else {
        let ct = header_str(&headers, &header::CONTENT_TYPE, "Content-Type")?
            .filter(|ct| !ct.trim().is_empty())
            .ok_or_else(|| ApiError::BadRequest("Content-Type header is required".into()))?;
        Some(ct)
    };
    let queued = QueuedAppend {
        path: path.clone(),
        data: body.clone(),
        content_type: content_type.map(str::to_owned),
        stream_seq: header_str(&headers, &STREAM_SEQ, "Stream-Seq")?.map(str::to_owned),
        producer: producer.clone(),
        close,
        role: caller.role.clone(),
    };
    let row = match state.batcher.append(queued).await {
        Ok(result) => result?,
        Err(QueueError::Full) => return Err(ApiError::Busy("too many appends queued")),
        Err(QueueError::Stopped) => return Err(ApiError::Busy("shutting down")),
    };
    let outcome = AppendOutcome::from_name(&row.outcome);
    let label = outcome.map_or("unknown", AppendOutcome::name);
    state.metrics.appends.get_or_create(&OutcomeLabels { outcome: label }).inc();
    state.db.wrote().await;
    if outcome == Some(AppendOutcome::Ok) {
        // Our own commit: wake local waiters now rather than after the doorbell.
        // Live waiters at its start may take the body itself (tail::Fresh):
        // not for JSON streams (stored as compact messages, not the body)
        // nor with read replicas (the next read could outrun them).
        let body_is_stored = content_type
            .is_some_and(|ct| !matches!(content_type::mode(ct), Ok(content_type::Mode::Json)));
        match row.next_offset.as_deref().map(Offset::parse) {
            Some(Ok(tail)) if body_is_stored && !state.db.routes_reads() => {
                state.hub.wake_appended(&path, body.clone(), tail, row.closed)
            }
            Some(Ok(tail)) => state.hub.wake_committed(&path, tail, row.closed),
            _ => state.hub.wake(&path),
        }
    }
    append_response::respond(&row, producer.as_ref(), body.is_empty())
}

/// `HEAD`: metadata, never cached.
pub(super) async fn head(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    let meta = state.db.head(caller.role(), &path).await?.ok_or(ApiError::NotFound)?;
    let mut h = Headers::default();
    h.set(header::CONTENT_TYPE, &meta.content_type)
        .set(STREAM_NEXT_OFFSET, &meta.next_offset)
        .set(header::CACHE_CONTROL, NO_STORE)
        .set(header::ETAG, etag::format(meta.stream_id, "-1", &meta.next_offset, meta.closed))
        .flag(STREAM_CLOSED, meta.closed);
    if let Some(earliest) = &meta.earliest_offset {
        h.set(STREAM_EARLIEST_OFFSET, earliest);
    }
    if let Some(ttl) = meta.ttl_seconds {
        h.set(STREAM_TTL, ttl.to_string());
    }
    if let Some(at) = &meta.expires_at {
        h.set(STREAM_EXPIRES_AT, at);
    }
    Ok((StatusCode::OK, h.0).into_response())
}

/// `DELETE`: remove the stream; live readers see 404 on their next read.
pub(super) async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    state.db.delete(caller.role(), &path).await?;
    state.db.wrote().await;
    state.hub.wake(&path);
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `OPTIONS` without a CORS preflight (preflights are answered by the CORS layer).
pub(super) async fn options(_: Caller) -> StatusCode {
    StatusCode::NO_CONTENT
}

/// `GET`: catch-up, long-poll or SSE.
pub(super) async fn read(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(path): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // `token` (if any) was taken by the guard; ReadParams ignores it, and
    // neither ETags nor Location ever include the query string.
    let params = ReadParams::parse(&query).map_err(ApiError::BadRequest)?;
    match params.live {
        Live::No => catch_up(&state, &caller, &path, &params, &headers).await,
        Live::LongPoll => live::long_poll(state, caller, path, params).await,
        Live::Sse => live::sse(state, caller, path, params).await,
    }
}

/// The token passed to `ds.read_chunk` for a client's `offset`.
pub(super) fn sql_from(params: &ReadParams) -> &str {
    match params.from {
        ReadFrom::Now => "now",
        _ => &params.offset,
    }
}

/// The concrete offset a read starts at, when the request names one.
pub(super) fn start_offset(from: ReadFrom) -> Option<String> {
    match from {
        ReadFrom::Start => Some(Offset::ZERO.to_string()),
        ReadFrom::At(o) => Some(o.to_string()),
        ReadFrom::Now => None,
    }
}

/// Whether a chunk read from `start` carries any data. A read from `-1`
/// starts at the earliest retained offset, which only the extension knows:
/// a stream that retention emptied answers it with no data at a later
/// offset, so the body decides too (an empty JSON read is `[]`).
pub(super) fn has_data(start: Option<&str>, chunk: &Chunk) -> bool {
    let empty_body = chunk.body.is_empty()
        || (chunk.body.as_ref() == b"[]"
            && content_type::mode(&chunk.content_type)
                .is_ok_and(|m| m == content_type::Mode::Json));
    start.is_some_and(|s| s != chunk.next_offset) && !empty_body
}

/// A `200` carrying a chunk: protocol headers, ETag, Cache-Control.
pub(super) fn chunk_response(
    chunk: Chunk,
    etag_start: &str,
    with_data: bool,
    cursor: Option<String>,
    if_none_match: Option<&str>,
    cacheable_control: &'static str,
) -> Response {
    let tag = etag::format(chunk.stream_id, etag_start, &chunk.next_offset, chunk.closed);
    let mut h = Headers::default();
    h.set(header::ETAG, &tag);
    // A data chunk never changes, and neither does the EOF of a closed
    // stream; an empty read at the open tail would hide later appends.
    let cacheable = with_data || chunk.closed;
    h.set(header::CACHE_CONTROL, if cacheable { cacheable_control } else { NO_STORE });
    if if_none_match.is_some_and(|inm| etag::if_none_match(inm, &tag)) {
        return (StatusCode::NOT_MODIFIED, h.0).into_response();
    }
    h.set(header::CONTENT_TYPE, &chunk.content_type)
        .set(STREAM_NEXT_OFFSET, &chunk.next_offset)
        .flag(STREAM_UP_TO_DATE, chunk.up_to_date)
        .flag(STREAM_CLOSED, chunk.closed);
    if let Some(c) = cursor {
        h.set(STREAM_CURSOR, c);
    }
    (StatusCode::OK, h.0, Body::from(chunk.body)).into_response()
}

async fn catch_up(
    state: &AppState,
    caller: &Principal,
    path: &str,
    params: &ReadParams,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let chunk = state
        .db
        .read_chunk(caller.role(), path, sql_from(params), state.config.read_chunk_bytes)
        .await?;
    if params.from == ReadFrom::Now {
        // §8: the tail position, no data, never cached, no ETag.
        let mut h = Headers::default();
        h.set(header::CONTENT_TYPE, &chunk.content_type)
            .set(STREAM_NEXT_OFFSET, &chunk.next_offset)
            .set(header::CACHE_CONTROL, NO_STORE)
            .flag(STREAM_UP_TO_DATE, true)
            .flag(STREAM_CLOSED, chunk.closed);
        return Ok((StatusCode::OK, h.0, Body::from(chunk.body)).into_response());
    }
    let start = start_offset(params.from);
    let with_data = has_data(start.as_deref(), &chunk);
    let inm = header_str(headers, &header::IF_NONE_MATCH, "If-None-Match")?;
    Ok(chunk_response(chunk, &params.offset, with_data, None, inm, state.cacheable()))
}
