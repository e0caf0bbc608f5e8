//! Reading: `ds.read` (rows, for SQL users) and `ds.read_chunk` (one
//! response body, for the sidecar), both per §5.6.
//!
//! A read first takes the stream row, then only returns messages below the
//! tail that row shows. Appends commit data and tail together, so everything
//! below that tail is committed and visible: a read sees a gap-free prefix
//! even when it straddles other commits.

use ds_core::acl::Privilege;
use ds_core::content_type::{self, Mode};
use ds_core::{Offset, ReadFrom, json};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::acl;
use crate::error::{DsError, DsResult};
use crate::gucs;
use crate::storage::{self, Lock, StoredMessage, StreamRow};
use crate::streams::live_stream;

/// Opens a stream for reading and restarts its sliding TTL (on a primary;
/// a hot standby cannot write, see [`touch`]).
fn open_for_read(
    client: &mut SpiClient<'_>,
    path: &str,
    from: Option<&str>,
) -> DsResult<(StreamRow, Offset)> {
    acl::check_path(client, path, Privilege::Read)?;
    let from = ReadFrom::parse(from)?;
    let stream = live_stream(client, path, Lock::None)?;
    if stream.ttl_seconds.is_some() && !storage::in_recovery() {
        storage::touch_stream(client, stream.stream_id)?;
    }
    // `-1` starts at the earliest retained offset; a named offset below it
    // was dropped by retention (SD410).
    let start = match from {
        ReadFrom::Start => stream.retained_from,
        other => other.resolve(stream.tail),
    };
    crate::retention::check_retained(path, &stream, start)?;
    Ok((stream, start))
}

/// A message clipped to `[from, limit)`: byte streams may be read from
/// inside a stored chunk, and an inherited chunk ends at the fork point
/// (a byte sub-offset fork); JSON messages are never split.
fn clip(mode: Mode, m: StoredMessage, from: Offset) -> Option<(Offset, Vec<u8>)> {
    let StoredMessage { start, mut data, limit } = m;
    let keep = usize::try_from(limit.0.saturating_sub(start.0)).unwrap_or(usize::MAX);
    if keep < data.len() {
        if mode == Mode::Json {
            return None;
        }
        data.truncate(keep);
    }
    if start >= from {
        return Some((start, data));
    }
    let skip = usize::try_from(from.0 - start.0).expect("a chunk is below 1 GiB");
    if mode == Mode::Json || skip >= data.len() {
        return None;
    }
    Some((from, data.split_off(skip)))
}

/// The stream's messages from `from`, clipped to what a reader sees (see
/// [`clip`]): at most `budget` bytes past `from` (never less than one
/// message) and at most `max_rows` messages. One statement, one snapshot.
pub(crate) fn visible_messages(
    client: &SpiClient<'_>,
    stream: &StreamRow,
    from: Offset,
    budget: i64,
    max_rows: Option<i64>,
) -> DsResult<Vec<(Offset, Vec<u8>)>> {
    let mode = content_type::mode(&stream.content_type)?;
    let chain = storage::chain(client, stream)?;
    // One more row than asked: the first may start before `from` and be dropped.
    let rows = max_rows.map(|n| n.saturating_add(1));
    let mut parts: Vec<(Offset, Vec<u8>)> =
        storage::read_messages(client, &chain, from, stream.tail, budget, rows)?
            .into_iter()
            .filter_map(|m| clip(mode, m, from))
            .collect();
    if let Some(n) = max_rows {
        parts.truncate(usize::try_from(n).unwrap_or(0));
    }
    Ok(parts)
}

/// The bytes of `parts` back to back (one copy; none for a single part).
fn concat(parts: Vec<(Offset, Vec<u8>)>) -> Vec<u8> {
    if parts.len() == 1 {
        return parts.into_iter().next().map(|(_, d)| d).unwrap_or_default();
    }
    let mut body = Vec::with_capacity(parts.iter().map(|(_, d)| d.len()).sum());
    for (_, d) in &parts {
        body.extend_from_slice(d);
    }
    body
}

/// The messages of a stream from `from_offset`: one row per JSON message or
/// per stored chunk of a byte stream, with the offset to resume after it.
/// At most `max_rows` rows, capped (and defaulted) by `ds.read_max_rows`, and
/// about `ds.read_chunk_max_bytes` bytes (never less than one row): page on
/// from the last row's `next_offset`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn read(
    path: &str,
    from_offset: default!(Option<&str>, "'-1'"),
    max_rows: default!(Option<i64>, "NULL"),
) -> Result<
    TableIterator<
        'static,
        (name!(start_offset, String), name!(next_offset, String), name!(data, Vec<u8>)),
    >,
    ErrorReport,
> {
    crate::tune_malloc_if_enabled();
    let rows = Spi::connect_mut(|client| -> DsResult<Vec<_>> {
        let (stream, start) = open_for_read(client, path, from_offset)?;
        // Bounded like a chunk: callers page on with the last next_offset.
        let budget = (stream.tail.as_i64() - start.as_i64()).clamp(1, gucs::read_chunk_max_bytes());
        let cap = gucs::read_max_rows();
        let max_rows = Some(max_rows.map_or(cap, |n| n.clamp(0, cap)));
        Ok(visible_messages(client, &stream, start, budget, max_rows)?
            .into_iter()
            .map(|(at, data)| {
                let next = Offset(at.0 + data.len() as u64);
                (at.to_string(), next.to_string(), data)
            })
            .collect())
    })?;
    Ok(TableIterator::new(rows))
}

/// One response body from `from_offset`, at most about `max_bytes` long
/// (clamped to `ds.read_chunk_max_bytes`; never less than one stored
/// message, at most `ds.max_messages_per_append` messages): a JSON array for JSON streams,
/// raw bytes otherwise. `up_to_date` when it reaches the tail; `closed` only
/// when it reaches the tail of a closed stream.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn read_chunk(
    path: &str,
    from_offset: default!(Option<&str>, "'-1'"),
    max_bytes: default!(Option<i64>, "NULL"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(body, Vec<u8>),
            name!(next_offset, String),
            name!(up_to_date, bool),
            name!(closed, bool),
            name!(content_type, String),
            name!(stream_id, i64),
        ),
    >,
    ErrorReport,
> {
    crate::tune_malloc_if_enabled();
    let row = Spi::connect_mut(|client| -> DsResult<_> {
        let (stream, start) = open_for_read(client, path, from_offset)?;
        let mode = content_type::mode(&stream.content_type)?;
        let budget =
            max_bytes.unwrap_or_else(gucs::read_chunk_bytes).clamp(1, gucs::read_chunk_max_bytes());
        // Rows cost far more memory than their bytes when messages are tiny.
        let max_rows = i64::try_from(gucs::max_messages()).unwrap_or(i64::MAX);
        let parts = visible_messages(client, &stream, start, budget, Some(max_rows))?;
        let next = parts.last().map_or(start, |(at, d)| Offset(at.0 + d.len() as u64));
        let body = if mode == Mode::Json {
            json::join_messages(parts.iter().map(|(_, d)| d.as_slice()))
        } else {
            concat(parts)
        };
        let up_to_date = next == stream.tail;
        Ok((
            body,
            next.to_string(),
            up_to_date,
            stream.closed && up_to_date,
            stream.content_type,
            stream.stream_id,
        ))
    })?;
    Ok(TableIterator::once(row))
}

/// Most paths one `ds.touch` call takes.
const MAX_TOUCH_PATHS: usize = 10_000;

/// Restarts the sliding TTL of the streams at `paths`, as a read of each
/// would on the primary: what a sidecar forwards, in batches, for the reads
/// its hot standbys served (a standby cannot write). Each path needs the
/// `read` privilege, like a read: checked as the caller (42501 when it
/// lacks it), or, when `as_roles` is given, path `i` as role `as_roles[i]`
/// (which the caller must be allowed to `SET ROLE` to); then entries that
/// role may not read are skipped instead of failing the batch. Missing,
/// expired and deleted streams and streams without TTL are skipped; rows
/// an appender holds are skipped too (the append restarts the clock).
/// Returns the number of streams whose TTL was restarted. At most 10,000
/// paths per call (54000 beyond); 25006 on a standby.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn touch(
    paths: Option<Vec<Option<String>>>,
    as_roles: default!(Option<Vec<Option<String>>>, "NULL"),
) -> Result<i64, ErrorReport> {
    let Some(paths) = paths else {
        return Err(DsError::Invalid(ds_core::Error::InvalidArguments(
            "ds.touch needs an array of paths, not NULL".into(),
        ))
        .into());
    };
    storage::require_primary("ds.touch")?;
    if paths.len() > MAX_TOUCH_PATHS {
        return Err(DsError::LimitExceeded(format!(
            "ds.touch takes at most {MAX_TOUCH_PATHS} paths per call, not {}",
            paths.len()
        ))
        .into());
    }
    if as_roles.as_ref().is_some_and(|r| r.len() != paths.len()) {
        return Err(DsError::Invalid(ds_core::Error::InvalidArguments(
            "ds.touch needs as many as_roles as paths".into(),
        ))
        .into());
    }
    let me = acl::caller();
    let touched = Spi::connect_mut(|client| -> DsResult<i64> {
        let mut ids = Vec::with_capacity(paths.len());
        for (i, path) in paths.iter().enumerate() {
            let path = path.as_deref().unwrap_or("");
            ds_core::limits::validate_path(path)?;
            match as_roles.as_ref().map(|r| r[i].as_deref()) {
                None => acl::check_path(client, path, Privilege::Read)?,
                Some(name) => {
                    // NULL: as the caller; a role the caller may not become
                    // (or that no longer exists) reads nothing.
                    let role = match name {
                        None => Some(me),
                        Some(name) => acl::role_oid(name).filter(|&r| acl::may_become(me, r)),
                    };
                    let allowed = match role {
                        Some(role) => acl::allows(client, role, path, Privilege::Read)?,
                        None => false,
                    };
                    if !allowed {
                        continue;
                    }
                }
            }
            match live_stream(client, path, Lock::None) {
                Ok(s) if s.ttl_seconds.is_some() => ids.push(s.stream_id),
                Ok(_) | Err(DsError::NotFound(_) | DsError::Gone(_)) => {}
                Err(e) => return Err(e),
            }
        }
        ids.sort_unstable();
        ids.dedup();
        storage::touch_streams(client, ids)
    })?;
    Ok(touched)
}
