//! Storage quotas: per stream (`ds.set_stream_quota`) and per owner role
//! (`ds.set_quota`: bytes of all its streams, and how many it may hold).
//!
//! A stream's bytes count against the role that created it (`owner_role`).
//! Per-stream limits are exact (the stream row is locked by the append).
//! Per-role usage is read once per transaction from committed rows plus what
//! the transaction itself adds, so concurrent transactions of one role can
//! each fit under the limit and together pass it by what they have in flight;
//! reading it is one index probe, and nothing is counted for roles without a
//! quota. An append over a quota is the outcome `quota_exceeded` (SQLSTATE
//! 53400 from `ds.append`), with nothing appended.

use std::collections::HashMap;

use ds_core::acl::Privilege;
use pgrx::pg_sys::Oid;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::acl;
use crate::error::{DsError, DsResult};
use crate::storage::{self, StreamRow};

/// One owner's limits and usage as this transaction sees them.
#[derive(Debug, Clone, Copy)]
struct Budget {
    max_bytes: Option<i64>,
    max_streams: Option<i64>,
    bytes: i64,
    streams: i64,
}

impl Budget {
    /// Whether `bytes` more fit under the owner's byte limit.
    fn check_bytes(&self, owner: Oid, bytes: i64) -> Result<(), String> {
        match self.max_bytes {
            Some(max) if self.bytes + bytes > max => Err(format!(
                "role {:?} would hold {} bytes of streams, over its quota of {max} bytes \
                 (ds.set_quota)",
                acl::role_name(owner),
                self.bytes + bytes
            )),
            _ => Ok(()),
        }
    }
}

/// The quotas of the owners one statement touches.
#[derive(Debug, Default)]
pub struct Quotas {
    owners: HashMap<Oid, Budget>,
}

impl Quotas {
    /// Reads limits and usage of those of `owners` that have a quota.
    pub fn load(client: &SpiClient<'_>, owners: &[Oid]) -> DsResult<Quotas> {
        let mut quotas = Quotas::default();
        if owners.is_empty() {
            return Ok(quotas);
        }
        let owners: Vec<Oid> = owners.to_vec();
        // Retention's column exists only after `ALTER EXTENSION ... UPDATE`.
        let start = if storage::retention::catalog_has_retention(client)? {
            "greatest(coalesce(s.fork_pos, 0), s.retained_from)"
        } else {
            "coalesce(s.fork_pos, 0)"
        };
        let table = storage::select(
            client,
            &format!(
                "SELECT q.role::pg_catalog.oid, q.max_bytes, q.max_streams, \
                    coalesce(u.bytes, 0), coalesce(u.streams, 0) \
             FROM ds.role_quotas q \
             LEFT JOIN LATERAL ( \
                 SELECT sum(s.tail_pos OPERATOR(pg_catalog.-) {start})::bigint AS bytes, \
                        count(*) FILTER (WHERE s.path IS NOT NULL AND NOT s.soft_deleted) AS streams \
                 FROM ds.streams s \
                 WHERE s.owner_role::pg_catalog.oid OPERATOR(pg_catalog.=) q.role::pg_catalog.oid \
                   AND s.owner_role IS NOT NULL) u ON true \
             WHERE q.role::pg_catalog.oid OPERATOR(pg_catalog.=) ANY($1)"
            ),
            None,
            &[owners.into()],
        )?;
        for row in table {
            let Some(role) = row.get::<Oid>(1)? else { continue };
            quotas.owners.insert(
                role,
                Budget {
                    max_bytes: row.get(2)?,
                    max_streams: row.get(3)?,
                    bytes: row.get::<i64>(4)?.unwrap_or(0) + crate::tails::unstored_bytes_of(role),
                    streams: row.get(5)?.unwrap_or(0),
                },
            );
        }
        Ok(quotas)
    }

    /// Charges `bytes` more to `stream` and its owner, or says which limit
    /// they would pass (and charges nothing).
    pub fn charge_bytes(
        &mut self,
        path: &str,
        stream: &StreamRow,
        bytes: i64,
    ) -> Result<(), String> {
        if let Some(max) = stream.max_bytes
            && stream.own_bytes() + bytes > max
        {
            return Err(format!(
                "stream {path:?} would hold {} bytes, over its quota of {max} bytes \
                 (ds.set_stream_quota)",
                stream.own_bytes() + bytes
            ));
        }
        let Some(owner) = stream.owner_role else { return Ok(()) };
        if let Some(b) = self.owners.get_mut(&owner) {
            b.check_bytes(owner, bytes)?;
            b.bytes += bytes;
        }
        Ok(())
    }

    /// Charges one more stream of `bytes` to `owner`, or says which limit
    /// it would pass.
    pub fn charge_stream(&mut self, owner: Oid, bytes: i64) -> Result<(), String> {
        let Some(b) = self.owners.get_mut(&owner) else { return Ok(()) };
        if let Some(max) = b.max_streams
            && b.streams + 1 > max
        {
            return Err(format!(
                "role {:?} already holds {} streams, its quota (ds.set_quota)",
                acl::role_name(owner),
                b.streams
            ));
        }
        b.check_bytes(owner, bytes)?;
        b.streams += 1;
        b.bytes += bytes;
        Ok(())
    }
}

/// Sets the storage quota of streams created by `role`: at most `max_bytes`
/// bytes in all (a fork counts only its own appends, and what retention
/// dropped no longer counts) and at most
/// `max_streams` streams. NULL lifts a limit; both NULL removes the quota.
/// Superusers and the extension's owner only.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_quota(
    role: Option<&str>,
    max_bytes: Option<i64>,
    max_streams: Option<i64>,
) -> Result<(), ErrorReport> {
    // Not STRICT (NULL limits mean "no limit"), so a NULL role arrives here.
    let role = role.ok_or(DsError::NullArgument("role"))?;
    storage::require_primary("ds.set_quota")?;
    crate::tails::forget_rows();
    crate::enqueue::quota_changed();
    if max_bytes.is_some_and(|b| b < 0) || max_streams.is_some_and(|s| s < 0) {
        return Err(DsError::Invalid(ds_core::Error::InvalidQuota(
            "quota limits must be non-negative (or NULL for no limit)".into(),
        ))
        .into());
    }
    let grantee = acl::role_oid(role).ok_or_else(|| DsError::NoSuchRole(role.to_owned()))?;
    Spi::connect_mut(|client| -> DsResult<()> {
        let me = acl::caller();
        if !acl::exempt(client, me)? {
            return Err(acl::denied(me, "**", Privilege::Admin));
        }
        if max_bytes.is_none() && max_streams.is_none() {
            client.update(
                "DELETE FROM ds.role_quotas WHERE role OPERATOR(pg_catalog.=) $1::pg_catalog.regrole",
                None,
                &[grantee.into()],
            )?;
        } else {
            client.update(
                "INSERT INTO ds.role_quotas (role, max_bytes, max_streams) \
                 VALUES ($1::pg_catalog.regrole, $2, $3) \
                 ON CONFLICT (role) DO UPDATE \
                 SET max_bytes = excluded.max_bytes, max_streams = excluded.max_streams",
                None,
                &[grantee.into(), max_bytes.into(), max_streams.into()],
            )?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Sets (or with NULL lifts) the byte limit of one stream's own data.
/// Needs `admin` on the path.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_stream_quota(path: Option<&str>, max_bytes: Option<i64>) -> Result<(), ErrorReport> {
    // Not STRICT (a NULL max_bytes means "no limit"), so a NULL path arrives here.
    let path = path.ok_or(DsError::NullArgument("path"))?;
    storage::require_primary("ds.set_stream_quota")?;
    crate::tails::forget_rows();
    crate::enqueue::quota_changed();
    if max_bytes.is_some_and(|b| b < 0) {
        return Err(DsError::Invalid(ds_core::Error::InvalidQuota(
            "max_bytes must be non-negative (or NULL for no limit)".into(),
        ))
        .into());
    }
    Spi::connect_mut(|client| -> DsResult<()> {
        acl::check_path(client, path, Privilege::Admin)?;
        let stream = crate::streams::live_stream(client, path, storage::Lock::ForWrite)?;
        client.update(
            "UPDATE ds.streams SET max_bytes = $2 WHERE stream_id OPERATOR(pg_catalog.=) $1",
            None,
            &[stream.stream_id.into(), max_bytes.into()],
        )?;
        Ok(())
    })?;
    Ok(())
}

/// Quotas and what is used of them: every role's for superusers and the
/// extension's owner, otherwise the caller's own.
#[pg_extern(security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
fn quota_usage() -> Result<
    TableIterator<
        'static,
        (
            name!(role, String),
            name!(max_bytes, Option<i64>),
            name!(max_streams, Option<i64>),
            name!(bytes, i64),
            name!(streams, i64),
        ),
    >,
    ErrorReport,
> {
    let rows = Spi::connect(|client| -> DsResult<Vec<_>> {
        let me = acl::caller();
        let roles: Vec<Oid> = if acl::exempt(client, me)? {
            let table = client.select(
                "SELECT role::pg_catalog.oid FROM ds.role_quotas ORDER BY role::pg_catalog.text",
                None,
                &[],
            )?;
            let mut all = Vec::new();
            for row in table {
                all.extend(row.get::<Oid>(1)?);
            }
            all
        } else {
            vec![me]
        };
        let quotas = Quotas::load(client, &roles)?;
        Ok(roles
            .into_iter()
            .filter_map(|r| {
                let b = quotas.owners.get(&r)?;
                Some((acl::role_name(r), b.max_bytes, b.max_streams, b.bytes, b.streams))
            })
            .collect())
    })?;
    Ok(TableIterator::new(rows))
}
