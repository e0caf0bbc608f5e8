//! Stream lifecycle: `ds.create` (PUT semantics, §5.1), `ds.head`, `ds.delete`.

use ds_core::content_type::{self, OCTET_STREAM};
use ds_core::json::Purpose;
use ds_core::notification::Announcement;
use ds_core::{Offset, limits};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::append::messages_for;
use crate::error::{DsError, DsResult};
use crate::storage::{self, Lock, NewStream, StreamRow, StreamUpdate};

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
    let wanted = NewStream {
        path,
        content_type: content_type.unwrap_or(OCTET_STREAM),
        ttl_seconds,
        expires_at,
        closed,
    };
    let (created, row) = create_stream(&wanted, body.unwrap_or_default())?;
    Ok(TableIterator::once((created, row.tail.to_string(), row.content_type, row.closed)))
}

fn create_stream(wanted: &NewStream<'_>, body: &[u8]) -> DsResult<(bool, StreamRow)> {
    limits::validate_path(wanted.path)?;
    let mode = content_type::mode(wanted.content_type)?;
    limits::validate_ttl(wanted.ttl_seconds, wanted.expires_at.is_some())?;
    let messages = messages_for(mode, wanted.content_type, body, Purpose::Create)?;

    Spi::connect_mut(|client| {
        // Two rounds at most: an expired stream at the path is removed first.
        for _ in 0..2 {
            if let Some(stream_id) = storage::insert_stream(client, wanted)? {
                let tail = storage::insert_messages(client, stream_id, Offset::ZERO, messages)?;
                storage::update_stream(
                    client,
                    &StreamUpdate {
                        stream_id,
                        tail,
                        close: wanted.closed,
                        closed_by: None,
                        stream_seq: None,
                    },
                )?;
                let row = storage::find_stream(client, wanted.path, Lock::None)?
                    .expect("the stream was just created");
                return Ok((true, row));
            }
            let existing = storage::find_stream(client, wanted.path, Lock::ForWrite)?
                .expect("ON CONFLICT found the path taken, and it is locked now");
            if existing.expired {
                storage::delete_stream(client, existing.stream_id)?;
                continue;
            }
            let differences = config_differences(wanted, &existing);
            if differences.is_empty() {
                return Ok((false, existing));
            }
            return Err(DsError::Conflict {
                path: wanted.path.to_owned(),
                differences: differences.join(", "),
            });
        }
        Err(DsError::Internal("stream creation did not settle in two rounds".into()))
    })
}

/// What differs between a create request and the existing stream.
fn config_differences(wanted: &NewStream<'_>, existing: &StreamRow) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !content_type::same(wanted.content_type, &existing.content_type) {
        out.push("content type");
    }
    if wanted.ttl_seconds != existing.ttl_seconds {
        out.push("ttl_seconds");
    }
    if wanted.expires_at != existing.expires_at {
        out.push("expires_at");
    }
    if wanted.closed != existing.closed {
        out.push("closed");
    }
    out
}

/// Looks up a live (existing, unexpired) stream or raises 42704.
pub fn live_stream(client: &mut spi::SpiClient<'_>, path: &str, lock: Lock) -> DsResult<StreamRow> {
    limits::validate_path(path)?;
    storage::find_stream(client, path, lock)?
        .filter(|s| !s.expired)
        .ok_or_else(|| DsError::NotFound(path.to_owned()))
}

/// Metadata of a stream. Does not restart a sliding TTL (§5.1).
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
        ),
    >,
    ErrorReport,
> {
    let s = Spi::connect_mut(|client| live_stream(client, path, Lock::None))?;
    Ok(TableIterator::once((
        s.stream_id,
        s.content_type,
        s.tail.to_string(),
        s.closed,
        s.ttl_seconds,
        s.expires_at,
    )))
}

/// Deletes a stream with all its data and producer state.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn delete(path: &str) -> Result<(), ErrorReport> {
    Spi::connect_mut(|client| {
        let s = live_stream(client, path, Lock::ForWrite)?;
        storage::delete_stream(client, s.stream_id)?;
        storage::notify(client, &Announcement::Deleted { path: path.to_owned() }.line())
    })?;
    Ok(())
}
