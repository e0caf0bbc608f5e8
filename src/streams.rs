//! Stream lifecycle: `ds.create` (PUT semantics, §5.1), `ds.fork` (§4.2),
//! `ds.head`, `ds.delete` (with soft delete and cascading cleanup of forks).

use ds_core::acl::Privilege;
use ds_core::content_type::{self, Mode, OCTET_STREAM};
use ds_core::json::Purpose;
use ds_core::notification::Announcement;
use ds_core::registry::Change;
use ds_core::{Error as CoreError, Offset, limits};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::acl;
use crate::append::messages_for;
use crate::error::{DsError, DsResult};
use crate::gucs;
use crate::quota::Quotas;
use crate::read::visible_messages;
use crate::registry;
use crate::storage::{self, ForkOrigin, Lock, NewStream, StreamRow, StreamUpdate};

/// Creates a stream, or confirms one that exists with the same configuration
/// (content type, TTL / expiry, closure). Returns `created = false` in the
/// second case and raises 42710 if the configuration differs.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn create(
    path: &str,
    content_type: default!(Option<&str>, "'application/octet-stream'"),
    ttl_seconds: default!(Option<i64>, "NULL"),
    expires_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    closed: default!(bool, false),
    body: default!(Option<&[u8]>, "NULL"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(created, bool),
            name!(next_offset, String),
            name!(content_type, String),
            name!(closed, bool),
        ),
    >,
    ErrorReport,
> {
    let request = CreateRequest {
        path,
        content_type: Some(content_type.unwrap_or(OCTET_STREAM)),
        ttl_seconds,
        expires_at,
        closed,
        fork: None,
    };
    let (created, row) = create_stream(&request, body.unwrap_or_default())?;
    Ok(TableIterator::once((created, row.tail.to_string(), row.content_type, row.closed)))
}

/// Creates a fork of `source` (§4.2): it inherits the source's data below
/// the fork point without copying it, then takes its own appends. The fork
/// point is `fork_offset` (default: the source's tail) plus `fork_sub_offset`
/// messages (JSON) or bytes (other types). Content type, TTL and expiry are
/// inherited unless given; a fork starts open. Idempotent like `ds.create`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn fork(
    path: &str,
    source: &str,
    fork_offset: default!(Option<&str>, "NULL"),
    fork_sub_offset: default!(i64, 0),
    content_type: default!(Option<&str>, "NULL"),
    ttl_seconds: default!(Option<i64>, "NULL"),
    expires_at: default!(Option<TimestampWithTimeZone>, "NULL"),
    closed: default!(bool, false),
    body: default!(Option<&[u8]>, "NULL"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(created, bool),
            name!(next_offset, String),
            name!(content_type, String),
            name!(closed, bool),
        ),
    >,
    ErrorReport,
> {
    limits::validate_path(source).map_err(DsError::from)?;
    let offset = fork_offset.map(Offset::parse).transpose().map_err(DsError::from)?;
    if fork_sub_offset < 0 {
        return Err(DsError::from(CoreError::InvalidFork(format!(
            "sub-offset {fork_sub_offset} is negative"
        )))
        .into());
    }
    let request = CreateRequest {
        path,
        content_type,
        ttl_seconds,
        expires_at,
        closed,
        fork: Some(ForkRequest { source, offset, sub_offset: fork_sub_offset }),
    };
    let (created, row) = create_stream(&request, body.unwrap_or_default())?;
    Ok(TableIterator::once((created, row.tail.to_string(), row.content_type, row.closed)))
}

/// A `PUT`: a plain stream, or a fork.
struct CreateRequest<'a> {
    path: &'a str,
    /// `None` only for forks: inherit the source's.
    content_type: Option<&'a str>,
    ttl_seconds: Option<i64>,
    expires_at: Option<TimestampWithTimeZone>,
    closed: bool,
    fork: Option<ForkRequest<'a>>,
}

struct ForkRequest<'a> {
    source: &'a str,
    offset: Option<Offset>,
    sub_offset: i64,
}

fn create_stream(req: &CreateRequest<'_>, body: &[u8]) -> DsResult<(bool, StreamRow)> {
    storage::require_primary(if req.fork.is_some() { "ds.fork" } else { "ds.create" })?;
    limits::validate_path(req.path)?;
    registry::refuse_reserved(req.path)?;
    if let Some(ct) = req.content_type {
        content_type::essence(ct)?;
    }
    limits::validate_ttl(req.ttl_seconds, req.expires_at.is_some())?;
    if let Some(at) = req.expires_at {
        limits::validate_expires_at(registry::unix_micros(at))?;
    }

    Spi::connect_mut(|client| {
        let me = acl::caller();
        acl::require(client, me, req.path, Privilege::Create)?;
        if let Some(f) = &req.fork {
            acl::require(client, me, req.path, Privilege::Fork)?;
            acl::require(client, me, f.source, Privilege::Read)?;
        }
        // Two rounds at most: an expired stream at the path is retired first.
        for _ in 0..2 {
            if let Some(existing) = storage::find_stream(client, req.path, Lock::ForWrite)? {
                if existing.soft_deleted {
                    return Err(conflict(
                        req.path,
                        "the path belongs to a deleted stream kept for its forks",
                    ));
                }
                if existing.expired {
                    retire_stream(client, req.path, existing, true)?;
                    continue;
                }
                let differences = config_differences(req, &existing);
                if differences.is_empty() {
                    return Ok((false, existing));
                }
                return Err(conflict(req.path, &differences.join(", ")));
            }
            let (wanted, origin_count) = match &req.fork {
                None => (plain_stream(req)?, None),
                Some(f) => {
                    let (wanted, source_id) = fork_stream(client, req, f)?;
                    (wanted, Some(source_id))
                }
            };
            let mode = content_type::mode(&wanted.content_type)?;
            let messages = messages_for(mode, &wanted.content_type, body, Purpose::Create)?;
            let bytes = messages.iter().map(|m| m.len() as i64).sum();
            Quotas::load(client, &[me])?
                .charge_stream(me, bytes)
                .map_err(DsError::QuotaExceeded)?;
            let Some(stream_id) = storage::insert_stream(client, &wanted)? else {
                continue; // created concurrently: compare with it in the next round
            };
            if let Some(source_id) = origin_count {
                storage::add_forks(client, source_id, 1)?;
            }
            let start = wanted.fork.as_ref().map_or(Offset::ZERO, |f| f.pos);
            // Subscriptions see the new stream from its start (a fork: from
            // what it inherited), in this transaction: its first append is
            // already pending work.
            crate::subscriptions::link_new_stream(client, req.path, start.as_i64())?;
            registry::record(client, req.path, Change::Insert(registry::entry(&wanted)))?;
            let tail = storage::insert_messages(client, stream_id, start, messages)?;
            storage::update_streams(
                client,
                &[StreamUpdate {
                    stream_id,
                    tail,
                    closed: req.closed,
                    closed_by: None,
                    last_stream_seq: None,
                }],
            )?;
            let row = storage::find_stream_by_id(client, stream_id, Lock::None)?
                .expect("the stream was just created");
            return Ok((true, row));
        }
        Err(DsError::Internal("stream creation did not settle in two rounds".into()))
    })
}

fn conflict(path: &str, differences: &str) -> DsError {
    DsError::Conflict { path: path.to_owned(), differences: differences.to_owned() }
}

fn plain_stream<'a>(req: &CreateRequest<'a>) -> DsResult<NewStream<'a>> {
    Ok(NewStream {
        path: req.path,
        content_type: req.content_type.unwrap_or(OCTET_STREAM).to_owned(),
        ttl_seconds: req.ttl_seconds,
        expires_at: req.expires_at,
        closed: req.closed,
        fork: None,
        owner_role: Some(acl::caller()),
        retained_from: Offset::ZERO,
    })
}

/// Resolves a new fork against its source, which stays locked until commit
/// so it cannot be deleted before its fork count is raised.
fn fork_stream<'a>(
    client: &mut SpiClient<'_>,
    req: &CreateRequest<'a>,
    f: &ForkRequest<'a>,
) -> DsResult<(NewStream<'a>, i64)> {
    let source = storage::find_stream(client, f.source, Lock::ForWrite)?
        .filter(|s| !s.expired)
        .ok_or_else(|| DsError::NotFound(f.source.to_owned()))?;
    if source.soft_deleted {
        return Err(conflict(req.path, "the source was deleted and is kept only for its forks"));
    }
    if let Some(ct) = req.content_type
        && !content_type::same(ct, &source.content_type)
    {
        return Err(DsError::ContentTypeMismatch {
            path: f.source.to_owned(),
            stream_type: source.content_type,
            given: ct.to_owned(),
        });
    }
    let anchor = f.offset.unwrap_or(source.tail);
    if anchor > source.tail {
        return Err(CoreError::InvalidFork(format!(
            "offset {anchor} is beyond the source's tail {}",
            source.tail
        ))
        .into());
    }
    if anchor < source.retained_from {
        return Err(DsError::NotRetained {
            path: f.source.to_owned(),
            offset: anchor.to_string(),
            earliest: source.retained_from.to_string(),
        });
    }
    let pos = sub_offset_position(client, &source, anchor, f.sub_offset)?;
    // §4.2: with no expiry of its own, a fork inherits the source's.
    let (ttl_seconds, expires_at) = if req.ttl_seconds.is_none() && req.expires_at.is_none() {
        (source.ttl_seconds, source.expires_at)
    } else {
        (req.ttl_seconds, req.expires_at)
    };
    let content_type = req.content_type.map_or(source.content_type, str::to_owned);
    let origin = ForkOrigin {
        source_id: source.stream_id,
        source_path: f.source.to_owned(),
        offset: anchor,
        sub_offset: f.sub_offset,
        pos,
    };
    let wanted = NewStream {
        path: req.path,
        content_type,
        ttl_seconds,
        expires_at,
        closed: req.closed,
        fork: Some(origin),
        owner_role: Some(acl::caller()),
        // It reads what its source still holds, no earlier.
        retained_from: source.retained_from,
    };
    Ok((wanted, source.stream_id))
}

/// The position `sub` messages (JSON) or bytes (otherwise) past `anchor`,
/// never past the next data boundary (§4.2).
fn sub_offset_position(
    client: &mut SpiClient<'_>,
    source: &StreamRow,
    anchor: Offset,
    sub: i64,
) -> DsResult<Offset> {
    if sub == 0 {
        return Ok(anchor);
    }
    let mode = content_type::mode(&source.content_type)?;
    let sub_len = usize::try_from(sub).unwrap_or(usize::MAX);
    // The scan is bounded like a read: in messages and in bytes.
    let max_messages = gucs::max_messages();
    if mode == Mode::Json && sub_len > max_messages {
        return Err(DsError::LimitExceeded(format!(
            "fork sub-offset {sub} exceeds the maximum of {max_messages} messages \
             (ds.max_messages_per_append)"
        )));
    }
    let rest = source.tail.as_i64() - anchor.as_i64();
    let budget = rest.clamp(1, gucs::read_chunk_max_bytes());
    let rows = if mode == Mode::Json { sub + 1 } else { 1 };
    let messages = visible_messages(client, source, anchor, budget, Some(rows))?;
    let overshoot = |what: String| -> DsResult<Offset> {
        if budget < rest {
            return Err(DsError::LimitExceeded(format!(
                "fork sub-offset {sub} needs a scan of more than {budget} bytes \
                 (ds.read_chunk_max_bytes)"
            )));
        }
        Err(CoreError::InvalidFork(what).into())
    };
    if mode == Mode::Json {
        return match messages.get(sub_len) {
            Some((start, _)) => Ok(*start),
            None if messages.len() == sub_len => {
                let (start, data) = messages.last().expect("sub > 0 messages");
                Ok(Offset(start.0 + data.len() as u64))
            }
            None => overshoot(format!(
                "sub-offset {sub} is past the {} message(s) after the fork offset",
                messages.len()
            )),
        };
    }
    match messages.first() {
        Some((start, data)) if sub_len <= data.len() => Ok(Offset(start.0 + sub_len as u64)),
        _ => overshoot(format!("sub-offset {sub} is past the next data boundary")),
    }
}

/// What differs between a create request and the existing stream.
fn config_differences(req: &CreateRequest<'_>, existing: &StreamRow) -> Vec<&'static str> {
    let mut out = Vec::new();
    if let Some(ct) = req.content_type
        && !content_type::same(ct, &existing.content_type)
    {
        out.push("content type");
    }
    // A fork created without expiry inherited its source's; any is fine then.
    let inherits_expiry =
        req.fork.is_some() && req.ttl_seconds.is_none() && req.expires_at.is_none();
    if !inherits_expiry {
        if req.ttl_seconds != existing.ttl_seconds {
            out.push("ttl_seconds");
        }
        if req.expires_at != existing.expires_at {
            out.push("expires_at");
        }
    }
    if req.closed != existing.closed {
        out.push("closed");
    }
    match (&req.fork, &existing.fork) {
        (None, None) => {}
        (Some(f), Some(origin)) => {
            if f.source != origin.source_path {
                out.push("forked from");
            }
            if f.offset.is_some_and(|o| o != origin.offset) {
                out.push("fork offset");
            }
            if f.sub_offset != origin.sub_offset {
                out.push("fork sub-offset");
            }
        }
        _ => out.push("forked from"),
    }
    out
}

/// Deletes a stream, or keeps it (soft-deleted) while forks read it; then
/// releases its source, deleting up the chain every soft-deleted source
/// whose last fork this was.
pub(crate) fn retire_stream(
    client: &mut SpiClient<'_>,
    path: &str,
    stream: StreamRow,
    release_path: bool,
) -> DsResult<()> {
    // Enqueues in flight finish first; what they left unsequenced goes
    // with the stream (nobody can read past its tail any more).
    crate::enqueue::lock_out_enqueuers(path, crate::apply::LockWait::Wait);
    storage::discard_pending(client, stream.stream_id)?;
    crate::subscriptions::unlink_stream(client, path)?;
    // A soft-deleted stream is gone for clients (410): listed as deleted
    // now, and nothing is recorded when its last fork releases it.
    registry::record(client, path, Change::Delete)?;
    if stream.fork_count > 0 {
        return storage::soft_delete_stream(client, stream.stream_id, release_path);
    }
    storage::delete_stream(client, stream.stream_id)?;
    let mut origin = stream.fork;
    while let Some(f) = origin {
        let Some(source) = storage::find_stream_by_id(client, f.source_id, Lock::ForWrite)? else {
            break;
        };
        let remaining = storage::add_forks(client, source.stream_id, -1)?;
        if remaining > 0 || !source.soft_deleted {
            break;
        }
        storage::delete_stream(client, source.stream_id)?;
        origin = source.fork;
    }
    Ok(())
}

/// Looks up a live (existing, unexpired) stream: 42704 if there is none,
/// 55006 (HTTP 410) if it was deleted but is kept for its forks.
pub fn live_stream(client: &mut SpiClient<'_>, path: &str, lock: Lock) -> DsResult<StreamRow> {
    limits::validate_path(path)?;
    match storage::find_stream(client, path, lock)? {
        Some(s) if s.soft_deleted => Err(DsError::Gone(path.to_owned())),
        Some(s) if !s.expired => Ok(s),
        _ => Err(DsError::NotFound(path.to_owned())),
    }
}

/// Metadata of a stream, with its earliest retained offset (where a read
/// from `-1` starts). Does not restart a sliding TTL (§5.1).
#[pg_extern(security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
fn head(
    path: &str,
) -> Result<
    TableIterator<
        'static,
        (
            name!(stream_id, i64),
            name!(content_type, String),
            name!(next_offset, String),
            name!(closed, bool),
            name!(ttl_seconds, Option<i64>),
            name!(expires_at, Option<TimestampWithTimeZone>),
            name!(earliest_offset, String),
        ),
    >,
    ErrorReport,
> {
    let s = Spi::connect_mut(|client| {
        acl::check_path(client, path, Privilege::Read)?;
        live_stream(client, path, Lock::None)
    })?;
    Ok(TableIterator::once((
        s.stream_id,
        s.content_type,
        s.tail.to_string(),
        s.closed,
        s.ttl_seconds,
        s.expires_at,
        s.retained_from.to_string(),
    )))
}

/// Deletes a stream with all its data and producer state. A stream that
/// forks still read is soft-deleted instead (§4.2) and cleaned up with its
/// last fork.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn delete(path: &str) -> Result<(), ErrorReport> {
    storage::require_primary("ds.delete")?;
    Spi::connect_mut(|client| {
        acl::check_path(client, path, Privilege::Delete)?;
        registry::refuse_registered(client, path)?;
        let s = live_stream(client, path, Lock::ForWrite)?;
        retire_stream(client, path, s, false)?;
        storage::notify(client, &Announcement::Deleted { path: path.to_owned() }.line())
    })?;
    Ok(())
}
