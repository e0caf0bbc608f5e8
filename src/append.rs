//! Appending and closing: `ds.try_append` (outcomes as data, for the sidecar)
//! and the simple `ds.append` overloads and `ds.close` (errors raised).

use ds_core::content_type::{self, Mode};
use ds_core::json::{self, Purpose};
use ds_core::outcome::{AppendOutcome, stream_seq_allows};
use ds_core::producer::{Decision, ProducerClaim, decide};
use ds_core::{Error as CoreError, Offset, limits};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::error::{DsError, DsResult, core_sqlstate, sqlstate_text};
use crate::storage::{self, Lock, StreamUpdate};
use crate::{doorbell, gucs};

/// One append or close request.
pub struct AppendRequest<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
    /// `None`: accept whatever the stream's type is (SQL callers).
    pub content_type: Option<&'a str>,
    pub stream_seq: Option<&'a str>,
    pub producer: Option<ProducerClaim>,
    pub close: bool,
}

/// The full result of a request; `outcome` says which fields are set.
#[derive(Debug)]
pub struct AppendResult {
    pub outcome: AppendOutcome,
    pub next_offset: Option<Offset>,
    pub closed: bool,
    pub producer_epoch: Option<i64>,
    pub producer_seq: Option<i64>,
    pub expected_seq: Option<i64>,
    pub received_seq: Option<i64>,
    pub sqlstate: Option<String>,
    pub detail: Option<String>,
}

impl AppendResult {
    fn new(outcome: AppendOutcome) -> Self {
        AppendResult {
            outcome,
            next_offset: None,
            closed: false,
            producer_epoch: None,
            producer_seq: None,
            expected_seq: None,
            received_seq: None,
            sqlstate: None,
            detail: None,
        }
    }

    fn invalid(e: &CoreError) -> Self {
        AppendResult {
            sqlstate: Some(sqlstate_text(core_sqlstate(e))),
            detail: Some(e.to_string()),
            ..Self::new(AppendOutcome::InvalidRequest)
        }
    }

    fn at(mut self, tail: Offset, closed: bool) -> Self {
        self.next_offset = Some(tail);
        self.closed = closed;
        self
    }
}

/// Splits a body into the messages stored for a stream of `mode`.
pub fn messages_for(
    mode: Mode,
    content_type: &str,
    data: &[u8],
    purpose: Purpose,
) -> Result<Vec<Vec<u8>>, CoreError> {
    limits::validate_body_size(data.len(), gucs::max_append_bytes())?;
    match mode {
        _ if data.is_empty() => Ok(Vec::new()),
        Mode::Json => json::split_messages(data, purpose),
        Mode::Text if std::str::from_utf8(data).is_err() => {
            Err(CoreError::InvalidUtf8(content_type.to_owned()))
        }
        Mode::Text | Mode::Bytes => Ok(vec![data.to_vec()]),
    }
}

/// Carries out one request inside the caller's transaction.
pub fn execute(client: &mut SpiClient<'_>, req: AppendRequest<'_>) -> DsResult<AppendResult> {
    if let Err(e) = limits::validate_path(req.path) {
        return Ok(AppendResult::invalid(&e));
    }
    if req.data.is_empty() && !req.close {
        return Ok(AppendResult::invalid(&CoreError::EmptyAppend));
    }
    if let Some(ct) = req.content_type
        && !req.data.is_empty()
        && let Err(e) = content_type::essence(ct)
    {
        return Ok(AppendResult::invalid(&e));
    }

    let Some(stream) = storage::find_stream(client, req.path, Lock::ForWrite)? else {
        return Ok(AppendResult::new(AppendOutcome::NotFound));
    };
    if stream.soft_deleted {
        return Ok(AppendResult::new(AppendOutcome::Gone));
    }
    if stream.expired {
        return Ok(AppendResult::new(AppendOutcome::NotFound));
    }

    // Precedence (§5.2): closed, then content type, then sequence checks.
    if stream.closed {
        let retried_close = req.producer.as_ref().filter(|p| Some(*p) == stream.closed_by.as_ref());
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
        return Ok(result.at(stream.tail, true));
    }
    if let Some(ct) = req.content_type
        && !req.data.is_empty()
        && !content_type::same(ct, &stream.content_type)
    {
        return Ok(AppendResult::new(AppendOutcome::ContentTypeMismatch).at(stream.tail, false));
    }
    let mode = content_type::mode(&stream.content_type)?;
    let messages = match messages_for(mode, &stream.content_type, req.data, Purpose::Append) {
        Ok(m) => m,
        Err(e) => return Ok(AppendResult::invalid(&e)),
    };

    let mut accepted_state = None;
    if let Some(p) = &req.producer {
        let state = storage::find_producer(client, stream.stream_id, &p.id)?;
        let echo =
            |outcome| AppendResult { producer_epoch: Some(p.epoch), ..AppendResult::new(outcome) };
        match decide(state, p.epoch, p.seq) {
            Decision::Accept { new_state } => accepted_state = Some(new_state),
            Decision::Duplicate { last_seq } => {
                let r =
                    AppendResult { producer_seq: Some(last_seq), ..echo(AppendOutcome::Duplicate) };
                return Ok(r.at(stream.tail, false));
            }
            Decision::StaleEpoch { current_epoch } => {
                let r = AppendResult {
                    producer_epoch: Some(current_epoch),
                    ..AppendResult::new(AppendOutcome::StaleEpoch)
                };
                return Ok(r.at(stream.tail, false));
            }
            Decision::SeqGap { expected, received } => {
                let r = AppendResult {
                    expected_seq: Some(expected),
                    received_seq: Some(received),
                    ..echo(AppendOutcome::SeqGap)
                };
                return Ok(r.at(stream.tail, false));
            }
            Decision::InvalidEpochSeq => {
                return Ok(echo(AppendOutcome::InvalidEpochSeq).at(stream.tail, false));
            }
        }
    }
    if let Some(seq) = req.stream_seq
        && !stream_seq_allows(stream.last_stream_seq.as_deref(), seq)
    {
        return Ok(AppendResult::new(AppendOutcome::StreamSeqConflict).at(stream.tail, false));
    }

    let tail = storage::insert_messages(client, stream.stream_id, stream.tail, messages)?;
    storage::update_stream(
        client,
        &StreamUpdate {
            stream_id: stream.stream_id,
            tail,
            close: req.close,
            closed_by: if req.close { req.producer.as_ref() } else { None },
            stream_seq: req.stream_seq,
        },
    )?;
    if let (Some(p), Some(state)) = (&req.producer, accepted_state) {
        storage::save_producer(client, stream.stream_id, &p.id, state)?;
    }
    doorbell::stream_advanced(client, stream.stream_id, req.path, tail)?;
    Ok(AppendResult {
        producer_epoch: req.producer.as_ref().map(|p| p.epoch),
        producer_seq: req.producer.as_ref().map(|p| p.seq),
        ..AppendResult::new(AppendOutcome::Ok)
    }
    .at(tail, req.close))
}

/// Turns an outcome into the error a simple SQL call raises, or its offset.
fn into_offset(path: &str, r: AppendResult) -> DsResult<String> {
    let offset = || r.next_offset.map(|o| o.to_string()).unwrap_or_default();
    match r.outcome {
        AppendOutcome::Ok | AppendOutcome::Duplicate | AppendOutcome::AlreadyClosed => Ok(offset()),
        AppendOutcome::NotFound => Err(DsError::NotFound(path.to_owned())),
        AppendOutcome::Gone => Err(DsError::Gone(path.to_owned())),
        AppendOutcome::StreamClosed => {
            Err(DsError::Closed { path: path.to_owned(), final_offset: offset() })
        }
        AppendOutcome::InvalidRequest => Err(DsError::Internal(format!(
            "unmapped invalid request: {}",
            r.detail.unwrap_or_default()
        ))),
        other => Err(DsError::Rejected { path: path.to_owned(), outcome: other.name() }),
    }
}

/// Validates a body against its stream up front, so simple calls raise the
/// precise SQLSTATE rather than an outcome.
fn simple_append(path: &str, data: &[u8], json_only: bool) -> DsResult<String> {
    limits::validate_path(path)?;
    if data.is_empty() {
        return Err(CoreError::EmptyAppend.into());
    }
    Spi::connect_mut(|client| {
        if let Some(s) = storage::find_stream(client, path, Lock::None)?
            .filter(|s| !s.expired && !s.soft_deleted)
        {
            let mode = content_type::mode(&s.content_type)?;
            if json_only && mode != Mode::Json {
                return Err(DsError::ContentTypeMismatch {
                    path: path.to_owned(),
                    stream_type: s.content_type,
                    given: "application/json (jsonb argument)".into(),
                });
            }
            messages_for(mode, &s.content_type, data, Purpose::Append)?;
        }
        let r = execute(
            client,
            AppendRequest {
                path,
                data,
                content_type: None,
                stream_seq: None,
                producer: None,
                close: false,
            },
        )?;
        into_offset(path, r)
    })
}

/// Appends bytes; returns the new tail offset.
#[pg_extern(name = "append", security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_bytea(path: &str, data: &[u8]) -> Result<String, ErrorReport> {
    Ok(simple_append(path, data, false)?)
}

/// Appends text (UTF-8 bytes); returns the new tail offset.
#[pg_extern(name = "append", security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_text(path: &str, data: &str) -> Result<String, ErrorReport> {
    Ok(simple_append(path, data.as_bytes(), false)?)
}

/// Appends JSON to a JSON stream (a top-level array is one level of
/// messages, as over HTTP); returns the new tail offset.
#[pg_extern(name = "append", security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn append_jsonb(path: &str, data: pgrx::JsonB) -> Result<String, ErrorReport> {
    let text = serde_json::to_vec(&data.0).map_err(|e| DsError::Internal(e.to_string()))?;
    Ok(simple_append(path, &text, true)?)
}

/// Closes a stream (idempotent); returns its final offset.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn close(path: &str) -> Result<String, ErrorReport> {
    limits::validate_path(path).map_err(DsError::from)?;
    let r = Spi::connect_mut(|client| {
        execute(
            client,
            AppendRequest {
                path,
                data: &[],
                content_type: None,
                stream_seq: None,
                producer: None,
                close: true,
            },
        )
    })?;
    Ok(into_offset(path, r)?)
}

/// The full-fidelity append used by the sidecar: every protocol outcome of
/// §5.2, §5.2.1 and §5.3 comes back as one row, never as an error.
#[allow(clippy::too_many_arguments)]
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn try_append(
    path: &str,
    data: &[u8],
    content_type: default!(Option<&str>, "NULL"),
    stream_seq: default!(Option<&str>, "NULL"),
    producer_id: default!(Option<&str>, "NULL"),
    producer_epoch: default!(Option<i64>, "NULL"),
    producer_seq: default!(Option<i64>, "NULL"),
    close: default!(bool, false),
) -> Result<
    TableIterator<
        'static,
        (
            name!(outcome, String),
            name!(next_offset, Option<String>),
            name!(closed, bool),
            name!(producer_epoch, Option<i64>),
            name!(producer_seq, Option<i64>),
            name!(expected_seq, Option<i64>),
            name!(received_seq, Option<i64>),
            name!(sqlstate, Option<String>),
            name!(detail, Option<String>),
        ),
    >,
    ErrorReport,
> {
    let r = match ProducerClaim::from_parts(producer_id, producer_epoch, producer_seq) {
        Err(e) => AppendResult::invalid(&e),
        Ok(producer) => Spi::connect_mut(|client| {
            execute(client, AppendRequest { path, data, content_type, stream_seq, producer, close })
        })?,
    };
    Ok(TableIterator::once(r.into_row()))
}

type OutcomeRow = (
    String,
    Option<String>,
    bool,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

impl AppendResult {
    fn into_row(self) -> OutcomeRow {
        (
            self.outcome.name().to_owned(),
            self.next_offset.map(|o| o.to_string()),
            self.closed,
            self.producer_epoch,
            self.producer_seq,
            self.expected_seq,
            self.received_seq,
            self.sqlstate,
            self.detail,
        )
    }
}

/// Many appends in ONE transaction (group commit for the sidecar): element
/// `i` of every array is one `ds.try_append` call, carried out in array
/// order, with its own outcome row (`idx` = `i`, 1-based). Protocol outcomes
/// never raise, so one bad append never fails its neighbours; all arrays must
/// have the same length.
#[allow(clippy::too_many_arguments)]
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn try_append_batch(
    paths: Vec<Option<String>>,
    datas: Array<'_, &[u8]>,
    content_types: Vec<Option<String>>,
    stream_seqs: Vec<Option<String>>,
    producer_ids: Vec<Option<String>>,
    producer_epochs: Vec<Option<i64>>,
    producer_seqs: Vec<Option<i64>>,
    closes: Vec<Option<bool>>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(idx, i32),
            name!(outcome, String),
            name!(next_offset, Option<String>),
            name!(closed, bool),
            name!(producer_epoch, Option<i64>),
            name!(producer_seq, Option<i64>),
            name!(expected_seq, Option<i64>),
            name!(received_seq, Option<i64>),
            name!(sqlstate, Option<String>),
            name!(detail, Option<String>),
        ),
    >,
    ErrorReport,
> {
    let datas: Vec<Option<&[u8]>> = datas.iter().collect();
    let n = paths.len();
    let lengths = [
        datas.len(),
        content_types.len(),
        stream_seqs.len(),
        producer_ids.len(),
        producer_epochs.len(),
        producer_seqs.len(),
        closes.len(),
    ];
    if lengths.iter().any(|&l| l != n) {
        return Err(DsError::Invalid(CoreError::InvalidProducer(
            "try_append_batch needs arrays of equal length".into(),
        ))
        .into());
    }
    let rows = Spi::connect_mut(|client| -> DsResult<Vec<_>> {
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            let path = paths[i].as_deref().unwrap_or("");
            let data = datas[i].unwrap_or(&[]);
            let r = match ProducerClaim::from_parts(
                producer_ids[i].as_deref(),
                producer_epochs[i],
                producer_seqs[i],
            ) {
                Err(e) => AppendResult::invalid(&e),
                Ok(producer) => execute(
                    client,
                    AppendRequest {
                        path,
                        data,
                        content_type: content_types[i].as_deref(),
                        stream_seq: stream_seqs[i].as_deref(),
                        producer,
                        close: closes[i].unwrap_or(false),
                    },
                )?,
            };
            let (a, b, c, d, e, f, g, h, j) = r.into_row();
            rows.push((i as i32 + 1, a, b, c, d, e, f, g, h, j));
        }
        Ok(rows)
    })?;
    Ok(TableIterator::new(rows))
}
