//! Retention (issue 13): per-stream policies by age and by bytes
//! (`ds.set_retention`, `ds.reset_retention`), server defaults
//! (`ds.retention_max_age`, `ds.retention_max_bytes`), and the trim that
//! carries them out (`ds.trim`, and every maintenance pass).
//!
//! A trim of one stream is one transaction: it takes the stream's
//! maintenance lock (rotation takes it too, so no segment is written from
//! rows the trim is deciding about), locks the stream row, reads the forks
//! below it and its stored units, asks `ds_core::retention::cut` where to
//! cut, deletes whole segments and hot rows below the cut and raises
//! `retained_from` to it. Reads from below `retained_from` fail with SD410
//! (HTTP 410); `-1` starts at it.

use ds_core::Offset;
use ds_core::acl::Privilege;
use ds_core::retention::{self as rules, Stream};
use pgrx::datum::Interval;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use crate::acl;
use crate::error::{DsError, DsResult};
use crate::maintenance::Cursor;
use crate::storage::retention::{self as sql, Dropped};
use crate::storage::{self, Lock, StreamRow};
use crate::streams::live_stream;

/// Server-wide default age limit in seconds for streams without a policy of
/// their own; 0: none.
pub static DEFAULT_MAX_AGE: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Server-wide default byte limit in kB for streams without a policy of
/// their own; 0: none.
pub static DEFAULT_MAX_KB: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Debug hook for crash tests: a trim sleeps this long between deleting the
/// data and raising `retained_from` (inside its transaction).
pub static DEBUG_TRIM_PAUSE_MS: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Most stored units (segments, hot rows) one trim of one stream looks at:
/// bounds the transaction; the next trim goes on from there.
const MAX_UNITS: i64 = 100_000;

/// `field4` of the maintenance lock's tag ("dr"; enqueue uses "ds",
/// subscriptions "dt").
const LOCK_SPACE: u16 = 0x6472;

/// Registers the retention settings (from `gucs::init`).
pub fn define_gucs() {
    GucRegistry::define_int_guc(
        c"ds.retention_max_age",
        c"Default retention age for streams without a policy of their own (0: none).",
        c"Rotated segments older than this are dropped by the maintenance worker; hot rows carry no time and are not dropped by age.",
        &DEFAULT_MAX_AGE,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"ds.retention_max_bytes",
        c"Default retention size for streams without a policy of their own (0: none).",
        c"The maintenance worker drops a stream's oldest segments and hot rows while at least this much stays readable.",
        &DEFAULT_MAX_KB,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_KB,
    );
    GucRegistry::define_int_guc(
        c"ds.debug_trim_pause_ms",
        c"Debug only: pause inside a trim between deleting data and raising retained_from.",
        c"Superuser-settable; for crash tests.",
        &DEBUG_TRIM_PAUSE_MS,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
}

/// The defaults as (max age seconds, max bytes), `None` when off.
fn defaults() -> (Option<i64>, Option<i64>) {
    let age = i64::from(DEFAULT_MAX_AGE.get());
    let kb = i64::from(DEFAULT_MAX_KB.get());
    ((age > 0).then_some(age), (kb > 0).then_some(kb * 1024))
}

/// Fails with SD410 when a read of `path` starts below what it retains.
pub fn check_retained(path: &str, stream: &StreamRow, start: Offset) -> DsResult<()> {
    if start < stream.retained_from {
        return Err(DsError::NotRetained {
            path: path.to_owned(),
            offset: start.to_string(),
            earliest: stream.retained_from.to_string(),
        });
    }
    Ok(())
}

/// The transaction-level maintenance lock of a stream: rotation and trim of
/// one stream never overlap. With `wait` false, returns false instead of
/// waiting.
pub fn lock_maintenance(stream_id: i64, wait: bool) -> bool {
    let tag = crate::enqueue::extension_lock_tag(LOCK_SPACE, stream_id as u64);
    // SAFETY: a transaction-level heavyweight lock on a tag we own.
    let got = unsafe {
        pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as pg_sys::LOCKMODE, false, !wait)
    };
    got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// The outcome of one trim.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Trimmed {
    pub dropped: Dropped,
    /// The earliest retained position after the trim (None: skipped).
    pub retained_from: Option<i64>,
}

/// Applies a stream's policy once, in the caller's transaction. With
/// `wait` false (the worker) a stream another transaction holds is skipped
/// instead of waited for.
pub fn trim_stream(client: &mut SpiClient<'_>, stream_id: i64, wait: bool) -> DsResult<Trimmed> {
    // The SQL below reads tail_pos: this transaction's appends must be in it.
    crate::tails::write_now(client)?;
    if !lock_maintenance(stream_id, wait) {
        return Ok(Trimmed::default());
    }
    let (default_age, default_bytes) = defaults();
    let Some(t) = sql::lock_target(client, stream_id, !wait, default_age, default_bytes)? else {
        return Ok(Trimmed::default());
    };
    let fork_floor = if t.fork_count > 0 {
        rules::fork_floor(stream_id, &sql::descendants(client, stream_id)?)
    } else {
        None
    };
    let units = if t.max_age_seconds.is_some() || t.max_bytes.is_some() {
        sql::units(client, stream_id, t.max_age_seconds, MAX_UNITS)?
    } else {
        Vec::new()
    };
    let stream = Stream {
        tail: t.tail,
        retained_from: t.retained_from,
        own_start: t.own_start,
        max_bytes: t.max_bytes,
        fork_floor,
    };
    let Some(cut) = rules::cut(&stream, &units) else {
        return Ok(Trimmed { dropped: Dropped::default(), retained_from: Some(t.retained_from) });
    };
    let pause =
        std::time::Duration::from_millis(u64::try_from(DEBUG_TRIM_PAUSE_MS.get()).unwrap_or(0));
    let stored_from = t.retained_from.max(t.own_start);
    let dropped = sql::drop_below(client, stream_id, cut, stored_from, pause)?;
    Ok(Trimmed { dropped, retained_from: Some(cut) })
}

/// The next `limit` streams a trim may cut, round-robin from `cursor`.
pub fn candidates(
    client: &mut SpiClient<'_>,
    cursor: &mut Cursor,
    limit: i64,
) -> DsResult<Vec<i64>> {
    let (age, bytes) = defaults();
    cursor.next(
        limit,
        |id| *id,
        |after, upto, n| sql::candidates(client, after, upto, n, age, bytes),
    )
}

/// Sets the retention policy of the stream at `path`: data older than
/// `max_age` (rotated segments only: hot rows carry no time) and data
/// beyond the newest `max_bytes` is dropped by the maintenance worker (or
/// `ds.trim`), whole segments and hot rows at a message boundary, never
/// what a fork still reads. NULL: no limit of that kind (both NULL: keep
/// everything, whatever the server defaults say). Needs `admin` on the path.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_retention(
    path: Option<&str>,
    max_age: Option<Interval>,
    max_bytes: Option<i64>,
) -> Result<(), ErrorReport> {
    storage::require_primary("ds.set_retention")?;
    let path = path.ok_or_else(|| {
        DsError::Invalid(ds_core::Error::InvalidArguments("the path must not be NULL".into()))
    })?;
    let (age, bytes) =
        rules::validate_policy(max_age.map(|a| a.as_micros()), max_bytes).map_err(DsError::from)?;
    Spi::connect_mut(|client| -> DsResult<()> {
        acl::check_path(client, path, Privilege::Admin)?;
        let stream = live_stream(client, path, Lock::ForWrite)?;
        sql::set_policy(client, stream.stream_id, age, bytes)
    })?;
    Ok(())
}

/// Removes the stream's own retention policy: the server defaults
/// (`ds.retention_max_age`, `ds.retention_max_bytes`) apply again. Needs
/// `admin` on the path.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn reset_retention(path: &str) -> Result<(), ErrorReport> {
    storage::require_primary("ds.reset_retention")?;
    Spi::connect_mut(|client| -> DsResult<()> {
        acl::check_path(client, path, Privilege::Admin)?;
        let stream = live_stream(client, path, Lock::ForWrite)?;
        sql::reset_policy(client, stream.stream_id)
    })?;
    Ok(())
}

/// The retention policy that applies to the stream at `path`: its own
/// (`source = 'stream'`) or the server defaults (`'default'`), NULL limits
/// meaning none; and its earliest retained offset. Needs `read` on the path.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn retention(
    path: &str,
) -> Result<
    TableIterator<
        'static,
        (
            name!(max_age, Option<Interval>),
            name!(max_bytes, Option<i64>),
            name!(source, String),
            name!(earliest_offset, String),
        ),
    >,
    ErrorReport,
> {
    let row = Spi::connect_mut(|client| -> DsResult<_> {
        acl::check_path(client, path, Privilege::Read)?;
        let stream = live_stream(client, path, Lock::None)?;
        let (policy, source) = match sql::policy(client, stream.stream_id)? {
            Some(own) => (own, "stream"),
            None => (defaults(), "default"),
        };
        let age = policy
            .0
            .map(|s| {
                let days = i32::try_from(s / 86_400).unwrap_or(i32::MAX);
                Interval::new(0, days, (s % 86_400) * 1_000_000)
            })
            .transpose()
            .map_err(|e| DsError::Internal(e.to_string()))?;
        Ok((age, policy.1, source.to_owned(), stream.retained_from.to_string()))
    })?;
    Ok(TableIterator::once(row))
}

/// Applies the stream's retention policy now, exactly as the maintenance
/// worker does (waiting for a transaction that holds the stream instead of
/// skipping it). Returns what was dropped and the earliest retained offset.
/// Needs `admin` on the path.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn trim(
    path: &str,
) -> Result<
    TableIterator<
        'static,
        (name!(segments, i64), name!(rows, i64), name!(bytes, i64), name!(earliest_offset, String)),
    >,
    ErrorReport,
> {
    storage::require_primary("ds.trim")?;
    let (done, earliest) = Spi::connect_mut(|client| -> DsResult<_> {
        acl::check_path(client, path, Privilege::Admin)?;
        let s = live_stream(client, path, Lock::None)?;
        let done = trim_stream(client, s.stream_id, true)?;
        Ok((done, done.retained_from.unwrap_or(s.retained_from.as_i64())))
    })?;
    let d = done.dropped;
    Ok(TableIterator::once((d.segments, d.rows, d.bytes, Offset::from_i64(earliest).to_string())))
}
