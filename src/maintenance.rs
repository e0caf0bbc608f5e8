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

/// Rotates one stream with the current settings, after any trim of it in
/// flight (the maintenance lock, see `retention.rs`). With `wait` false
/// (the worker), a stream being trimmed is skipped this time.
pub fn rotate_stream(client: &mut SpiClient<'_>, stream_id: i64, wait: bool) -> DsResult<Rotated> {
    if !crate::retention::lock_maintenance(stream_id, wait) {
        return Ok(Rotated::default());
    }
    storage::rotate(client, stream_id, &gucs::rotation())
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
    storage::require_primary("ds.rotate")?;
    let done = Spi::connect_mut(|client| {
        acl::check_path(client, path, Privilege::Admin)?;
        let s = live_stream(client, path, Lock::None)?;
        rotate_stream(client, s.stream_id, true)
    })?;
    Ok(TableIterator::once((done.segments, done.messages, done.bytes)))
}

/// Where the next maintenance pass continues: the last stream id it
/// visited. Each pass takes the next `limit` candidates after it and wraps
/// around, so a candidate that makes no progress (or fails every time) costs
/// one turn per round and never starves the streams after it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub i64);

impl Cursor {
    /// Up to `limit` ids from `query(after, upto)` (ids in `(after, upto]`,
    /// ascending), starting after the cursor and wrapping around once.
    pub(crate) fn next<T>(
        &mut self,
        limit: i64,
        id: impl Fn(&T) -> i64,
        mut query: impl FnMut(i64, i64, i64) -> DsResult<Vec<T>>,
    ) -> DsResult<Vec<T>> {
        let mut out = query(self.0, i64::MAX, limit)?;
        let left = limit - out.len() as i64;
        if left > 0 && self.0 > 0 {
            out.extend(query(i64::MIN, self.0, left)?);
        }
        self.0 = out.last().map_or(0, id);
        Ok(out)
    }
}

/// The next `limit` streams whose cold part fills at least one segment,
/// round-robin from `cursor`.
pub fn rotation_candidates(
    client: &mut SpiClient<'_>,
    cursor: &mut Cursor,
    limit: i64,
) -> DsResult<Vec<i64>> {
    // The SQL below reads tail_pos: this transaction's appends must be in it.
    crate::tails::write_now(client)?;
    let s = gucs::rotation();
    cursor.next(
        limit,
        |id| *id,
        |after, upto, n| {
            let rows = client.select(
                "SELECT stream_id FROM ds.streams s \
             WHERE s.stream_id OPERATOR(pg_catalog.>) $3 \
               AND s.stream_id OPERATOR(pg_catalog.<=) $4 \
               AND (s.tail_pos OPERATOR(pg_catalog.-) \
                    coalesce((SELECT pg_catalog.min(start_pos) FROM ds.messages m \
                              WHERE m.stream_id OPERATOR(pg_catalog.=) s.stream_id), s.tail_pos)) \
                   OPERATOR(pg_catalog.>=) ($1 OPERATOR(pg_catalog.+) $2) \
             ORDER BY stream_id LIMIT $5",
                None,
                &[s.hot_tail.into(), s.target.into(), after.into(), upto.into(), n.into()],
            )?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.get::<i64>(1)?.expect("stream_id"));
            }
            Ok(out)
        },
    )
}

/// The next `limit` streams past their TTL or expiry that still hold a path
/// (id, path), round-robin from `cursor`. The test never raises, whatever a
/// row holds (see `storage::EXPIRED`), so one bad row cannot stop expiry.
pub fn expired_streams(
    client: &SpiClient<'_>,
    cursor: &mut Cursor,
    limit: i64,
) -> DsResult<Vec<(i64, String)>> {
    let query = format!(
        "SELECT stream_id, path FROM ds.streams \
         WHERE path IS NOT NULL AND NOT soft_deleted AND {} \
           AND stream_id OPERATOR(pg_catalog.>) $1 AND stream_id OPERATOR(pg_catalog.<=) $2 \
         ORDER BY stream_id LIMIT $3",
        *storage::EXPIRED
    );
    cursor.next(
        limit,
        |(id, _)| *id,
        |after, upto, n| {
            let rows = client.select(&query, None, &[after.into(), upto.into(), n.into()])?;
            let mut out = Vec::new();
            for row in rows {
                out.push((
                    row.get::<i64>(1)?.expect("stream_id"),
                    row.get::<String>(2)?.expect("path"),
                ));
            }
            Ok(out)
        },
    )
}

/// Deletes an expired stream (kept, pathless, if forks read it) and wakes its
/// readers; false if it is no longer expired (refreshed meanwhile).
pub fn expire(client: &mut SpiClient<'_>, path: &str) -> DsResult<bool> {
    let Some(s) = storage::find_stream(client, path, Lock::ForWrite)? else { return Ok(false) };
    if !s.expired || s.soft_deleted {
        return Ok(false);
    }
    retire_stream(client, path, s, true)?;
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
        "DELETE FROM ds.producers WHERE updated_at OPERATOR(pg_catalog.<) \
           (pg_catalog.now() OPERATOR(pg_catalog.-) ($1 OPERATOR(pg_catalog.*) interval '1 second'))",
        None,
        &[i64::from(ttl).into()],
    )?;
    Ok(t.len() as u64)
}

/// Deletes the path grants of roles that no longer exist: `DROP ROLE` does
/// not know them (they are rows, not catalog privileges), and an OID left
/// behind would give its grants to a role that gets that OID one day.
/// Returns how many it deleted.
pub fn forget_grants_of_dropped_roles(client: &mut SpiClient<'_>) -> DsResult<u64> {
    let t = client.update(
        "DELETE FROM ds.path_grants g WHERE NOT EXISTS \
           (SELECT FROM pg_catalog.pg_authid a \
            WHERE a.oid OPERATOR(pg_catalog.=) g.grantee::pg_catalog.oid)",
        None,
        &[],
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
    let rows = Spi::connect_mut(|client| -> DsResult<Vec<_>> {
        // The SQL below reads tail_pos: this transaction's appends must be in it.
        crate::tails::write_now(client)?;
        let table = client.select(
            "SELECT s.path, s.stream_id, s.tail_pos, \
                    coalesce(h.n, 0::bigint), coalesce(h.b, 0::bigint), coalesce(g.n, 0::bigint), \
                    coalesce(g.b, 0::bigint), g.last, s.fork_count, s.soft_deleted \
             FROM ds.streams s \
             LEFT JOIN (SELECT stream_id, pg_catalog.count(*) n, \
                               pg_catalog.sum(pg_catalog.octet_length(data))::bigint b \
                        FROM ds.messages GROUP BY stream_id) h \
                    ON h.stream_id OPERATOR(pg_catalog.=) s.stream_id \
             LEFT JOIN (SELECT stream_id, pg_catalog.count(*) n, \
                               pg_catalog.sum(end_pos OPERATOR(pg_catalog.-) start_pos)::bigint b, \
                               pg_catalog.max(created_at) last \
                        FROM ds.segments GROUP BY stream_id) g \
                    ON g.stream_id OPERATOR(pg_catalog.=) s.stream_id \
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
