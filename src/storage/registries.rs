//! The SQL of stream registries: `ds.registries` (one row per registered
//! prefix) and the scan of live streams that fills a new registry. Same
//! rules as the rest of storage: parameterised, schema-qualified, kept
//! plans. Decides nothing.

use ds_core::registry::StreamEntry;
use pgrx::spi::SpiClient;

use super::{EXPIRED, select, update};
use crate::error::DsResult;

/// (prefix, registry stream id) of the registered prefixes among `prefixes`.
pub fn registries_of(client: &SpiClient<'_>, prefixes: &[&str]) -> DsResult<Vec<(String, i64)>> {
    let table = select(
        client,
        "SELECT prefix, stream_id FROM ds.registries \
         WHERE prefix OPERATOR(pg_catalog.=) ANY ($1::text[])",
        None,
        &[prefixes.to_vec().into()],
    )?;
    let mut out = Vec::new();
    for row in table {
        if let (Some(prefix), Some(id)) = (row.get::<String>(1)?, row.get::<i64>(2)?) {
            out.push((prefix, id));
        }
    }
    Ok(out)
}

/// Whether `prefix` is registered.
pub fn is_registered(client: &SpiClient<'_>, prefix: &str) -> DsResult<bool> {
    Ok(!registries_of(client, &[prefix])?.is_empty())
}

pub fn insert_registry(client: &mut SpiClient<'_>, prefix: &str, stream_id: i64) -> DsResult<()> {
    update(
        client,
        "INSERT INTO ds.registries (prefix, stream_id) VALUES ($1, $2)",
        None,
        &[prefix.into(), stream_id.into()],
    )?;
    Ok(())
}

/// Removes the row of `prefix`; returns its registry stream id if there was one.
pub fn delete_registry(client: &mut SpiClient<'_>, prefix: &str) -> DsResult<Option<i64>> {
    let table = update(
        client,
        "DELETE FROM ds.registries WHERE prefix OPERATOR(pg_catalog.=) $1 RETURNING stream_id",
        None,
        &[prefix.into()],
    )?;
    Ok(table.into_iter().next().map(|r| r.get::<i64>(1)).transpose()?.flatten())
}

/// Up to `limit` live (not deleted, not expired) streams whose path starts
/// with `prefix` and sorts after `after`, in path order, as a registry
/// lists them.
pub fn live_streams_under(
    client: &SpiClient<'_>,
    prefix: &str,
    after: &str,
    limit: i64,
) -> DsResult<Vec<(String, StreamEntry)>> {
    static QUERY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT path, content_type, \
                    (pg_catalog.extract('epoch', created_at) OPERATOR(pg_catalog.*) 1000000)::bigint, \
                    ttl_seconds, \
                    (pg_catalog.extract('epoch', expires_at) OPERATOR(pg_catalog.*) 1000000)::bigint, \
                    fork_source_path \
             FROM ds.streams \
             WHERE pg_catalog.starts_with(path, $1) AND (path COLLATE \"C\") OPERATOR(pg_catalog.>) $2 \
               AND NOT soft_deleted AND NOT {expired} \
             ORDER BY path COLLATE \"C\" LIMIT $3",
            expired = *EXPIRED
        )
    });
    let table = select(client, &QUERY, None, &[prefix.into(), after.into(), limit.into()])?;
    let mut out = Vec::new();
    for row in table {
        let (Some(path), Some(content_type), Some(created_at)) =
            (row.get::<String>(1)?, row.get::<String>(2)?, row.get::<i64>(3)?)
        else {
            continue;
        };
        let entry = StreamEntry {
            content_type,
            created_at,
            ttl_seconds: row.get::<i64>(4)?,
            expires_at: row.get::<i64>(5)?,
            forked_from: row.get::<String>(6)?,
        };
        out.push((path, entry));
    }
    Ok(out)
}
