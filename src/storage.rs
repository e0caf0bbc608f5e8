//! Every SQL statement the extension runs against its tables, via SPI.
//!
//! Statements are parameterised (no string formatting of values) and fully
//! qualified, because the public functions run as SECURITY DEFINER with a
//! pinned search_path. Nothing here decides protocol rules; callers do.

use ds_core::Offset;
use ds_core::producer::{ProducerClaim, ProducerState};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::spi::SpiClient;

use crate::error::DsResult;

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
}

/// How `find_stream` treats the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Plain snapshot read.
    None,
    /// `FOR NO KEY UPDATE`: serializes writers of this stream until commit.
    ForWrite,
}

const STREAM_COLUMNS: &str = "stream_id, content_type, ttl_seconds, expires_at, tail_pos, closed, \
     closed_by_producer, closed_by_epoch, closed_by_seq, last_stream_seq, \
     coalesce(expires_at <= now() \
              OR last_access + ttl_seconds * interval '1 second' <= now(), false)";

/// Looks a stream up by path; expired streams are returned with `expired`.
pub fn find_stream(
    client: &mut SpiClient<'_>,
    path: &str,
    lock: Lock,
) -> DsResult<Option<StreamRow>> {
    let table = match lock {
        Lock::None => client.select(
            &format!("SELECT {STREAM_COLUMNS} FROM ds.streams WHERE path = $1"),
            Some(1),
            &[path.into()],
        )?,
        // A row lock is a write: SPI must not run it read-only.
        Lock::ForWrite => client.update(
            &format!("SELECT {STREAM_COLUMNS} FROM ds.streams WHERE path = $1 FOR NO KEY UPDATE"),
            Some(1),
            &[path.into()],
        )?,
    };
    let Some(row) = table.into_iter().next() else { return Ok(None) };
    let closed_by = match (row.get::<String>(7)?, row.get::<i64>(8)?, row.get::<i64>(9)?) {
        (Some(id), Some(epoch), Some(seq)) => Some(ProducerClaim { id, epoch, seq }),
        _ => None,
    };
    Ok(Some(StreamRow {
        stream_id: row.get(1)?.expect("stream_id is NOT NULL"),
        content_type: row.get(2)?.expect("content_type is NOT NULL"),
        ttl_seconds: row.get(3)?,
        expires_at: row.get(4)?,
        tail: Offset::from_i64(row.get(5)?.expect("tail_pos is NOT NULL")),
        closed: row.get(6)?.expect("closed is NOT NULL"),
        closed_by,
        last_stream_seq: row.get(10)?,
        expired: row.get(11)?.expect("coalesce is never NULL"),
    }))
}

/// Settings of a stream being created.
pub struct NewStream<'a> {
    pub path: &'a str,
    pub content_type: &'a str,
    pub ttl_seconds: Option<i64>,
    pub expires_at: Option<TimestampWithTimeZone>,
    pub closed: bool,
}

/// Inserts a stream unless the path is taken; returns its id if inserted.
pub fn insert_stream(client: &mut SpiClient<'_>, s: &NewStream<'_>) -> DsResult<Option<i64>> {
    let table = client.update(
        "INSERT INTO ds.streams (path, content_type, ttl_seconds, expires_at, closed) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (path) DO NOTHING RETURNING stream_id",
        Some(1),
        &[
            s.path.into(),
            s.content_type.into(),
            s.ttl_seconds.into(),
            s.expires_at.into(),
            s.closed.into(),
        ],
    )?;
    Ok(table.into_iter().next().map(|r| r.get::<i64>(1)).transpose()?.flatten())
}

/// Removes a stream and everything stored for it.
pub fn delete_stream(client: &mut SpiClient<'_>, stream_id: i64) -> DsResult<()> {
    for query in [
        "DELETE FROM ds.messages WHERE stream_id = $1",
        "DELETE FROM ds.producers WHERE stream_id = $1",
        "DELETE FROM ds.streams WHERE stream_id = $1",
    ] {
        client.update(query, None, &[stream_id.into()])?;
    }
    Ok(())
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
    match messages.len() {
        0 => {}
        1 => {
            let data = messages.into_iter().next().expect("one message");
            client.update(
                "INSERT INTO ds.messages (stream_id, start_pos, data) VALUES ($1, $2, $3)",
                None,
                &[stream_id.into(), starts[0].into(), data.into()],
            )?;
        }
        _ => {
            client.update(
                "INSERT INTO ds.messages (stream_id, start_pos, data) \
                 SELECT $1, s, d FROM unnest($2::bigint[], $3::bytea[]) AS m(s, d)",
                None,
                &[stream_id.into(), starts.into(), messages.into()],
            )?;
        }
    }
    Ok(Offset::from_i64(pos))
}

/// What one write transaction changes on the stream row.
pub struct StreamUpdate<'a> {
    pub stream_id: i64,
    pub tail: Offset,
    pub close: bool,
    pub closed_by: Option<&'a ProducerClaim>,
    pub stream_seq: Option<&'a str>,
}

/// Records the new tail (and closure, Stream-Seq) and refreshes the TTL clock.
pub fn update_stream(client: &mut SpiClient<'_>, u: &StreamUpdate<'_>) -> DsResult<()> {
    client.update(
        "UPDATE ds.streams SET tail_pos = $2, last_access = now(), \
             closed = closed OR $3, \
             closed_by_producer = CASE WHEN $3 THEN $4 ELSE closed_by_producer END, \
             closed_by_epoch = CASE WHEN $3 THEN $5 ELSE closed_by_epoch END, \
             closed_by_seq = CASE WHEN $3 THEN $6 ELSE closed_by_seq END, \
             last_stream_seq = coalesce($7, last_stream_seq) \
         WHERE stream_id = $1",
        None,
        &[
            u.stream_id.into(),
            u.tail.as_i64().into(),
            u.close.into(),
            u.closed_by.map(|c| c.id.as_str()).into(),
            u.closed_by.map(|c| c.epoch).into(),
            u.closed_by.map(|c| c.seq).into(),
            u.stream_seq.into(),
        ],
    )?;
    Ok(())
}

/// Restarts a sliding TTL after a read. Skips a row an appender holds: that
/// appender refreshes the clock itself, and a reader must never wait.
pub fn touch_stream(client: &mut SpiClient<'_>, stream_id: i64) -> DsResult<()> {
    client.update(
        "UPDATE ds.streams SET last_access = now() WHERE stream_id = \
           (SELECT stream_id FROM ds.streams WHERE stream_id = $1 \
            FOR NO KEY UPDATE SKIP LOCKED)",
        None,
        &[stream_id.into()],
    )?;
    Ok(())
}

/// Stored state of one producer on one stream.
pub fn find_producer(
    client: &SpiClient<'_>,
    stream_id: i64,
    producer_id: &str,
) -> DsResult<Option<ProducerState>> {
    let table = client.select(
        "SELECT epoch, last_seq FROM ds.producers WHERE stream_id = $1 AND producer_id = $2",
        Some(1),
        &[stream_id.into(), producer_id.into()],
    )?;
    let Some(row) = table.into_iter().next() else { return Ok(None) };
    Ok(Some(ProducerState {
        epoch: row.get(1)?.expect("epoch is NOT NULL"),
        last_seq: row.get(2)?.expect("last_seq is NOT NULL"),
    }))
}

/// Stores a producer's new state.
pub fn save_producer(
    client: &mut SpiClient<'_>,
    stream_id: i64,
    producer_id: &str,
    state: ProducerState,
) -> DsResult<()> {
    client.update(
        "INSERT INTO ds.producers (stream_id, producer_id, epoch, last_seq) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (stream_id, producer_id) \
         DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq, updated_at = now()",
        None,
        &[stream_id.into(), producer_id.into(), state.epoch.into(), state.last_seq.into()],
    )?;
    Ok(())
}

/// A stored message and where it starts.
pub struct StoredMessage {
    pub start: Offset,
    pub data: Vec<u8>,
}

/// Messages overlapping `[from, until)` that start before `from + budget`,
/// in order. The first one may start before `from` (byte streams can be
/// read from inside a stored chunk); `max_rows` bounds the result.
pub fn read_messages(
    client: &SpiClient<'_>,
    stream_id: i64,
    from: Offset,
    until: Offset,
    budget: i64,
    max_rows: Option<i64>,
) -> DsResult<Vec<StoredMessage>> {
    let table = client.select(
        "SELECT start_pos, data FROM ds.messages \
         WHERE stream_id = $1 AND start_pos < $3 AND start_pos < $2 + $4 \
           AND start_pos >= coalesce((SELECT max(start_pos) FROM ds.messages \
                                      WHERE stream_id = $1 AND start_pos <= $2), 0) \
         ORDER BY start_pos LIMIT $5",
        None,
        &[
            stream_id.into(),
            from.as_i64().into(),
            until.as_i64().into(),
            budget.into(),
            max_rows.into(),
        ],
    )?;
    let mut out = Vec::new();
    for row in table {
        out.push(StoredMessage {
            start: Offset::from_i64(row.get(1)?.expect("start_pos is NOT NULL")),
            data: row.get(2)?.expect("data is NOT NULL"),
        });
    }
    Ok(out)
}

/// Sends a notification on the documented channel; delivered at commit.
pub fn notify(client: &mut SpiClient<'_>, payload: &str) -> DsResult<()> {
    client.update(
        "SELECT pg_catalog.pg_notify($1, $2)",
        None,
        &[ds_core::notification::CHANNEL.into(), payload.into()],
    )?;
    Ok(())
}
