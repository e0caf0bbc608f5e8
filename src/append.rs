//! Appending and closing: `ds.try_append` (outcomes as data, for the sidecar)
//! and the simple `ds.append` overloads and `ds.close` (errors raised).

use ds_core::acl::Privilege;
use ds_core::content_type::{self, Mode};
use ds_core::json::{self, Purpose};
use ds_core::outcome::AppendOutcome;
use ds_core::producer::ProducerClaim;
use ds_core::{Error as CoreError, Offset, limits};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::acl;
use crate::apply::{self, LockWait};
use crate::error::{DsError, DsResult, core_sqlstate, sqlstate_text};
use crate::gucs;
use crate::storage::{self, Lock};
use crate::tails;

/// One append or close request.
pub struct AppendRequest<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
    /// `None`: accept whatever the stream's type is (SQL callers).
    pub content_type: Option<&'a str>,
    pub stream_seq: Option<&'a str>,
    pub producer: Option<ProducerClaim>,
    pub close: bool,
    /// The role whose `append` privilege counts; `None`: the caller.
    pub as_role: Option<pg_sys::Oid>,
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
    pub(crate) fn new(outcome: AppendOutcome) -> Self {
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

    pub(crate) fn invalid(e: &CoreError) -> Self {
        AppendResult {
            sqlstate: Some(sqlstate_text(core_sqlstate(e))),
            detail: Some(e.to_string()),
            ..Self::new(AppendOutcome::InvalidRequest)
        }
    }

    /// A request refused for lack of privilege; `detail` says why.
    pub(crate) fn forbidden(detail: String) -> Self {
        AppendResult {
            sqlstate: Some(sqlstate_text(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE)),
            detail: Some(detail),
            ..Self::new(AppendOutcome::Forbidden)
        }
    }

    /// A request that would pass a storage quota; `detail` says which.
    pub(crate) fn quota_exceeded(detail: String) -> Self {
        AppendResult {
            sqlstate: Some(sqlstate_text(PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED)),
            detail: Some(detail),
            ..Self::new(AppendOutcome::QuotaExceeded)
        }
    }

    pub(crate) fn at(mut self, tail: Offset, closed: bool) -> Self {
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
        Mode::Json => json::split_messages(data, purpose, gucs::json_limits()),
        Mode::Text if std::str::from_utf8(data).is_err() => {
            Err(CoreError::InvalidUtf8(content_type.to_owned()))
        }
        Mode::Text | Mode::Bytes => Ok(vec![data.to_vec()]),
    }
}

/// Carries out one request inside the caller's transaction.
pub fn execute(client: &mut SpiClient<'_>, req: AppendRequest<'_>) -> DsResult<AppendResult> {
    let mut results = apply::execute_all(client, std::slice::from_ref(&req), LockWait::Wait)?;
    Ok(results.pop().expect("one result per request"))
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
        AppendOutcome::Forbidden => Err(acl::denied(acl::caller(), path, Privilege::Append)),
        AppendOutcome::QuotaExceeded => Err(DsError::QuotaExceeded(r.detail.unwrap_or_default())),
        AppendOutcome::InvalidRequest => Err(DsError::Internal(format!(
            "unmapped invalid request: {}",
            r.detail.unwrap_or_default()
        ))),
        other => Err(DsError::Rejected { path: path.to_owned(), outcome: other.name() }),
    }
}

/// Validates a body against its stream up front, so simple calls raise the
/// precise SQLSTATE rather than an outcome.
pub(crate) fn simple_append(path: &str, data: &[u8], json_only: bool) -> DsResult<String> {
    simple_append_as(path, data, json_only, None)
}

/// `simple_append` with the privileges of `as_role` (None: the caller).
pub(crate) fn simple_append_as(
    path: &str,
    data: &[u8],
    json_only: bool,
    as_role: Option<pg_sys::Oid>,
) -> DsResult<String> {
    storage::require_primary("ds.append")?;
    limits::validate_path(path)?;
    crate::registry::refuse_reserved(path)?;
    if data.is_empty() {
        return Err(CoreError::EmptyAppend.into());
    }
    Spi::connect_mut(|client| {
        acl::require(client, as_role.unwrap_or_else(acl::caller), path, Privilege::Append)?;
        let known = match tails::written_row(path) {
            Some(row) => Some(row),
            None => storage::find_stream(client, path, Lock::None)?,
        };
        if let Some(s) = known.filter(|s| !s.expired && !s.soft_deleted) {
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
                as_role,
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
fn append_jsonb(path: &str, data: crate::jsonb_text::JsonbText) -> Result<String, ErrorReport> {
    Ok(simple_append(path, &data.0, true)?)
}

/// Closes a stream (idempotent); returns its final offset.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn close(path: &str) -> Result<String, ErrorReport> {
    storage::require_primary("ds.close")?;
    limits::validate_path(path).map_err(DsError::from)?;
    crate::registry::refuse_reserved(path)?;
    let r = Spi::connect_mut(|client| {
        acl::check_path(client, path, Privilege::Append)?;
        execute(
            client,
            AppendRequest {
                path,
                data: &[],
                content_type: None,
                stream_seq: None,
                producer: None,
                close: true,
                as_role: None,
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
    storage::require_primary("ds.try_append")?;
    let r = match ProducerClaim::from_parts(producer_id, producer_epoch, producer_seq) {
        Err(e) => AppendResult::invalid(&e),
        Ok(producer) => Spi::connect_mut(|client| {
            execute(
                client,
                AppendRequest {
                    path,
                    data,
                    content_type,
                    stream_seq,
                    producer,
                    close,
                    as_role: None,
                },
            )
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
/// have the same length. The streams are locked in path order by one
/// statement; with `skip_locked`, the requests to a stream another
/// transaction holds get outcome `busy` (nothing done) instead of waiting.
/// `as_roles[i]`, when given, is the role whose privileges request `i` is
/// checked with (the sidecar's group commit carries requests of many
/// tokens); the caller must be allowed to `SET ROLE` to it, or the request
/// is `forbidden`.
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
    skip_locked: default!(bool, false),
    as_roles: default!(Option<Vec<Option<String>>>, "NULL"),
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
    storage::require_primary("ds.try_append_batch")?;
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
    let as_roles = as_roles.unwrap_or_else(|| vec![None; n]);
    if lengths.iter().chain([&as_roles.len()]).any(|&l| l != n) {
        return Err(DsError::Invalid(CoreError::InvalidArguments(
            "try_append_batch needs arrays of equal length".into(),
        ))
        .into());
    }
    // A malformed producer triple is that request's outcome; the others go
    // through as one set.
    let mut claims = Vec::with_capacity(n);
    let mut requests = Vec::with_capacity(n);
    let mut positions = Vec::with_capacity(n);
    let me = acl::caller();
    for i in 0..n {
        let path = paths[i].as_deref().unwrap_or("");
        let as_role = match as_roles[i].as_deref().map(|name| (name, acl::role_oid(name))) {
            None => Ok(None),
            Some((_, Some(role))) if acl::may_become(me, role) => Ok(Some(role)),
            Some((name, Some(_))) => Err(format!(
                "role {:?} may not act as role {name:?} (grant it membership, as for SET ROLE)",
                acl::role_name(me)
            )),
            Some((name, None)) => Err(format!("role {name:?} does not exist")),
        };
        match (
            as_role,
            ProducerClaim::from_parts(
                producer_ids[i].as_deref(),
                producer_epochs[i],
                producer_seqs[i],
            ),
        ) {
            (Err(detail), _) => claims.push(Some(AppendResult::forbidden(detail))),
            (_, Err(e)) => claims.push(Some(AppendResult::invalid(&e))),
            (Ok(as_role), Ok(producer)) => {
                claims.push(None);
                positions.push(i);
                requests.push(AppendRequest {
                    path,
                    data: datas[i].unwrap_or(&[]),
                    content_type: content_types[i].as_deref(),
                    stream_seq: stream_seqs[i].as_deref(),
                    producer,
                    close: closes[i].unwrap_or(false),
                    as_role,
                });
            }
        }
    }
    let wait = if skip_locked { LockWait::SkipLocked } else { LockWait::Wait };
    let applied = Spi::connect_mut(|client| apply::execute_all(client, &requests, wait))?;
    for (i, result) in positions.into_iter().zip(applied) {
        claims[i] = Some(result);
    }
    let rows: Vec<_> = claims
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let (a, b, c, d, e, f, g, h, j) = r.expect("every request has a result").into_row();
            (i as i32 + 1, a, b, c, d, e, f, g, h, j)
        })
        .collect();
    Ok(TableIterator::new(rows))
}
