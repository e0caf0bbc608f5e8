//! Maintenance shared by SQL and the background worker: rotation of the hot
//! log into segments (`ds.rotate`), expiry, producer-state retention, and
//! `ds.stats` to see their effect.

use ds_core::acl::Privilege;
use ds_core::notification::Announcement;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::acl;
use crate::error::DsResult;
use crate::gucs;
use crate::storage::{self, Lock, Rotated};
use crate::streams::{live_stream, retire_stream};

/// Rotates one stream with the current settings.
pub fn rotate_stream(client: &mut SpiClient<'_>, stream_id: i64) -> DsResult<Rotated> {
    let s = gucs::rotation();
    storage::rotate(client, stream_id, s.hot_tail, s.target, s.max_bytes, s.pause)
}

/// Packs the cold part of a stream's hot log into segments now, exactly as
/// the background worker does (settings `ds.segment_target_bytes`,
/// `ds.hot_tail_bytes`, `ds.rotation_max_bytes`). Offsets and data read back
/// are unchanged.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn rotate(
    path: &str,
) -> Result<
    TableIterator<'static, (name!(segments, i64), name!(messages, i64), name!(bytes, i64))>,
    ErrorReport,
> {
    let done = Spi::connect_mut(|client| {
        acl::check_path(client, path, Privilege::Admin)?;
        let s = live_stream(client, path, Lock::None)?;
        rotate_stream(client, s.stream_id)
    })?;
    Ok(TableIterator::once((done.segments, done.messages, done.bytes)))
}

/// Streams whose cold part fills at least one segment.
pub fn rotation_candidates(client: &SpiClient<'_>, limit: i64) -> DsResult<Vec<i64>> {
    let s = gucs::rotation();
    let rows = client.select(
        "SELECT stream_id FROM ds.streams s \
         WHERE s.tail_pos - coalesce((SELECT min(start_pos) FROM ds.messages m \
                                      WHERE m.stream_id = s.stream_id), s.tail_pos) >= $1 + $2 \
         ORDER BY stream_id LIMIT $3",
        None,
        &[s.hot_tail.into(), s.target.into(), limit.into()],
    )?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.get::<i64>(1)?.expect("stream_id"));
    }
    Ok(out)
}

/// Streams past their TTL or expiry that still hold a path.
pub fn expired_streams(client: &SpiClient<'_>, limit: i64) -> DsResult<Vec<String>> {
    let rows = client.select(
        "SELECT path FROM ds.streams WHERE path IS NOT NULL AND NOT soft_deleted \
           AND (expires_at <= now() OR last_access + ttl_seconds * interval '1 second' <= now()) \
         LIMIT $1",
        None,
        &[limit.into()],
    )?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.get::<String>(1)?.expect("path"));
    }
    Ok(out)
}

/// Deletes an expired stream (kept, pathless, if forks read it) and wakes its
/// readers; false if it is no longer expired (refreshed meanwhile).
pub fn expire(client: &mut SpiClient<'_>, path: &str) -> DsResult<bool> {
    let Some(s) = storage::find_stream(client, path, Lock::ForWrite)? else { return Ok(false) };
    if !s.expired || s.soft_deleted {
        return Ok(false);
    }
    retire_stream(client, s, true)?;
    storage::notify(client, &Announcement::Deleted { path: path.to_owned() }.line())?;
    Ok(true)
}

/// Forgets producers idle longer than `ds.producer_ttl_seconds` (if set).
pub fn forget_idle_producers(client: &mut SpiClient<'_>) -> DsResult<u64> {
    let ttl = gucs::PRODUCER_TTL_SECONDS.get();
    if ttl <= 0 {
        return Ok(0);
    }
    let t = client.update(
        "DELETE FROM ds.producers WHERE updated_at < now() - $1 * interval '1 second'",
        None,
        &[i64::from(ttl).into()],
    )?;
    Ok(t.len() as u64)
}

/// Per-stream storage: hot rows and bytes, segments and bytes, tail, last
/// rotation, forks. Reads the tables, so it costs a scan of each.
#[pg_extern(security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
fn stats() -> Result<
    TableIterator<
        'static,
        (
            name!(path, Option<String>),
            name!(stream_id, i64),
            name!(next_offset, String),
            name!(hot_rows, i64),
            name!(hot_bytes, i64),
            name!(segments, i64),
            name!(segment_bytes, i64),
            name!(last_rotation, Option<TimestampWithTimeZone>),
            name!(fork_count, i32),
            name!(soft_deleted, bool),
        ),
    >,
    ErrorReport,
> {
    let rows = Spi::connect(|client| -> DsResult<Vec<_>> {
        let table = client.select(
            "SELECT s.path, s.stream_id, s.tail_pos, \
                    coalesce(h.n, 0), coalesce(h.b, 0), coalesce(g.n, 0), coalesce(g.b, 0), g.last, \
                    s.fork_count, s.soft_deleted \
             FROM ds.streams s \
             LEFT JOIN (SELECT stream_id, count(*) n, sum(octet_length(data))::bigint b \
                        FROM ds.messages GROUP BY stream_id) h USING (stream_id) \
             LEFT JOIN (SELECT stream_id, count(*) n, sum(end_pos - start_pos)::bigint b, \
                               max(created_at) last \
                        FROM ds.segments GROUP BY stream_id) g USING (stream_id) \
             ORDER BY s.stream_id",
            None,
            &[],
        )?;
        // Only the streams the caller may read; pathless ones (kept for
        // forks) only for those who pass every check.
        let me = acl::caller();
        let everything = acl::exempt(client, me)?;
        let mut out = Vec::new();
        for r in table {
            let path: Option<String> = r.get(1)?;
            let visible = everything
                || match &path {
                    Some(p) => acl::allows(client, me, p, Privilege::Read)?,
                    None => false,
                };
            if !visible {
                continue;
            }
            out.push((
                path,
                r.get(2)?.unwrap_or(0),
                ds_core::Offset::from_i64(r.get(3)?.unwrap_or(0)).to_string(),
                r.get(4)?.unwrap_or(0),
                r.get(5)?.unwrap_or(0),
                r.get(6)?.unwrap_or(0),
                r.get(7)?.unwrap_or(0),
                r.get(8)?,
                r.get(9)?.unwrap_or(0),
                r.get(10)?.unwrap_or(false),
            ));
        }
        Ok(out)
    })?;
    Ok(TableIterator::new(rows))
}
