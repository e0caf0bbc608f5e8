//! Wakes and their delivery: pull-wake claim/ack/release, webhook
//! callbacks, the tick that starts wakes and expires leases, and the
//! webhook delivery queue the sidecar works off.

use std::collections::HashMap;

use ds_core::subscription::config::Kind;
use ds_core::subscription::doc::LinkInfo;
use ds_core::subscription::wake::{self, Cursor, WakeRequest};
use ds_core::subscription::{ErrorCode, SubError, validate_id, validate_worker};
use ds_core::{Error as CoreError, acl::Privilege};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::{Value, json};

use super::control::{infos, owned};
use super::{Failure, Outcome, not_found, respond};
use crate::append::{self, AppendRequest};
use crate::error::{DsError, DsResult};
use crate::storage::{self, subscriptions as store, subscriptions::SubscriptionRow};
use crate::{acl, tails};

fn first_pending(links: &[LinkInfo]) -> Option<&str> {
    links.iter().find(|l| l.has_pending()).map(|l| l.path.as_str())
}

/// Starts a wake of `row` (see `store::start_wake`); a pull-wake wake also
/// appends its event to the wake stream. Returns `(generation, wake_id)`.
fn start_wake(
    client: &mut SpiClient<'_>,
    row: &SubscriptionRow,
    links: &[LinkInfo],
) -> DsResult<(i64, String)> {
    let token = match row.kind.as_str() {
        "webhook" => Some(store::new_token(client)?),
        _ => None,
    };
    let (generation, wake_id) = store::start_wake(client, &row.id, token.as_deref())?;
    if let Some(wake_stream) = row.wake_stream.as_deref() {
        post_wake_event(client, row, wake_stream, generation, first_pending(links).unwrap_or(""))?;
    }
    Ok((generation, wake_id))
}

/// Appends `{"type": "wake", ...}` to the wake stream, as the extension
/// (the subscription's owner must still hold `append` on it). If it cannot,
/// the subscription is marked failed and the wake stays claimable.
fn post_wake_event(
    client: &mut SpiClient<'_>,
    row: &SubscriptionRow,
    wake_stream: &str,
    generation: i64,
    stream: &str,
) -> DsResult<()> {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let event = json!({"type": "wake", "subscription_id": row.id, "stream": stream,
                       "generation": generation, "ts": ts})
    .to_string();
    let problem = if !acl::allows(client, row.owner_role, wake_stream, Privilege::Append)? {
        Some(format!(
            "role {:?} lacks append on the wake stream {wake_stream:?}",
            acl::role_name(row.owner_role)
        ))
    } else {
        let result = append::execute(
            client,
            AppendRequest {
                path: wake_stream,
                data: event.as_bytes(),
                content_type: None,
                stream_seq: None,
                producer: None,
                close: false,
                as_role: Some(row.owner_role),
            },
        )?;
        match result.outcome {
            ds_core::outcome::AppendOutcome::Ok => None,
            other => Some(format!(
                "could not append to the wake stream {wake_stream:?}: {}{}",
                other.name(),
                result.detail.map(|d| format!(" ({d})")).unwrap_or_default()
            )),
        }
    };
    match problem {
        None if row.status == "failed" => store::set_status(client, &row.id, None),
        None => Ok(()),
        Some(message) => {
            warning!("durable_streams: subscription {:?}: {message}", row.id);
            store::set_status(client, &row.id, Some(&message))
        }
    }
}

/// Ends the current wake and starts the next one if work is pending.
/// Returns whether it did.
fn next_wake(client: &mut SpiClient<'_>, row: &SubscriptionRow) -> DsResult<bool> {
    store::end_wake(client, &row.id)?;
    let links = store::links(client, &row.id)?;
    if first_pending(&links).is_none() {
        return Ok(false);
    }
    start_wake(client, row, &links)?;
    Ok(true)
}

fn claim(id: &str, worker: &str) -> Outcome {
    storage::require_primary("ds.try_subscription_claim")?;
    validate_worker(worker)?;
    Spi::connect_mut(|client| {
        tails::write_now(client)?;
        let mut row = owned(client, id, true)?;
        if row.kind != Kind::PullWake.as_str() {
            return Err(SubError::invalid(format!("subscription {id:?} is not pull-wake")).into());
        }
        if row.lease_expired {
            store::end_wake(client, id)?;
            (row.holder, row.wake_id) = (None, None);
        }
        if let Some(holder) = &row.holder {
            return Err(SubError::new(
                ErrorCode::AlreadyClaimed,
                format!("subscription {id:?} is claimed"),
            )
            .with("current_holder", json!(holder))
            .with("generation", json!(row.generation))
            .into());
        }
        let mut links = store::links(client, id)?;
        if first_pending(&links).is_none() {
            if row.wake_id.is_some() {
                store::end_wake(client, id)?;
            }
            return Err(SubError::new(
                ErrorCode::NoPendingWork,
                "subscription has no pending work",
            )
            .into());
        }
        let (generation, wake_id) = match row.wake_id.clone() {
            Some(wake_id) => (row.generation, wake_id),
            None => {
                let started = start_wake(client, &row, &links)?;
                links = store::links(client, id)?;
                started
            }
        };
        let token = store::new_token(client)?;
        store::hold(client, id, worker, &token)?;
        Ok(json!({"wake_id": wake_id, "generation": generation, "token": token,
                  "streams": infos(&links), "lease_ttl_ms": row.lease_ttl_ms}))
    })
}

/// The current wake of `id`, if `request` names it and `token` is its
/// token: FENCED for another wake (or a deleted subscription, or a lease
/// that ran out), TOKEN_INVALID for a wrong token.
fn fenced_wake(
    client: &mut SpiClient<'_>,
    id: &str,
    token: &str,
    request: &WakeRequest,
    kind: Kind,
) -> Result<SubscriptionRow, Failure> {
    let fenced = |why: &str| -> Failure { SubError::new(ErrorCode::Fenced, why.to_owned()).into() };
    let row = match store::find(client, id, true)? {
        None => return Err(not_found(id)),
        Some(row) if row.deleted => return Err(fenced("the subscription was deleted")),
        Some(row) => row,
    };
    if row.kind != kind.as_str() {
        return Err(
            SubError::invalid(format!("subscription {id:?} is not {}", kind.as_str())).into()
        );
    }
    if row.lease_expired {
        store::end_wake(client, id)?;
        return Err(fenced("the wake's lease ran out"));
    }
    if row.wake_id.as_deref() != Some(request.wake_id.as_str())
        || row.generation != request.generation
    {
        return Err(fenced("the wake generation is stale"));
    }
    if !store::token_matches(client, id, token)? {
        return Err(SubError::new(ErrorCode::TokenInvalid, "token invalid").into());
    }
    Ok(row)
}

fn ack(id: &str, token: &str, body: &Value, kind: Kind) -> Outcome {
    storage::require_primary("ds.try_subscription_ack")?;
    validate_id(id)?;
    let request = wake::parse_request(body)?;
    Spi::connect_mut(|client| {
        tails::write_now(client)?;
        let row = fenced_wake(client, id, token, &request, kind)?;
        let links = store::links(client, id)?;
        let cursors: HashMap<String, Cursor> =
            links.into_iter().map(|l| (l.path, Cursor { acked: l.acked, tail: l.tail })).collect();
        let moves = wake::validate_acks(&request.acks, &cursors)?;
        if !moves.is_empty() {
            let (paths, positions) = moves.into_iter().map(|(p, o)| (p, o.as_i64())).unzip();
            store::advance_acks(client, id, paths, positions)?;
        }
        store::extend_lease(client, id)?;
        let next = request.done && next_wake(client, &row)?;
        Ok(json!({"ok": true, "next_wake": next}))
    })
}

fn release(id: &str, token: &str, body: &Value) -> Outcome {
    storage::require_primary("ds.try_subscription_release")?;
    validate_id(id)?;
    let request = wake::parse_request(body)?;
    Spi::connect_mut(|client| {
        tails::write_now(client)?;
        let row = fenced_wake(client, id, token, &request, Kind::PullWake)?;
        next_wake(client, &row)?;
        Ok(json!({}))
    })
}

/// Claims the wake of a pull-wake subscription for `worker` (starting one
/// if work is pending): `{wake_id, generation, token, streams, lease_ttl_ms}`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn try_subscription_claim(id: &str, worker: &str) -> Result<pgrx::JsonB, ErrorReport> {
    respond(claim(id, worker))
}

/// Acknowledges offsets of a claimed pull-wake wake (`request`:
/// `{wake_id, generation, acks, done}`): `{"ok": true, "next_wake"}`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn try_subscription_ack(
    id: &str,
    token: &str,
    request: crate::jsonb_text::JsonbText,
) -> Result<pgrx::JsonB, ErrorReport> {
    respond(
        super::request_json(&request).and_then(|request| ack(id, token, &request, Kind::PullWake)),
    )
}

/// The webhook receiver's callback: as `try_subscription_ack`, with the
/// token of the delivered wake.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn try_subscription_callback(
    id: &str,
    token: &str,
    request: crate::jsonb_text::JsonbText,
) -> Result<pgrx::JsonB, ErrorReport> {
    respond(
        super::request_json(&request).and_then(|request| ack(id, token, &request, Kind::Webhook)),
    )
}

/// Gives a claimed pull-wake wake up without acknowledging: `{}`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn try_subscription_release(
    id: &str,
    token: &str,
    request: pgrx::JsonB,
) -> Result<pgrx::JsonB, ErrorReport> {
    respond(release(id, token, &request.0))
}

fn positive(name: &str, value: i32) -> DsResult<()> {
    if value > 0 {
        Ok(())
    } else {
        Err(CoreError::InvalidArguments(format!("{name} must be positive, got {value}")).into())
    }
}

/// One round of the scheduler: clears the wakes of up to
/// `max_subscriptions` leases that ran out, then starts a wake for up to
/// `max_subscriptions` idle subscriptions with pending work (rows other
/// transactions hold are skipped). Returns the number of wakes started.
pub(crate) fn tick(client: &mut SpiClient<'_>, max_subscriptions: i32) -> DsResult<i32> {
    tails::write_now(client)?;
    store::expire_leases(client, max_subscriptions)?;
    let mut started = 0;
    for id in store::idle_with_pending(client, max_subscriptions)? {
        let Some(row) = store::find(client, &id, true)? else { continue };
        let links = store::links(client, &id)?;
        start_wake(client, &row, &links)?;
        started += 1;
    }
    Ok(started)
}

/// Runs one round of the scheduler (the maintenance worker also runs it
/// every pass). Returns the number of wakes started. On a hot standby there
/// is nothing to schedule (the primary does it): 0, not an error, so a
/// sidecar whose database is a standby (reads only, or waiting for a
/// failover) keeps its connections instead of discarding them as stale.
#[pg_extern(name = "subscription_tick", security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn subscription_tick(max_subscriptions: i32) -> Result<i32, ErrorReport> {
    positive("max_subscriptions", max_subscriptions)?;
    if storage::in_recovery() {
        return Ok(0);
    }
    Ok(Spi::connect_mut(|client| tick(client, max_subscriptions))?)
}

/// Takes up to `max` webhook wakes due for delivery (skipping rows other
/// senders hold) and makes each due again `in_flight_ms` later, so a
/// sender that dies mid-delivery is retried by another.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn subscription_deliveries(
    max: i32,
    in_flight_ms: i32,
) -> Result<
    TableIterator<
        'static,
        (
            name!(subscription_id, String),
            name!(wake_id, String),
            name!(generation, i64),
            name!(url, String),
            name!(streams, pgrx::JsonB),
            name!(callback_token, String),
            name!(attempts, i32),
        ),
    >,
    ErrorReport,
> {
    positive("max", max)?;
    positive("in_flight_ms", in_flight_ms)?;
    // A hot standby delivers nothing (see `subscription_tick`).
    let rows = if storage::in_recovery() {
        Vec::new()
    } else {
        Spi::connect_mut(|client| -> DsResult<Vec<_>> {
            tails::write_now(client)?;
            let mut out = Vec::new();
            for d in store::claim_deliveries(client, max, in_flight_ms)? {
                let current: HashMap<String, LinkInfo> =
                    store::links(client, &d.id)?.into_iter().map(|l| (l.path.clone(), l)).collect();
                let streams: Vec<LinkInfo> = d
                    .snapshot
                    .iter()
                    .filter_map(|(path, tail)| {
                        let link = current.get(path)?;
                        Some(LinkInfo { tail: ds_core::Offset::from_i64(*tail), ..link.clone() })
                    })
                    .collect();
                out.push((
                    d.id,
                    d.wake_id,
                    d.generation,
                    d.url,
                    pgrx::JsonB(infos(&streams)),
                    d.callback_token,
                    d.attempts,
                ));
            }
            Ok(out)
        })?
    };
    Ok(TableIterator::new(rows))
}

/// Records how the delivery of a webhook wake went (`outcome`: `delivered`
/// (2xx), `done` (2xx with `{"done": true}`), `failed`). False if the wake
/// is no longer current (ignored).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn subscription_delivery_result(
    id: &str,
    wake_id: &str,
    generation: i64,
    outcome: &str,
    error: default!(Option<&str>, "NULL"),
) -> Result<bool, ErrorReport> {
    storage::require_primary("ds.subscription_delivery_result")?;
    if !matches!(outcome, "delivered" | "done" | "failed") {
        return Err(DsError::from(CoreError::InvalidArguments(format!(
            "outcome must be delivered, done or failed, not {outcome:?}"
        )))
        .into());
    }
    Ok(Spi::connect_mut(|client| -> DsResult<bool> {
        tails::write_now(client)?;
        let row = match store::find(client, id, true)? {
            Some(row)
                if !row.deleted
                    && row.kind == Kind::Webhook.as_str()
                    && row.wake_id.as_deref() == Some(wake_id)
                    && row.generation == generation =>
            {
                row
            }
            _ => return Ok(false),
        };
        match outcome {
            "delivered" => store::delivered(client, id)?,
            "done" => {
                store::delivered(client, id)?;
                store::ack_snapshot(client, id)?;
                next_wake(client, &row)?;
            }
            _ => {
                let jitter = 0.8 + 0.4 * store::random(client)?;
                let delay = wake::retry_delay_ms(row.attempts.saturating_add(1), jitter);
                store::delivery_failed(client, id, error.unwrap_or("delivery failed"), delay)?;
            }
        }
        Ok(true)
    })?)
}
