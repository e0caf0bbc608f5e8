//! Every SQL statement the extension runs against its tables, via SPI.
//!
//! Statements are parameterised (no string formatting of values) and fully
//! qualified, because the public functions run as SECURITY DEFINER with a
//! pinned search_path and the background workers run as a superuser:
//! tables, functions and operators (`OPERATOR(pg_catalog.=)`) are all named
//! with their schema, so no object a database owner creates elsewhere (say,
//! `public.*(bigint, interval)`) is ever resolved instead, whatever
//! search_path a caller has. Every `OPERATOR(...)` has the same precedence
//! and associates left, so chained ones are parenthesised. Nothing here
//! decides protocol rules; callers do.

use std::collections::HashMap;

use ds_core::Offset;
use ds_core::producer::{ProducerClaim, ProducerState};
use pgrx::datum::{DatumWithOid, TimestampWithTimeZone};
use pgrx::spi::SpiClient;

use crate::error::{DsError, DsResult};

/// Plans of the statements below, prepared once per backend and kept
/// (`SPI_keepplan`): planning dominates the cost of these short statements.
/// A fixed set of query texts, so the leaked plans are bounded; Postgres
/// re-plans them itself after DDL on the tables.
mod plans {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use pgrx::PgOid;
    use pgrx::datum::DatumWithOid;
    use pgrx::spi::{OwnedPreparedStatement, SpiClient};

    thread_local! {
        static PLANS: RefCell<HashMap<String, &'static OwnedPreparedStatement>> =
            RefCell::new(HashMap::new());
    }

    /// The kept plan of `sql`, preparing it with the argument types of `args`.
    pub(super) fn get(
        client: &SpiClient<'_>,
        sql: &str,
        args: &[DatumWithOid<'_>],
        mutating: bool,
    ) -> pgrx::spi::Result<&'static OwnedPreparedStatement> {
        if let Some(plan) = PLANS.with(|p| p.borrow().get(sql).copied()) {
            return Ok(plan);
        }
        let oids: Vec<PgOid> = args.iter().map(|a| PgOid::from(a.oid())).collect();
        let prepared =
            if mutating { client.prepare_mut(sql, &oids)? } else { client.prepare(sql, &oids)? };
        let plan: &'static OwnedPreparedStatement = Box::leak(Box::new(prepared.keep()));
        PLANS.with(|p| p.borrow_mut().insert(sql.to_owned(), plan));
        Ok(plan)
    }

    /// While alive, kept plans run as generic plans (`plan_cache_mode =
    /// force_generic_plan`), whatever the session set: these are short keyed
    /// statements, and with the default `auto` Postgres re-plans those that
    /// take arrays at every call (a custom plan always looks cheaper for the
    /// array it is given), measured at a third of an append's time.
    ///
    /// The variable is swapped directly rather than by a `SET` clause on
    /// every function: the clause's GUC nest level cost about 6% of a
    /// single-message append. Restored on drop, also while an error unwinds,
    /// so the caller's own statements keep their setting.
    pub(crate) struct GenericPlans(std::ffi::c_int);

    impl GenericPlans {
        pub(crate) fn new() -> Self {
            // SAFETY: a plain int GUC variable of this backend, read by the
            // plan cache when it chooses a plan; nothing else holds it.
            unsafe {
                let previous = pgrx::pg_sys::plan_cache_mode;
                pgrx::pg_sys::plan_cache_mode =
                    pgrx::pg_sys::PlanCacheMode::PLAN_CACHE_MODE_FORCE_GENERIC_PLAN as _;
                Self(previous)
            }
        }
    }

    impl Drop for GenericPlans {
        fn drop(&mut self) {
            // SAFETY: as in `new`.
            unsafe { pgrx::pg_sys::plan_cache_mode = self.0 };
        }
    }
}

pub(crate) use plans::GenericPlans;

/// A read-only statement through its kept plan (also for acl.rs and
/// quota.rs, which run the SQL of their own tables).
pub(crate) fn select<'c>(
    client: &SpiClient<'c>,
    sql: &str,
    limit: Option<RowLimit>,
    args: &[DatumWithOid<'_>],
) -> pgrx::spi::Result<pgrx::spi::SpiTupleTable<'c>> {
    let _generic = GenericPlans::new();
    client.select(plans::get(client, sql, args, false)?, limit, args)
}

/// A writing statement (or a row lock) through its kept plan.
fn update<'c>(
    client: &mut SpiClient<'c>,
    sql: &str,
    limit: Option<RowLimit>,
    args: &[DatumWithOid<'_>],
) -> pgrx::spi::Result<pgrx::spi::SpiTupleTable<'c>> {
    let _generic = GenericPlans::new();
    let plan = plans::get(client, sql, args, true)?;
    client.update(plan, limit, args)
}

type RowLimit = std::os::raw::c_long;

pub mod capture;
mod direct;
mod messages;
mod pending;
pub mod registries;
pub mod retention;
pub mod subscriptions;

/// One row of `ds.streams`, with its expiry evaluated at `now()`.
#[derive(Debug, Clone)]
pub struct StreamRow {
    pub stream_id: i64,
    pub content_type: String,
    pub ttl_seconds: Option<i64>,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub tail: Offset,
    pub closed: bool,
    pub closed_by: Option<ProducerClaim>,
    pub last_stream_seq: Option<String>,
    pub expired: bool,
    pub fork: Option<ForkOrigin>,
    pub fork_count: i32,
    pub soft_deleted: bool,
    /// The role that created it (whose quota its bytes count against).
    pub owner_role: Option<pgrx::pg_sys::Oid>,
    /// Its own byte limit (`ds.set_stream_quota`).
    pub max_bytes: Option<i64>,
    /// Whether its owner has a quota (`ds.set_quota`): only then is the
    /// owner's usage read (`Quotas::load`).
    pub owner_has_quota: bool,
    /// Earliest retained position (`src/retention.rs`): reads start here.
    pub retained_from: Offset,
}

impl StreamRow {
    /// Bytes the stream holds of its own (a fork's inherited part and what
    /// retention dropped excluded).
    pub fn own_bytes(&self) -> i64 {
        let start = self.fork.as_ref().map_or(0, |f| f.pos.as_i64());
        self.tail.as_i64() - start.max(self.retained_from.as_i64())
    }
}

/// Where a fork's inherited data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkOrigin {
    pub source_id: i64,
    pub source_path: String,
    /// The offset the fork was requested at (or the source's tail then).
    pub offset: Offset,
    pub sub_offset: i64,
    /// Divergence point: positions below it are inherited.
    pub pos: Offset,
}

/// How `find_stream` treats the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Plain snapshot read.
    None,
    /// `FOR NO KEY UPDATE`: serializes writers of this stream until commit.
    ForWrite,
}

/// Whether a `ds.streams` row is expired at `now()`, as SQL. Never raises:
/// the TTL is capped at `MAX_TTL_SECONDS` before any arithmetic and only
/// `now()` is shifted, so a row written with a huge TTL (before that limit
/// existed) is merely "not expired for 100 years" instead of an overflow
/// that would fail every statement reading it.
pub static EXPIRED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "coalesce(expires_at OPERATOR(pg_catalog.<=) pg_catalog.now() \
                  OR last_access OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) \
                     (least(ttl_seconds, {max}) OPERATOR(pg_catalog.*) interval '1 second')), \
                  false)",
        max = ds_core::limits::MAX_TTL_SECONDS
    )
});

/// `STREAM_COLUMNS` for a catalog with `retained_from`, or (between a
/// package upgrade and `ALTER EXTENSION ... UPDATE`) without it.
fn stream_columns(client: &SpiClient<'_>) -> DsResult<&'static str> {
    static OLD: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| STREAM_COLUMNS.replace(", retained_from", ", 0::bigint"));
    Ok(if retention::catalog_has_retention(client)? { &STREAM_COLUMNS } else { &OLD })
}

static STREAM_COLUMNS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "stream_id, content_type, ttl_seconds, expires_at, tail_pos, closed, \
         closed_by_producer, closed_by_epoch, closed_by_seq, last_stream_seq, {expired}, \
         fork_source, fork_source_path, fork_offset, fork_sub_offset, fork_pos, fork_count, \
         soft_deleted, owner_role::pg_catalog.oid, max_bytes, \
         EXISTS (SELECT FROM ds.role_quotas q \
                 WHERE q.role::pg_catalog.oid OPERATOR(pg_catalog.=) owner_role::pg_catalog.oid), \
         retained_from",
        expired = *EXPIRED
    )
});

/// Looks a stream up by path; expired streams are returned with `expired`.
pub fn find_stream(
    client: &mut SpiClient<'_>,
    path: &str,
    lock: Lock,
) -> DsResult<Option<StreamRow>> {
    find_by(client, "path OPERATOR(pg_catalog.=) $1", path.into(), lock)
}

/// Looks a stream up by id.
pub fn find_stream_by_id(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    lock: Lock,
) -> DsResult<Option<StreamRow>> {
    find_by(client, "stream_id OPERATOR(pg_catalog.=) $1", stream_id.into(), lock)
}

fn find_by(
    client: &mut SpiClient<'_>,
    condition: &str,
    key: DatumWithOid<'_>,
    lock: Lock,
) -> DsResult<Option<StreamRow>> {
    let table = match lock {
        Lock::None => select(
            client,
            &format!("SELECT {} FROM ds.streams WHERE {condition}", stream_columns(client)?),
            Some(1),
            &[key],
        )?,
        // A row lock is a write: SPI must not run it read-only.
        Lock::ForWrite => update(
            client,
            &format!(
                "SELECT {} FROM ds.streams WHERE {condition} FOR NO KEY UPDATE",
                stream_columns(client)?
            ),
            Some(1),
            &[key],
        )?,
    };
    let Some(row) = table.into_iter().next() else { return Ok(None) };
    Ok(Some(stream_row(&row)?))
}

/// Locks the streams at `paths` (`FOR NO KEY UPDATE`, in path order, so
/// concurrent batches never deadlock on each other) and returns the ones
/// that exist, with their paths. With `skip_locked`, rows another
/// transaction holds are left out instead of waited for.
pub fn lock_streams(
    client: &mut SpiClient<'_>,
    paths: &[&str],
    skip_locked: bool,
) -> DsResult<Vec<(String, StreamRow)>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let wait = if skip_locked { " SKIP LOCKED" } else { "" };
    // One path (every SQL-level append) gets the single-row statement: its
    // kept generic plan is an index probe, where `= ANY` on a small table
    // would be re-planned at every call.
    let table = if let [path] = paths {
        update(
            client,
            &format!(
                "SELECT {}, path FROM ds.streams WHERE path OPERATOR(pg_catalog.=) $1 \
                 FOR NO KEY UPDATE{wait}",
                stream_columns(client)?
            ),
            None,
            &[(*path).into()],
        )?
    } else {
        update(
            client,
            &format!(
                "SELECT {}, path FROM ds.streams WHERE path OPERATOR(pg_catalog.=) ANY($1) \
                 ORDER BY path FOR NO KEY UPDATE{wait}",
                stream_columns(client)?
            ),
            None,
            &[paths.to_vec().into()],
        )?
    };
    let mut rows = Vec::with_capacity(paths.len());
    for row in table {
        let path: String = row.get(23)?.expect("path = ANY(...) is not NULL");
        rows.push((path, stream_row(&row)?));
    }
    Ok(rows)
}

/// Which of `paths` name a stream (live, expired or soft-deleted).
pub fn existing_paths(client: &SpiClient<'_>, paths: &[&str]) -> DsResult<Vec<String>> {
    let table = select(
        client,
        "SELECT path FROM ds.streams WHERE path OPERATOR(pg_catalog.=) ANY($1)",
        None,
        &[paths.to_vec().into()],
    )?;
    let mut found = Vec::new();
    for row in table {
        found.push(row.get::<String>(1)?.expect("path = ANY(...) is not NULL"));
    }
    Ok(found)
}

/// A row selected with `STREAM_COLUMNS` first.
fn stream_row(row: &pgrx::spi::SpiHeapTupleData<'_>) -> DsResult<StreamRow> {
    let closed_by = match (row.get::<String>(7)?, row.get::<i64>(8)?, row.get::<i64>(9)?) {
        (Some(id), Some(epoch), Some(seq)) => Some(ProducerClaim { id, epoch, seq }),
        _ => None,
    };
    let fork = match (
        row.get::<i64>(12)?,
        row.get::<String>(13)?,
        row.get::<i64>(14)?,
        row.get::<i64>(15)?,
        row.get::<i64>(16)?,
    ) {
        (Some(source_id), Some(source_path), Some(offset), Some(sub_offset), Some(pos)) => {
            Some(ForkOrigin {
                source_id,
                source_path,
                offset: Offset::from_i64(offset),
                sub_offset,
                pos: Offset::from_i64(pos),
            })
        }
        _ => None,
    };
    let mut stream = StreamRow {
        stream_id: row.get(1)?.expect("stream_id is NOT NULL"),
        content_type: row.get(2)?.expect("content_type is NOT NULL"),
        ttl_seconds: row.get(3)?,
        expires_at: row.get(4)?,
        tail: Offset::from_i64(row.get(5)?.expect("tail_pos is NOT NULL")),
        closed: row.get(6)?.expect("closed is NOT NULL"),
        closed_by,
        last_stream_seq: row.get(10)?,
        expired: row.get(11)?.expect("coalesce is never NULL"),
        fork,
        fork_count: row.get(17)?.expect("fork_count is NOT NULL"),
        soft_deleted: row.get(18)?.expect("soft_deleted is NOT NULL"),
        owner_role: row.get(19)?,
        max_bytes: row.get(20)?,
        owner_has_quota: row.get(21)?.expect("EXISTS is never NULL"),
        retained_from: Offset::from_i64(row.get(22)?.expect("retained_from is NOT NULL")),
    };
    // This transaction may have appended past what the row holds yet.
    crate::tails::overlay(&mut stream);
    Ok(stream)
}

/// Settings of a stream being created.
pub struct NewStream<'a> {
    pub path: &'a str,
    pub content_type: String,
    pub ttl_seconds: Option<i64>,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub closed: bool,
    pub fork: Option<ForkOrigin>,
    /// The creating role (see `StreamRow::owner_role`); `None` for streams
    /// the extension makes itself (registries).
    pub owner_role: Option<pgrx::pg_sys::Oid>,
    /// Earliest retained position: a fork's is its source's.
    pub retained_from: Offset,
}

/// Inserts a stream unless the path is taken; returns its id if inserted.
/// A fork starts with its tail at the divergence point.
pub fn insert_stream(client: &mut SpiClient<'_>, s: &NewStream<'_>) -> DsResult<Option<i64>> {
    let f = s.fork.as_ref();
    // Before `ALTER EXTENSION ... UPDATE` there is no retained_from (and no
    // trim): $12 goes unused.
    let (columns, values) = if retention::catalog_has_retention(client)? {
        (", retained_from", ", $12")
    } else {
        ("", "")
    };
    let table = update(
        client,
        &format!(
            "INSERT INTO ds.streams (path, content_type, ttl_seconds, expires_at, closed, \
                 fork_source, fork_source_path, fork_offset, fork_sub_offset, fork_pos, tail_pos, \
                 owner_role{columns}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, coalesce($10, 0::bigint), \
                     $11::pg_catalog.regrole{values}) \
             ON CONFLICT (path) DO NOTHING RETURNING stream_id",
        ),
        Some(1),
        &[
            s.path.into(),
            s.content_type.as_str().into(),
            s.ttl_seconds.into(),
            s.expires_at.into(),
            s.closed.into(),
            f.map(|f| f.source_id).into(),
            f.map(|f| f.source_path.as_str()).into(),
            f.map(|f| f.offset.as_i64()).into(),
            f.map(|f| f.sub_offset).into(),
            f.map(|f| f.pos.as_i64()).into(),
            s.owner_role.into(),
            s.retained_from.as_i64().into(),
        ],
    )?;
    Ok(table.into_iter().next().map(|r| r.get::<i64>(1)).transpose()?.flatten())
}

/// Adds `delta` to a stream's count of live forks; returns the new count.
pub fn add_forks(client: &mut SpiClient<'_>, stream_id: i64, delta: i32) -> DsResult<i32> {
    crate::tails::forget_row(stream_id);
    let table = update(
        client,
        "UPDATE ds.streams SET fork_count = fork_count OPERATOR(pg_catalog.+) $2 \
         WHERE stream_id OPERATOR(pg_catalog.=) $1 RETURNING fork_count",
        Some(1),
        &[stream_id.into(), delta.into()],
    )?;
    Ok(table.into_iter().next().map(|r| r.get::<i32>(1)).transpose()?.flatten().unwrap_or(0))
}

/// Keeps a deleted stream for its forks: direct use answers 410 and its path
/// stays blocked, unless `release_path` (an expired stream's path is free
/// for a new stream).
pub fn soft_delete_stream(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    release_path: bool,
) -> DsResult<()> {
    crate::tails::forget_row(stream_id);
    update(
        client,
        "UPDATE ds.streams SET soft_deleted = true, \
             path = CASE WHEN $2 THEN NULL ELSE path END \
         WHERE stream_id OPERATOR(pg_catalog.=) $1",
        None,
        &[stream_id.into(), release_path.into()],
    )?;
    Ok(())
}

/// Removes a stream and everything stored for it.
pub fn delete_stream(client: &mut SpiClient<'_>, stream_id: i64) -> DsResult<()> {
    crate::tails::forget_row(stream_id);
    for query in [
        "DELETE FROM ds.messages WHERE stream_id OPERATOR(pg_catalog.=) $1",
        "DELETE FROM ds.segments WHERE stream_id OPERATOR(pg_catalog.=) $1",
        "DELETE FROM ds.producers WHERE stream_id OPERATOR(pg_catalog.=) $1",
        "DELETE FROM ds.pending WHERE stream_id OPERATOR(pg_catalog.=) $1",
        "DELETE FROM ds.retention WHERE stream_id OPERATOR(pg_catalog.=) $1",
        "DELETE FROM ds.streams WHERE stream_id OPERATOR(pg_catalog.=) $1",
    ] {
        if query.contains("ds.retention") && !retention::catalog_has_retention(client)? {
            continue; // not created before `ALTER EXTENSION ... UPDATE`
        }
        update(client, query, None, &[stream_id.into()])?;
    }
    Ok(())
}

/// One level of a fork chain: `stream_id` provides positions `[lo, hi)`.
#[derive(Debug, Clone, Copy)]
pub struct Level {
    pub stream_id: i64,
    pub lo: i64,
    pub hi: i64,
}

/// The chain a read of `stream` walks: the stream's own range, then each
/// source's range below the divergence point, up to the root. A level never
/// provides more than the level below it asked for: a fork of a fork made
/// below its source's own fork point inherits only up to its own fork point.
pub fn chain(client: &SpiClient<'_>, stream: &StreamRow) -> DsResult<Vec<Level>> {
    let Some(fork) = &stream.fork else {
        return Ok(vec![Level { stream_id: stream.stream_id, lo: 0, hi: stream.tail.as_i64() }]);
    };
    let mut levels = vec![Level {
        stream_id: stream.stream_id,
        lo: fork.pos.as_i64(),
        hi: stream.tail.as_i64(),
    }];
    let table = select(
        client,
        "WITH RECURSIVE chain(stream_id, fork_source, lo, hi, depth) AS ( \
             SELECT stream_id, fork_source, coalesce(fork_pos, 0::bigint), $2::bigint, 1 \
               FROM ds.streams WHERE stream_id OPERATOR(pg_catalog.=) $1 \
             UNION ALL \
             SELECT s.stream_id, s.fork_source, coalesce(s.fork_pos, 0::bigint), least(c.lo, c.hi), \
                    c.depth OPERATOR(pg_catalog.+) 1 \
               FROM chain c JOIN ds.streams s ON s.stream_id OPERATOR(pg_catalog.=) c.fork_source) \
         SELECT stream_id, lo, hi FROM chain ORDER BY depth",
        None,
        &[fork.source_id.into(), fork.pos.as_i64().into()],
    )?;
    for row in table {
        levels.push(Level {
            stream_id: row.get(1)?.expect("stream_id"),
            lo: row.get(2)?.expect("lo"),
            hi: row.get(3)?.expect("hi"),
        });
    }
    Ok(levels)
}

/// Stores messages back to back from `start`; returns the new tail.
pub fn insert_messages(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    start: Offset,
    messages: Vec<Vec<u8>>,
) -> DsResult<Offset> {
    let mut pos = start.as_i64();
    let mut starts = Vec::with_capacity(messages.len());
    for m in &messages {
        starts.push(pos);
        pos += i64::try_from(m.len()).expect("a message is below 1 GiB");
    }
    if !messages.is_empty() {
        insert_message_rows(client, vec![stream_id; messages.len()], starts, messages)?;
    }
    Ok(Offset::from_i64(pos))
}

/// Inserts message rows `(stream_ids[i], starts[i], datas[i])`: without the
/// executor (`storage/messages.rs`) while `ds.messages` is the table that
/// code knows (no trigger, rule, policy and so on: `direct.rs`), else in
/// one statement.
pub fn insert_message_rows(
    client: &mut SpiClient<'_>,
    stream_ids: Vec<i64>,
    starts: Vec<i64>,
    datas: Vec<Vec<u8>>,
) -> DsResult<()> {
    if messages::insert(&stream_ids, &starts, &datas) {
        return Ok(());
    }
    if let ([id], [start], [_]) = (stream_ids.as_slice(), starts.as_slice(), datas.as_slice()) {
        // One message, in SQL: a plain VALUES plan, a third cheaper to
        // start than the unnest one.
        let (id, start) = (*id, *start);
        let data = datas.into_iter().next().expect("one message");
        update(
            client,
            "INSERT INTO ds.messages (stream_id, start_pos, data) VALUES ($1, $2, $3)",
            None,
            &[id.into(), start.into(), data.into()],
        )?;
        return Ok(());
    }
    update(
        client,
        "INSERT INTO ds.messages (stream_id, start_pos, data) \
         SELECT * FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), \
                             pg_catalog.unnest($2::bigint[]), \
                             pg_catalog.unnest($3::bytea[]))",
        None,
        &[stream_ids.into(), starts.into(), datas.into()],
    )?;
    Ok(())
}

/// The write state of a stream row after a transaction's appends.
pub struct StreamUpdate<'a> {
    pub stream_id: i64,
    pub tail: Offset,
    pub closed: bool,
    pub closed_by: Option<&'a ProducerClaim>,
    pub last_stream_seq: Option<&'a str>,
}

/// Writes the new tails (and closure, Stream-Seq) of streams this
/// transaction holds locked, and restarts their TTL clocks, in one statement.
pub fn update_streams(client: &mut SpiClient<'_>, updates: &[StreamUpdate<'_>]) -> DsResult<()> {
    if let [u] = updates {
        // As in `lock_streams`: one row, a plan that stays an index probe.
        update(
            client,
            "UPDATE ds.streams SET tail_pos = $2, last_access = pg_catalog.now(), closed = $3, \
                 closed_by_producer = $4, closed_by_epoch = $5, closed_by_seq = $6, \
                 last_stream_seq = $7 \
             WHERE stream_id OPERATOR(pg_catalog.=) $1",
            None,
            &[
                u.stream_id.into(),
                u.tail.as_i64().into(),
                u.closed.into(),
                u.closed_by.map(|c| c.id.as_str()).into(),
                u.closed_by.map(|c| c.epoch).into(),
                u.closed_by.map(|c| c.seq).into(),
                u.last_stream_seq.into(),
            ],
        )?;
        return Ok(());
    }
    let ids: Vec<i64> = updates.iter().map(|u| u.stream_id).collect();
    let tails: Vec<i64> = updates.iter().map(|u| u.tail.as_i64()).collect();
    let closed: Vec<bool> = updates.iter().map(|u| u.closed).collect();
    let by_id: Vec<Option<&str>> =
        updates.iter().map(|u| u.closed_by.map(|c| c.id.as_str())).collect();
    let by_epoch: Vec<Option<i64>> = updates.iter().map(|u| u.closed_by.map(|c| c.epoch)).collect();
    let by_seq: Vec<Option<i64>> = updates.iter().map(|u| u.closed_by.map(|c| c.seq)).collect();
    let seqs: Vec<Option<&str>> = updates.iter().map(|u| u.last_stream_seq).collect();
    update(
        client,
        "UPDATE ds.streams s SET tail_pos = u.tail, last_access = pg_catalog.now(), \
             closed = u.closed, closed_by_producer = u.by_id, closed_by_epoch = u.by_epoch, \
             closed_by_seq = u.by_seq, last_stream_seq = u.seq \
         FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), \
                             pg_catalog.unnest($2::bigint[]), \
                             pg_catalog.unnest($3::boolean[]), \
                             pg_catalog.unnest($4::text[]), \
                             pg_catalog.unnest($5::bigint[]), \
                             pg_catalog.unnest($6::bigint[]), \
                             pg_catalog.unnest($7::text[])) \
              AS u(id, tail, closed, by_id, by_epoch, by_seq, seq) \
         WHERE s.stream_id OPERATOR(pg_catalog.=) u.id",
        None,
        &[
            ids.into(),
            tails.into(),
            closed.into(),
            by_id.into(),
            by_epoch.into(),
            by_seq.into(),
            seqs.into(),
        ],
    )?;
    Ok(())
}

/// Writes tails this transaction deferred (`crate::tails`), in one
/// statement; the rows are this transaction's own (it locked them).
pub fn write_tails(client: &mut SpiClient<'_>, ids: Vec<i64>, tails: Vec<i64>) -> DsResult<()> {
    update(
        client,
        "UPDATE ds.streams s SET tail_pos = u.tail \
         FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::bigint[])) \
              AS u(id, tail) \
         WHERE s.stream_id OPERATOR(pg_catalog.=) u.id",
        None,
        &[ids.into(), tails.into()],
    )?;
    Ok(())
}

/// [`insert_pending`] without SQL; false (nothing written) if `ds.pending`
/// is not the table `pending` knows how to write.
pub fn insert_pending_directly(stream_id: i64, seqs: &[i64], datas: &[Vec<u8>]) -> bool {
    pending::insert(stream_id, seqs, datas)
}

/// Stores appends made by `ds.enqueue` (`seqs[i]`, `datas[i]`) for the
/// sequencer, under the calling transaction's id.
pub fn insert_pending(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    seqs: Vec<i64>,
    datas: Vec<Vec<u8>>,
) -> DsResult<()> {
    if pending::insert(stream_id, &seqs, &datas) {
        return Ok(());
    }
    if let ([seq], [_]) = (seqs.as_slice(), datas.as_slice()) {
        let seq = *seq;
        let data = datas.into_iter().next().expect("one message");
        update(
            client,
            "INSERT INTO ds.pending (stream_id, seq, data) VALUES ($1, $2, $3)",
            None,
            &[stream_id.into(), seq.into(), data.into()],
        )?;
        return Ok(());
    }
    update(
        client,
        "INSERT INTO ds.pending (stream_id, seq, data) \
         SELECT $1, * FROM ROWS FROM (pg_catalog.unnest($2::bigint[]), pg_catalog.unnest($3::bytea[]))",
        None,
        &[stream_id.into(), seqs.into(), datas.into()],
    )?;
    Ok(())
}

/// `insert_pending` in one statement, only if the stream `stream_id` is
/// still at `path`, open and live; false (nothing inserted) otherwise. The
/// caller knows the stream is under no quota (`enqueue::KNOWN`).
pub fn insert_pending_if_open(
    client: &mut SpiClient<'_>,
    path: &str,
    stream_id: i64,
    seqs: Vec<i64>,
    datas: Vec<Vec<u8>>,
) -> DsResult<bool> {
    static ONE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO ds.pending (stream_id, seq, data) \
             SELECT s.stream_id, $3, $4 FROM ds.streams s \
             WHERE s.stream_id OPERATOR(pg_catalog.=) $2 AND s.path OPERATOR(pg_catalog.=) $1 \
               AND NOT s.closed AND NOT s.soft_deleted AND NOT {expired}",
            expired = *EXPIRED
        )
    });
    static MANY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "INSERT INTO ds.pending (stream_id, seq, data) \
             SELECT s.stream_id, u.seq, u.data FROM ds.streams s, \
                  ROWS FROM (pg_catalog.unnest($3::bigint[]), pg_catalog.unnest($4::bytea[])) AS u(seq, data) \
             WHERE s.stream_id OPERATOR(pg_catalog.=) $2 AND s.path OPERATOR(pg_catalog.=) $1 \
               AND NOT s.closed AND NOT s.soft_deleted AND NOT {expired}",
            expired = *EXPIRED
        )
    });
    let table = if let ([seq], [_]) = (seqs.as_slice(), datas.as_slice()) {
        let seq = *seq;
        let data = datas.into_iter().next().expect("one message");
        update(client, &ONE, None, &[path.into(), stream_id.into(), seq.into(), data.into()])?
    } else {
        update(client, &MANY, None, &[path.into(), stream_id.into(), seqs.into(), datas.into()])?
    };
    Ok(!table.is_empty())
}

/// Moves every committed `ds.enqueue` append of the streams `ids` (which the
/// caller holds locked, with tails `tails`) into the hot log, in ONE
/// statement: per stream, transactions in the order of their last write
/// (the largest `lsn` of their rows, then xid; see `ds.pending`), each transaction's
/// messages together and in its order, back to back from the tail. Returns
/// (stream, new tail, messages moved) for the streams that had any.
/// Only rows with an xid of at least `floor` are looked at: the caller
/// knows nothing committed below it is pending (0: look at every row).
pub fn sequence_pending(
    client: &mut SpiClient<'_>,
    ids: Vec<i64>,
    tails: Vec<i64>,
    floor: u64,
) -> DsResult<Vec<(i64, i64, i64)>> {
    let table = update(
        client,
        "WITH moved AS ( \
             DELETE FROM ds.pending p \
             WHERE p.stream_id OPERATOR(pg_catalog.=) ANY($1::bigint[]) \
               AND p.xid OPERATOR(pg_catalog.>=) $3::pg_catalog.text::pg_catalog.xid8 \
             RETURNING p.stream_id, p.xid, p.seq, p.lsn, p.data), \
         ranked AS ( \
             SELECT m.*, pg_catalog.max(m.lsn) OVER (PARTITION BY m.stream_id, m.xid) AS last_lsn \
             FROM moved m), \
         placed AS ( \
             SELECT m.stream_id, m.data, \
                    t.tail OPERATOR(pg_catalog.+) coalesce(pg_catalog.sum(pg_catalog.octet_length(m.data)) \
                        OVER (PARTITION BY m.stream_id ORDER BY m.last_lsn, m.xid, m.seq \
                              ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)::bigint AS start_pos \
             FROM ranked m \
             JOIN ROWS FROM (pg_catalog.unnest($1::bigint[]), pg_catalog.unnest($2::bigint[])) \
                  AS t(id, tail) ON t.id OPERATOR(pg_catalog.=) m.stream_id), \
         inserted AS ( \
             INSERT INTO ds.messages (stream_id, start_pos, data) \
             SELECT stream_id, start_pos, data FROM placed \
             RETURNING stream_id, start_pos OPERATOR(pg_catalog.+) pg_catalog.octet_length(data) AS end_pos) \
         SELECT stream_id, pg_catalog.max(end_pos)::bigint, pg_catalog.count(*)::bigint \
         FROM inserted GROUP BY stream_id",
        None,
        &[ids.into(), tails.into(), floor.to_string().into()],
    )?;
    let mut out = Vec::new();
    for row in table {
        out.push((
            row.get(1)?.expect("stream_id"),
            row.get(2)?.expect("max of a non-empty group"),
            row.get(3)?.expect("count"),
        ));
    }
    Ok(out)
}

/// Drops the unsequenced `ds.enqueue` appends of a stream being deleted.
pub fn discard_pending(client: &mut SpiClient<'_>, stream_id: i64) -> DsResult<()> {
    update(
        client,
        "DELETE FROM ds.pending WHERE stream_id OPERATOR(pg_catalog.=) $1",
        None,
        &[stream_id.into()],
    )?;
    Ok(())
}

/// Pending rows one sequencer round reads at most to find its streams.
const PENDING_ROWS_PER_ROUND: i64 = 10_000;

/// Paths of (at most `limit`) live streams that have committed
/// `ds.enqueue` appends with an xid of at least `floor`; `complete`
/// unless there may be more such streams than those returned.
pub fn paths_with_pending(
    client: &SpiClient<'_>,
    limit: usize,
    floor: u64,
) -> DsResult<PendingStreams> {
    // From the floor up in `pending_xid`, oldest first: the rows already
    // moved sit below the floor until vacuum removes them, and a scan of
    // the table or of the primary key would read each of them again.
    let rows = select(
        client,
        "SELECT p.stream_id FROM ds.pending p \
         WHERE p.xid OPERATOR(pg_catalog.>=) $1::pg_catalog.text::pg_catalog.xid8 \
         ORDER BY p.xid LIMIT $2",
        None,
        &[floor.to_string().into(), PENDING_ROWS_PER_ROUND.into()],
    )?;
    let mut complete = (rows.len() as i64) < PENDING_ROWS_PER_ROUND;
    let mut ids: Vec<i64> = Vec::new();
    for row in rows {
        let id = row.get::<i64>(1)?.expect("stream_id is NOT NULL");
        if !ids.contains(&id) {
            if ids.len() == limit {
                complete = false;
                break;
            }
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Ok(PendingStreams { paths: Vec::new(), complete });
    }
    let table = select(
        client,
        "SELECT s.path FROM ds.streams s \
         WHERE s.stream_id OPERATOR(pg_catalog.=) ANY($1) AND s.path IS NOT NULL \
         ORDER BY s.path",
        None,
        &[ids.into()],
    )?;
    let mut paths = Vec::new();
    for row in table {
        paths.push(row.get::<String>(1)?.expect("path IS NOT NULL"));
    }
    Ok(PendingStreams { paths, complete })
}

/// What [`paths_with_pending`] found.
pub struct PendingStreams {
    pub paths: Vec<String>,
    pub complete: bool,
}

/// The oldest transaction still running, as a fresh snapshot sees it
/// (`pg_snapshot_xmin`): every transaction below it has ended.
pub fn oldest_running_xid(client: &SpiClient<'_>) -> DsResult<u64> {
    let text = select(
        client,
        "SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::pg_catalog.text",
        None,
        &[],
    )?
    .first()
    .get_one::<String>()?
    .unwrap_or_default();
    text.parse().map_err(|_| DsError::Internal(format!("pg_snapshot_xmin gave {text:?}")))
}

/// Whether this server is in recovery (a hot standby): everything is
/// read-only there, so reads leave sliding TTLs to the primary (`ds.touch`).
pub fn in_recovery() -> bool {
    // SAFETY: reads shared memory state; callable in any backend.
    unsafe { pgrx::pg_sys::RecoveryInProgress() }
}

/// Refuses a function that writes on a hot standby with 25006 and a message
/// that says where to run it. Without it a write there fails deep inside
/// Postgres with an internal error (XX000, "cannot assign TransactionIds
/// during recovery"), which neither SQL users nor the sidecar can tell from
/// a bug.
pub fn require_primary(function: &str) -> DsResult<()> {
    if in_recovery() {
        return Err(DsError::ReadOnly(format!(
            "{function} writes, and this server is a hot standby (read-only): run it on the primary"
        )));
    }
    Ok(())
}

/// Restarts a sliding TTL after a read. Skips a row an appender holds: that
/// appender refreshes the clock itself, and a reader must never wait.
pub fn touch_stream(client: &mut SpiClient<'_>, stream_id: i64) -> DsResult<()> {
    crate::tails::forget_row(stream_id);
    update(
        client,
        "UPDATE ds.streams SET last_access = pg_catalog.now() \
         WHERE stream_id OPERATOR(pg_catalog.=) \
           (SELECT stream_id FROM ds.streams WHERE stream_id OPERATOR(pg_catalog.=) $1 \
            FOR NO KEY UPDATE SKIP LOCKED)",
        None,
        &[stream_id.into()],
    )?;
    Ok(())
}

/// Restarts the sliding TTL of every stream in `stream_ids` that has one
/// (`ds.touch`), skipping rows a writer holds as [`touch_stream`] does.
/// Returns how many rows it updated.
pub fn touch_streams(client: &mut SpiClient<'_>, stream_ids: Vec<i64>) -> DsResult<i64> {
    for id in &stream_ids {
        crate::tails::forget_row(*id);
    }
    if stream_ids.is_empty() {
        return Ok(0);
    }
    let table = update(
        client,
        "UPDATE ds.streams SET last_access = pg_catalog.now() \
         WHERE stream_id OPERATOR(pg_catalog.=) ANY \
           (SELECT stream_id FROM ds.streams \
            WHERE stream_id OPERATOR(pg_catalog.=) ANY ($1::bigint[]) \
              AND ttl_seconds IS NOT NULL \
            ORDER BY stream_id FOR NO KEY UPDATE SKIP LOCKED) \
         RETURNING stream_id",
        None,
        &[stream_ids.into()],
    )?;
    Ok(i64::try_from(table.len()).unwrap_or(i64::MAX))
}

/// Stored states of the producers `keys` (stream id, producer id).
pub fn find_producers(
    client: &SpiClient<'_>,
    keys: &[(i64, &str)],
) -> DsResult<HashMap<(i64, String), ProducerState>> {
    let ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let names: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let table = select(
        client,
        "SELECT p.stream_id, p.producer_id, p.epoch, p.last_seq \
         FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), \
                             pg_catalog.unnest($2::text[])) AS k(stream_id, producer_id) \
         JOIN ds.producers p ON p.stream_id OPERATOR(pg_catalog.=) k.stream_id \
                            AND p.producer_id OPERATOR(pg_catalog.=) k.producer_id",
        None,
        &[ids.into(), names.into()],
    )?;
    let mut states = HashMap::with_capacity(keys.len());
    for row in table {
        let key = (
            row.get::<i64>(1)?.expect("stream_id is NOT NULL"),
            row.get::<String>(2)?.expect("producer_id is NOT NULL"),
        );
        let state = ProducerState {
            epoch: row.get(3)?.expect("epoch is NOT NULL"),
            last_seq: row.get(4)?.expect("last_seq is NOT NULL"),
        };
        states.insert(key, state);
    }
    Ok(states)
}

/// Stores producers' new states (one entry per key) in one statement.
pub fn save_producers(
    client: &mut SpiClient<'_>,
    states: HashMap<(i64, String), ProducerState>,
) -> DsResult<()> {
    let mut ids = Vec::with_capacity(states.len());
    let mut names = Vec::with_capacity(states.len());
    let mut epochs = Vec::with_capacity(states.len());
    let mut seqs = Vec::with_capacity(states.len());
    for ((id, name), state) in states {
        ids.push(id);
        names.push(name);
        epochs.push(state.epoch);
        seqs.push(state.last_seq);
    }
    update(
        client,
        "INSERT INTO ds.producers (stream_id, producer_id, epoch, last_seq) \
         SELECT * FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), \
                             pg_catalog.unnest($2::text[]), \
                             pg_catalog.unnest($3::bigint[]), \
                             pg_catalog.unnest($4::bigint[])) \
         ON CONFLICT (stream_id, producer_id) \
         DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq, \
                       updated_at = pg_catalog.now()",
        None,
        &[ids.into(), names.into(), epochs.into(), seqs.into()],
    )?;
    Ok(())
}

/// A stored message, where it starts, and the end of the range its level
/// provides (an inherited message may be cut at the fork point).
pub struct StoredMessage {
    pub start: Offset,
    pub data: Vec<u8>,
    pub limit: Offset,
}

/// Messages of `chain` overlapping `[from, until)` that start before
/// `from + budget`, in order, read from the hot log and from segments in ONE
/// statement (one snapshot: a concurrent rotation is seen entirely or not at
/// all). The first one may start before `from` (byte streams can be read
/// from inside a stored chunk); `max_rows` bounds the result.
pub fn read_messages(
    client: &SpiClient<'_>,
    chain: &[Level],
    from: Offset,
    until: Offset,
    budget: i64,
    max_rows: Option<i64>,
) -> DsResult<Vec<StoredMessage>> {
    let ids: Vec<i64> = chain.iter().map(|l| l.stream_id).collect();
    let los: Vec<i64> = chain.iter().map(|l| l.lo).collect();
    let his: Vec<i64> = chain.iter().map(|l| l.hi).collect();
    let table = select(
        client,
        "SELECT m.start_pos, m.data, c.hi, c.lo, m.packed \
         FROM ROWS FROM (pg_catalog.unnest($1::bigint[]), \
                             pg_catalog.unnest($2::bigint[]), \
                             pg_catalog.unnest($3::bigint[])) AS c(stream_id, lo, hi) \
         CROSS JOIN LATERAL ( \
             (SELECT start_pos, data, false AS packed FROM ds.messages \
              WHERE stream_id OPERATOR(pg_catalog.=) c.stream_id \
                AND start_pos OPERATOR(pg_catalog.>=) c.lo AND start_pos OPERATOR(pg_catalog.<) c.hi \
                AND start_pos OPERATOR(pg_catalog.<) $5 \
                AND start_pos OPERATOR(pg_catalog.<) ($4 OPERATOR(pg_catalog.+) $6) \
                AND start_pos OPERATOR(pg_catalog.>=) coalesce( \
                      (SELECT pg_catalog.max(start_pos) FROM ds.messages \
                       WHERE stream_id OPERATOR(pg_catalog.=) c.stream_id \
                         AND start_pos OPERATOR(pg_catalog.<=) $4 \
                         AND start_pos OPERATOR(pg_catalog.>=) c.lo), c.lo) \
              ORDER BY start_pos LIMIT $7) \
             UNION ALL \
             (SELECT start_pos, data, true FROM ds.segments \
              WHERE stream_id OPERATOR(pg_catalog.=) c.stream_id \
                AND end_pos OPERATOR(pg_catalog.>) greatest(c.lo, $4) \
                AND start_pos OPERATOR(pg_catalog.<) least(c.hi, $5, $4 OPERATOR(pg_catalog.+) $6) \
              ORDER BY start_pos LIMIT $7) \
         ) m \
         ORDER BY m.start_pos",
        None,
        &[
            ids.into(),
            los.into(),
            his.into(),
            from.as_i64().into(),
            until.as_i64().into(),
            budget.into(),
            max_rows.into(),
        ],
    )?;
    let end = from.as_i64().saturating_add(budget).min(until.as_i64());
    let mut out = Vec::new();
    for row in table {
        let start: i64 = row.get(1)?.expect("start_pos is NOT NULL");
        let data: Vec<u8> = row.get(2)?.expect("data is NOT NULL");
        let limit = Offset::from_i64(row.get(3)?.expect("hi is NOT NULL"));
        if !row.get::<bool>(5)?.expect("packed is NOT NULL") {
            out.push(StoredMessage { start: Offset::from_i64(start), data, limit });
            continue;
        }
        // Unpack, keeping what the hot-log query would have returned.
        let lo: i64 = row.get(4)?.expect("lo is NOT NULL");
        let mut pos = start;
        for m in ds_core::segment::decode(&data)? {
            let (m_start, m_end) = (pos, pos + m.len() as i64);
            pos = m_end;
            if m_start >= lo && m_start < limit.as_i64() && m_start < end && m_end > from.as_i64() {
                out.push(StoredMessage {
                    start: Offset::from_i64(m_start),
                    data: m.to_vec(),
                    limit,
                });
            }
        }
    }
    out.sort_by_key(|m| m.start);
    if let Some(n) = max_rows {
        out.truncate(usize::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// Result of one rotation of one stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    pub segments: i64,
    pub messages: i64,
    pub bytes: i64,
}

/// Packs the cold part of a stream's hot log (rows that start before
/// `tail - hot_tail`) into segments of about `target` bytes, full segments
/// only, at most `max_bytes` (but at least `target`) and `max_rows` rows per
/// call. A segment is full at `target` bytes or at `max_rows` messages: so
/// a stream whose cold part is at least `target` bytes always gets a
/// segment, however small its messages (otherwise a stream of tiny messages
/// would stay a rotation candidate forever without progress). Each segment
/// is inserted and its rows deleted in the caller's transaction, so a crash
/// leaves either the rows or the segment. Rows are locked, so two rotations
/// of one stream serialize. `pause` sleeps once, between writing the first
/// segment and deleting its rows (a debug hook for crash tests).
pub fn rotate(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    settings: &crate::gucs::RotationSettings,
) -> DsResult<Rotated> {
    // The SQL below reads tail_pos: this transaction's appends must be in it.
    crate::tails::write_now(client)?;
    let crate::gucs::RotationSettings { hot_tail, target, max_bytes, max_rows, pause } = *settings;
    let max_bytes = max_bytes.max(target);
    let max_rows = max_rows.max(1);
    let rows = update(
        client,
        "SELECT m.start_pos, m.data FROM ds.messages m \
         JOIN ds.streams s ON s.stream_id OPERATOR(pg_catalog.=) m.stream_id \
         WHERE m.stream_id OPERATOR(pg_catalog.=) $1 \
           AND m.start_pos OPERATOR(pg_catalog.<) (s.tail_pos OPERATOR(pg_catalog.-) $2) \
         ORDER BY m.start_pos LIMIT $3 FOR UPDATE OF m",
        None,
        &[stream_id.into(), hot_tail.into(), max_rows.into()],
    )?;
    let mut cold: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut total = 0i64;
    for row in rows {
        let data: Vec<u8> = row.get(2)?.expect("data is NOT NULL");
        total += data.len() as i64;
        cold.push((row.get(1)?.expect("start_pos is NOT NULL"), data));
        if total >= max_bytes {
            break;
        }
    }
    let mut done = Rotated::default();
    let mut batch_start = 0;
    let mut batch_bytes = 0i64;
    for i in 0..cold.len() {
        batch_bytes += cold[i].1.len() as i64;
        // Rows of one segment must be contiguous (always true within a stream).
        if batch_bytes < target && (i + 1 - batch_start) < max_rows as usize {
            continue;
        }
        let batch = &cold[batch_start..=i];
        let first = batch[0].0;
        let (last_start, last) = (&batch[batch.len() - 1].0, &batch[batch.len() - 1].1);
        let end_pos = last_start + last.len() as i64;
        let packed = ds_core::segment::encode(batch.iter().map(|(_, d)| d.as_slice()));
        update(
            client,
            "INSERT INTO ds.segments (stream_id, start_pos, end_pos, message_count, data) \
             VALUES ($1, $2, $3, $4, $5)",
            None,
            &[
                stream_id.into(),
                first.into(),
                end_pos.into(),
                (batch.len() as i32).into(),
                packed.into(),
            ],
        )?;
        if !pause.is_zero() && done.segments == 0 {
            std::thread::sleep(pause);
        }
        update(
            client,
            "DELETE FROM ds.messages WHERE stream_id OPERATOR(pg_catalog.=) $1 \
               AND start_pos OPERATOR(pg_catalog.>=) $2 AND start_pos OPERATOR(pg_catalog.<=) $3",
            None,
            &[stream_id.into(), first.into(), (*last_start).into()],
        )?;
        done.segments += 1;
        done.messages += batch.len() as i64;
        done.bytes += batch_bytes;
        batch_start = i + 1;
        batch_bytes = 0;
    }
    Ok(done)
}

/// The oid of the table `ds.<name>`, `None` while there is none (the
/// extension is not installed). Catalog caches only, no statement; needs a
/// transaction.
pub(crate) fn ds_table(name: &std::ffi::CStr) -> Option<pgrx::pg_sys::Oid> {
    use pgrx::pg_sys::{InvalidOid, get_namespace_oid, get_relname_relid};
    // SAFETY: catalog cache lookups by name inside a transaction; both
    // return InvalidOid for a missing schema or table (missing_ok).
    unsafe {
        let namespace = get_namespace_oid(c"ds".as_ptr(), true);
        if namespace == InvalidOid {
            return None;
        }
        let relid = get_relname_relid(name.as_ptr(), namespace);
        (relid != InvalidOid).then_some(relid)
    }
}

/// The oid of `ds.streams`: a new one means the extension was dropped and
/// created again, and stream ids started over.
pub fn streams_table() -> Option<pgrx::pg_sys::Oid> {
    ds_table(c"streams")
}

/// Paths of the streams `ids` that still have one.
pub fn stream_paths(client: &SpiClient<'_>, ids: &[i64]) -> DsResult<Vec<(i64, String)>> {
    let table = select(
        client,
        "SELECT stream_id, path FROM ds.streams \
         WHERE stream_id OPERATOR(pg_catalog.=) ANY($1) AND path IS NOT NULL",
        None,
        &[ids.to_vec().into()],
    )?;
    let mut paths = Vec::with_capacity(ids.len());
    for row in table {
        let id: i64 = row.get(1)?.expect("stream_id is NOT NULL");
        let path: String = row.get(2)?.expect("path IS NOT NULL");
        paths.push((id, path));
    }
    Ok(paths)
}

/// One page of the states of streams that have a path, by stream id after
/// `after` (the doorbell worker compares them with what it announced after
/// an overflow): (stream id, path, tail, closed).
pub fn stream_states_after(
    client: &SpiClient<'_>,
    after: i64,
    limit: i64,
) -> DsResult<Vec<(i64, String, i64, bool)>> {
    let table = select(
        client,
        "SELECT stream_id, path, tail_pos, closed FROM ds.streams \
         WHERE stream_id OPERATOR(pg_catalog.>) $1 AND path IS NOT NULL \
         ORDER BY stream_id LIMIT $2",
        None,
        &[after.into(), limit.into()],
    )?;
    let mut states = Vec::with_capacity(table.len());
    for row in table {
        states.push((
            row.get(1)?.expect("stream_id is NOT NULL"),
            row.get(2)?.expect("path IS NOT NULL"),
            row.get(3)?.expect("tail_pos is NOT NULL"),
            row.get(4)?.expect("closed is NOT NULL"),
        ));
    }
    Ok(states)
}

/// Sends a notification on this installation's private channel (see
/// `ds.settings` and `ds.notify_channel()`); delivered at commit.
pub fn notify(client: &mut SpiClient<'_>, payload: &str) -> DsResult<()> {
    update(
        client,
        "SELECT pg_catalog.pg_notify(coalesce((SELECT value FROM ds.settings \
                WHERE key OPERATOR(pg_catalog.=) 'notify_channel'), $1), $2)",
        None,
        &[ds_core::notification::CHANNEL.into(), payload.into()],
    )?;
    Ok(())
}
