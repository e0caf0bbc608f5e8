//! The SQL of retention: `ds.retention` (per-stream policies) and the trim
//! of a stream (`ds.streams.retained_from`, whole segments and hot rows).
//! Same rules as the rest of storage: parameterised, schema-qualified, kept
//! plans. Decides nothing (the cut is `ds_core::retention::cut`).
//!
//! A trim's statements all go through `update` (not read-only): SPI then
//! takes a new snapshot per statement, so what a trim reads after it locked
//! the stream row includes every fork and rotation committed before.

use ds_core::limits::MAX_TTL_SECONDS;
use ds_core::retention::{Descendant, Unit};
use pgrx::spi::SpiClient;

use super::{select, update};
use crate::error::DsResult;

thread_local! {
    /// Set once this backend saw the retention columns (they never go away).
    static PRESENT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this database's catalog has `ds.streams.retained_from` and
/// `ds.retention` (0.2.0). Between installing a new package and `ALTER
/// EXTENSION ... UPDATE`, the new library runs on the 0.1.0 tables, and
/// every function must work there as before (`scripts/upgrade-test.sh`).
/// Looked up until seen, then remembered for the backend.
pub fn catalog_has_retention(client: &SpiClient<'_>) -> DsResult<bool> {
    if PRESENT.with(std::cell::Cell::get) {
        return Ok(true);
    }
    let table = select(
        client,
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute \
                        WHERE attrelid OPERATOR(pg_catalog.=) 'ds.streams'::pg_catalog.regclass \
                          AND attname OPERATOR(pg_catalog.=) 'retained_from' \
                          AND NOT attisdropped)",
        Some(1),
        &[],
    )?;
    let present = table.first().get_one::<bool>()?.unwrap_or(false);
    PRESENT.with(|p| p.set(present));
    Ok(present)
}

/// A stream about to be trimmed, as its locked row and policy say.
#[derive(Debug, Clone)]
pub struct TrimTarget {
    pub tail: i64,
    pub retained_from: i64,
    /// Its divergence point if it is a fork, else 0.
    pub own_start: i64,
    pub fork_count: i32,
    pub max_age_seconds: Option<i64>,
    pub max_bytes: Option<i64>,
}

/// The effective policy of a stream row `s` joined with its `ds.retention`
/// row `r`: its own when it has one, else the server defaults ($d_age,
/// $d_bytes; NULL when off).
fn effective(column: &str, default: &str) -> String {
    format!(
        "(CASE WHEN r.stream_id IS NULL THEN {default} ELSE r.{column} END)",
        default = default,
        column = column
    )
}

/// Locks the stream row (`FOR NO KEY UPDATE`, so appends and fork creation
/// wait for the trim and the trim for them; with `skip_locked` a held row is
/// skipped instead) and reads what a trim needs. `None`: no such live
/// stream, or skipped.
pub fn lock_target(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    skip_locked: bool,
    default_age: Option<i64>,
    default_bytes: Option<i64>,
) -> DsResult<Option<TrimTarget>> {
    let wait = if skip_locked { " SKIP LOCKED" } else { "" };
    let sql = format!(
        "SELECT s.tail_pos, s.retained_from, coalesce(s.fork_pos, 0::bigint), s.fork_count, \
                {age}, {bytes} \
         FROM ds.streams s \
         LEFT JOIN ds.retention r ON r.stream_id OPERATOR(pg_catalog.=) s.stream_id \
         WHERE s.stream_id OPERATOR(pg_catalog.=) $1 AND NOT s.soft_deleted \
         FOR NO KEY UPDATE OF s{wait}",
        age = effective("max_age_seconds", "$2::bigint"),
        bytes = effective("max_bytes", "$3::bigint"),
    );
    let table = update(
        client,
        &sql,
        Some(1),
        &[stream_id.into(), default_age.into(), default_bytes.into()],
    )?;
    let Some(row) = table.into_iter().next() else { return Ok(None) };
    Ok(Some(TrimTarget {
        tail: row.get(1)?.expect("tail_pos is NOT NULL"),
        retained_from: row.get(2)?.expect("retained_from is NOT NULL"),
        own_start: row.get(3)?.expect("coalesce"),
        fork_count: row.get(4)?.expect("fork_count is NOT NULL"),
        max_age_seconds: row.get(5)?,
        max_bytes: row.get(6)?,
    }))
}

/// Every stream forked (directly or through other forks) from `stream_id`,
/// soft-deleted ones included: they are kept for forks that still read
/// through them.
pub fn descendants(client: &mut SpiClient<'_>, stream_id: i64) -> DsResult<Vec<Descendant>> {
    let table = update(
        client,
        "WITH RECURSIVE d(stream_id, fork_source, fork_pos, retained_from) AS ( \
             SELECT stream_id, fork_source, fork_pos, retained_from FROM ds.streams \
             WHERE fork_source OPERATOR(pg_catalog.=) $1 \
             UNION \
             SELECT s.stream_id, s.fork_source, s.fork_pos, s.retained_from \
             FROM d JOIN ds.streams s ON s.fork_source OPERATOR(pg_catalog.=) d.stream_id) \
         SELECT stream_id, fork_source, fork_pos, retained_from FROM d",
        None,
        &[stream_id.into()],
    )?;
    let mut out = Vec::with_capacity(table.len());
    for row in table {
        out.push(Descendant {
            stream_id: row.get(1)?.expect("stream_id"),
            source: row.get(2)?.expect("fork_source of a fork"),
            fork_pos: row.get(3)?.expect("fork_pos of a fork"),
            retained_from: row.get(4)?.expect("retained_from is NOT NULL"),
        });
    }
    Ok(out)
}

/// The first `limit` stored units of a stream (segments and hot rows) in
/// position order, without their data; a segment is `old` when it was
/// written more than `max_age_seconds` ago (capped like TTLs, so the
/// arithmetic never overflows).
pub fn units(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    max_age_seconds: Option<i64>,
    limit: i64,
) -> DsResult<Vec<Unit>> {
    let sql = format!(
        "SELECT u.start_pos, u.end_pos, u.old FROM ( \
             (SELECT start_pos, end_pos, \
                     coalesce(created_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) \
                         (least($2::bigint, {MAX_TTL_SECONDS}) OPERATOR(pg_catalog.*) interval '1 second')), \
                         false) AS old \
              FROM ds.segments WHERE stream_id OPERATOR(pg_catalog.=) $1 \
              ORDER BY start_pos LIMIT $3) \
             UNION ALL \
             (SELECT start_pos, start_pos OPERATOR(pg_catalog.+) pg_catalog.octet_length(data), false \
              FROM ds.messages WHERE stream_id OPERATOR(pg_catalog.=) $1 \
              ORDER BY start_pos LIMIT $3)) u \
         ORDER BY u.start_pos LIMIT $3"
    );
    let table =
        update(client, &sql, None, &[stream_id.into(), max_age_seconds.into(), limit.into()])?;
    let mut out = Vec::with_capacity(table.len());
    for row in table {
        out.push(Unit {
            start: row.get(1)?.expect("start_pos"),
            end: row.get(2)?.expect("end_pos"),
            old: row.get(3)?.expect("coalesce"),
        });
    }
    Ok(out)
}

/// What one trim dropped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub segments: i64,
    pub rows: i64,
    pub bytes: i64,
}

/// Deletes the segments and hot rows of a stream that end at or below
/// `cut` (a unit boundary), and records `cut` as its earliest retained
/// position, in the caller's transaction. Only units wholly below the cut
/// are deleted, so nothing above it can be lost whatever the units are.
/// `stored_from` is where the stream's stored data starts (its units are
/// contiguous from there), so the bytes dropped are `cut - stored_from`.
/// `pause` sleeps between the deletes and the update of the stream row (a
/// debug hook for crash tests).
pub fn drop_below(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    cut: i64,
    stored_from: i64,
    pause: std::time::Duration,
) -> DsResult<Dropped> {
    crate::tails::forget_row(stream_id);
    // Plain deletes (no RETURNING): the counts are SPI's processed rows.
    let segments = update(
        client,
        "DELETE FROM ds.segments \
         WHERE stream_id OPERATOR(pg_catalog.=) $1 AND end_pos OPERATOR(pg_catalog.<=) $2",
        None,
        &[stream_id.into(), cut.into()],
    )?
    .len();
    let rows = update(
        client,
        "DELETE FROM ds.messages \
         WHERE stream_id OPERATOR(pg_catalog.=) $1 AND start_pos OPERATOR(pg_catalog.<) $2 \
           AND (start_pos OPERATOR(pg_catalog.+) pg_catalog.octet_length(data)) \
               OPERATOR(pg_catalog.<=) $2",
        None,
        &[stream_id.into(), cut.into()],
    )?
    .len();
    if !pause.is_zero() {
        std::thread::sleep(pause);
    }
    update(
        client,
        "UPDATE ds.streams SET retained_from = $2 WHERE stream_id OPERATOR(pg_catalog.=) $1",
        None,
        &[stream_id.into(), cut.into()],
    )?;
    Ok(Dropped {
        segments: i64::try_from(segments).unwrap_or(i64::MAX),
        rows: i64::try_from(rows).unwrap_or(i64::MAX),
        bytes: (cut - stored_from).max(0),
    })
}

/// The next `limit` streams with ids in `(after, upto]` whose policy (own,
/// or the defaults) may let a trim cut: more readable bytes than the limit,
/// or a first segment older than the age limit.
pub fn candidates(
    client: &mut SpiClient<'_>,
    after: i64,
    upto: i64,
    limit: i64,
    default_age: Option<i64>,
    default_bytes: Option<i64>,
) -> DsResult<Vec<i64>> {
    let sql = format!(
        "SELECT s.stream_id FROM ds.streams s \
         LEFT JOIN ds.retention r ON r.stream_id OPERATOR(pg_catalog.=) s.stream_id \
         WHERE s.stream_id OPERATOR(pg_catalog.>) $1 AND s.stream_id OPERATOR(pg_catalog.<=) $2 \
           AND s.path IS NOT NULL AND NOT s.soft_deleted \
           AND ({bytes} OPERATOR(pg_catalog.<) \
                    (s.tail_pos OPERATOR(pg_catalog.-) s.retained_from) \
                OR (SELECT g.created_at FROM ds.segments g \
                    WHERE g.stream_id OPERATOR(pg_catalog.=) s.stream_id \
                    ORDER BY g.start_pos LIMIT 1) \
                   OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) \
                       (least({age}, {MAX_TTL_SECONDS}) OPERATOR(pg_catalog.*) interval '1 second'))) \
         ORDER BY s.stream_id LIMIT $3",
        age = effective("max_age_seconds", "$4::bigint"),
        bytes = effective("max_bytes", "$5::bigint"),
    );
    let table = update(
        client,
        &sql,
        None,
        &[after.into(), upto.into(), limit.into(), default_age.into(), default_bytes.into()],
    )?;
    let mut out = Vec::with_capacity(table.len());
    for row in table {
        out.push(row.get::<i64>(1)?.expect("stream_id"));
    }
    Ok(out)
}

/// Stores a stream's own policy (NULL: no limit of that kind).
pub fn set_policy(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    max_age_seconds: Option<i64>,
    max_bytes: Option<i64>,
) -> DsResult<()> {
    update(
        client,
        "INSERT INTO ds.retention (stream_id, max_age_seconds, max_bytes) VALUES ($1, $2, $3) \
         ON CONFLICT (stream_id) DO UPDATE \
         SET max_age_seconds = excluded.max_age_seconds, max_bytes = excluded.max_bytes",
        None,
        &[stream_id.into(), max_age_seconds.into(), max_bytes.into()],
    )?;
    Ok(())
}

/// Removes a stream's own policy: the server defaults apply again.
pub fn reset_policy(client: &mut SpiClient<'_>, stream_id: i64) -> DsResult<()> {
    update(
        client,
        "DELETE FROM ds.retention WHERE stream_id OPERATOR(pg_catalog.=) $1",
        None,
        &[stream_id.into()],
    )?;
    Ok(())
}

/// A stream's own policy: `None` without one; else (max age, max bytes).
pub fn policy(
    client: &mut SpiClient<'_>,
    stream_id: i64,
) -> DsResult<Option<(Option<i64>, Option<i64>)>> {
    let table = update(
        client,
        "SELECT max_age_seconds, max_bytes FROM ds.retention \
         WHERE stream_id OPERATOR(pg_catalog.=) $1",
        Some(1),
        &[stream_id.into()],
    )?;
    let Some(row) = table.into_iter().next() else { return Ok(None) };
    Ok(Some((row.get(1)?, row.get(2)?)))
}
