//! Creating, reading and deleting subscriptions, their stream membership,
//! and the links that stream creation and deletion write.

use ds_core::acl::{Pattern, Privilege};
use ds_core::subscription::config::{self, Config};
use ds_core::subscription::doc::{self, LinkInfo};
use ds_core::subscription::{ErrorCode, SubError, validate_id};
use pgrx::pg_sys::Oid;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::{Value, json};

use super::{Failure, Membership, Outcome, lock_membership, not_found, respond};
use crate::acl;
use crate::error::DsResult;
use crate::storage::{self, subscriptions as store, subscriptions::SubscriptionRow};
use crate::tails;

/// Whether the caller may manage the subscription `owner` created: a member
/// of that role, or exempt from path checks (superuser, extension owner).
pub(super) fn require_owner(client: &SpiClient<'_>, row: &SubscriptionRow) -> Result<(), Failure> {
    let me = acl::caller();
    if acl::exempt(client, me)? || acl::may_become(me, row.owner_role) {
        return Ok(());
    }
    Err(SubError::new(
        ErrorCode::Forbidden,
        format!(
            "permission denied: role {:?} is not a member of {:?}, which owns subscription {:?}",
            acl::role_name(me),
            acl::role_name(row.owner_role),
            row.id
        ),
    )
    .into())
}

/// A live subscription the caller owns, locked when `lock`.
pub(super) fn owned(
    client: &mut SpiClient<'_>,
    id: &str,
    lock: bool,
) -> Result<SubscriptionRow, Failure> {
    validate_id(id)?;
    match store::find(client, id, lock)? {
        Some(row) if !row.deleted => {
            require_owner(client, &row)?;
            Ok(row)
        }
        _ => Err(not_found(id)),
    }
}

fn require_read(client: &SpiClient<'_>, me: Oid, paths: &[String]) -> Result<(), Failure> {
    for path in paths {
        acl::require(client, me, path, Privilege::Read)?;
    }
    Ok(())
}

/// The privileges a configuration needs: `read` on every explicit stream,
/// a `read` grant covering the pattern, `append` on the wake stream.
fn require_config_privileges(
    client: &SpiClient<'_>,
    me: Oid,
    config: &Config,
) -> Result<(), Failure> {
    require_read(client, me, &config.streams)?;
    if let Some(text) = &config.pattern {
        let pattern = Pattern::parse(text).map_err(|e| SubError::invalid(e.to_string()))?;
        if !acl::allows_pattern(client, me, &pattern, Privilege::Read)? {
            return Err(acl::denied(me, text, Privilege::Read).into());
        }
    }
    if let Some(wake) = &config.wake_stream {
        acl::require(client, me, wake, Privilege::Append)?;
    }
    Ok(())
}

fn reject_wake_stream(row_wake: Option<&str>, paths: &[String]) -> Result<(), Failure> {
    match row_wake {
        Some(w) if paths.iter().any(|p| p == w) => Err(SubError::invalid(format!(
            "{w:?} is the subscription's wake_stream: a subscription never watches it"
        ))
        .into()),
        _ => Ok(()),
    }
}

/// The subscription document of `row`, with its links and their tails now.
pub(super) fn document(client: &SpiClient<'_>, row: &SubscriptionRow) -> DsResult<Value> {
    let links = store::links(client, &row.id)?;
    Ok(doc::document(&doc::Subscription {
        id: &row.id,
        kind: &row.kind,
        pattern: row.pattern.as_deref(),
        links: &links,
        webhook_url: row.webhook_url.as_deref(),
        wake_stream: row.wake_stream.as_deref(),
        lease_ttl_ms: row.lease_ttl_ms,
        created_at: &row.created_at,
        status: &row.status,
        description: row.description.as_deref(),
    }))
}

/// Links the existing streams `pattern` matches (the wake stream excepted)
/// at their tails.
fn backfill(client: &mut SpiClient<'_>, id: &str, config: &Config) -> DsResult<()> {
    let Some(text) = &config.pattern else { return Ok(()) };
    let Ok(pattern) = Pattern::parse(text) else { return Ok(()) };
    let paths: Vec<String> =
        store::stream_paths_with_prefix(client, &ds_core::acl::literal_prefix(text))?
            .into_iter()
            .filter(|p| pattern.matches(p) && Some(p) != config.wake_stream.as_ref())
            .collect();
    store::link_at_tails(client, id, paths, false)
}

fn put(id: &str, body: &Value) -> Outcome {
    storage::require_primary("ds.try_subscription_put")?;
    validate_id(id)?;
    let config = config::parse_config(body)?;
    reject_wake_stream(config.wake_stream.as_deref(), &config.streams)?;
    Spi::connect_mut(|client| {
        tails::write_now(client)?;
        let me = acl::caller();
        let hash = store::sha256_hex(client, &config.canonical_json())?;
        // Two rounds at most: a concurrent create of the same id wins the
        // insert, and this call then compares with it.
        for _ in 0..2 {
            if let Some(row) = store::find(client, id, true)?.filter(|r| !r.deleted) {
                require_owner(client, &row)?;
                require_config_privileges(client, me, &config)?;
                if row.config_hash != hash {
                    return Err(SubError::new(
                        ErrorCode::AlreadyExists,
                        format!(
                            "subscription {id:?} already exists with a different configuration"
                        ),
                    )
                    .into());
                }
                return Ok(json!({"created": false, "subscription": document(client, &row)?}));
            }
            require_config_privileges(client, me, &config)?;
            if !store::create(client, id, me, &config, &hash)? {
                continue;
            }
            lock_membership(Membership::Subscriptions);
            backfill(client, id, &config)?;
            store::link_at_tails(client, id, config.streams.clone(), true)?;
            let row = store::find(client, id, false)?.ok_or_else(|| not_found(id))?;
            return Ok(json!({"created": true, "subscription": document(client, &row)?}));
        }
        Err(Failure::Failed(crate::error::DsError::Internal(
            "subscription creation did not settle in two rounds".into(),
        )))
    })
}

/// Creates subscription `id` from `config` (the PUT body), or confirms it
/// if it exists with the same configuration: `{"created", "subscription"}`
/// or `{"error": {...}}`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn try_subscription_put(
    id: &str,
    config: crate::jsonb_text::JsonbText,
) -> Result<pgrx::JsonB, ErrorReport> {
    respond(super::request_json(&config).and_then(|config| put(id, &config)))
}

/// `{"subscription": <doc>}` of a live subscription the caller owns.
#[pg_extern(security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn try_subscription_get(id: &str) -> Result<pgrx::JsonB, ErrorReport> {
    respond(Spi::connect_mut(|client| {
        tails::write_now(client)?;
        let row = owned(client, id, false)?;
        Ok(json!({"subscription": document(client, &row)?}))
    }))
}

/// Deletes (tombstones) a subscription: `{}`, also when there is none.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn try_subscription_delete(id: &str) -> Result<pgrx::JsonB, ErrorReport> {
    respond((|| {
        storage::require_primary("ds.try_subscription_delete")?;
        validate_id(id)?;
        Spi::connect_mut(|client| {
            match store::find(client, id, true)? {
                Some(row) if !row.deleted => {
                    require_owner(client, &row)?;
                    store::tombstone(client, id)?;
                }
                _ => {}
            }
            Ok(json!({}))
        })
    })())
}

/// Adds explicit streams (linked at their tails now; an existing glob
/// link becomes explicit too and keeps its position): `{}`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn try_subscription_add_streams(
    id: &str,
    paths: Vec<Option<String>>,
) -> Result<pgrx::JsonB, ErrorReport> {
    respond((|| {
        storage::require_primary("ds.try_subscription_add_streams")?;
        let paths =
            Value::Array(paths.into_iter().map(|p| p.map_or(Value::Null, Value::String)).collect());
        let paths = config::parse_paths(Some(&paths), "paths")?;
        Spi::connect_mut(|client| {
            tails::write_now(client)?;
            let row = owned(client, id, true)?;
            require_read(client, acl::caller(), &paths)?;
            reject_wake_stream(row.wake_stream.as_deref(), &paths)?;
            lock_membership(Membership::Subscriptions);
            store::link_at_tails(client, id, paths, true)?;
            Ok(json!({}))
        })
    })())
}

/// Removes an explicit stream (a glob link to it stays): `{}`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn try_subscription_remove_stream(
    id: &str,
    path: &str,
) -> Result<pgrx::JsonB, ErrorReport> {
    respond((|| {
        storage::require_primary("ds.try_subscription_remove_stream")?;
        config::validate_stream_path(path)?;
        Spi::connect_mut(|client| {
            owned(client, id, true)?;
            store::unlink_explicit(client, id, path)?;
            Ok(json!({}))
        })
    })())
}

/// A stream was created at `path` (`pos`: 0, or a fork's inherited tail):
/// links it to every live subscription whose pattern matches, except one
/// whose wake stream it is. Runs in the creating transaction.
pub(crate) fn link_new_stream(client: &mut SpiClient<'_>, path: &str, pos: i64) -> DsResult<()> {
    lock_membership(Membership::Streams);
    let ids: Vec<String> = store::pattern_subscriptions(client)?
        .into_iter()
        .filter(|(_, pattern, wake)| {
            wake.as_deref() != Some(path) && Pattern::parse(pattern).is_ok_and(|p| p.matches(path))
        })
        .map(|(id, _, _)| id)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    store::link_new_stream(client, path, pos, ids)
}

/// The stream at `path` is deleted or expired: drops every link to it.
pub(crate) fn unlink_stream(client: &mut SpiClient<'_>, path: &str) -> DsResult<()> {
    lock_membership(Membership::Streams);
    store::unlink_path(client, path)
}

/// Links as the claim and delivery documents show them.
pub(super) fn infos(links: &[LinkInfo]) -> Value {
    Value::Array(links.iter().map(LinkInfo::info).collect())
}
