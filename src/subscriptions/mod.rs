//! Subscriptions (webhook and pull-wake, issue 11): the SQL surface.
//!
//! State lives in `ds.subscriptions` (one row per id, tombstoned on delete
//! so `generation` survives a re-create) and `ds.subscription_links` (one
//! row per subscription and stream path, with the acknowledged position).
//! Pending work is derived, never marked: a link whose live stream's tail
//! is past its acknowledged position. The tail is written by the append's
//! own transaction, so a committed append cannot lose its wake, and
//! appends write nothing for subscriptions.
//!
//! - `control`: put/get/delete and stream membership, plus the links that
//!   `ds.create`, `ds.fork` and stream deletion write in their transaction;
//! - `delivery`: wakes, claim/ack/callback/release, the tick, webhook
//!   deliveries and their results;
//! - `keys`: the webhook signing keys and the JWKS document.
//!
//! Every `ds.try_subscription_*` returns its outcome as `jsonb` (the result
//! or `{"error": {...}}`, for the sidecar); the `ds.subscription_*`
//! wrappers (PL/pgSQL, below) raise on an error object with the SQLSTATEs
//! of `ds_core::subscription::ErrorCode`.

mod control;
mod delivery;
mod keys;

pub(crate) use control::{link_new_stream, unlink_stream};
pub(crate) use delivery::tick;

use ds_core::subscription::{ErrorCode, SubError};
use pgrx::pg_sys::panic::ErrorReport;
use serde_json::Value;

use crate::error::DsError;

/// Why a subscription call did not produce a result: refused (an error
/// object for the caller) or failed (raised: a bug or a server condition).
#[derive(Debug)]
enum Failure {
    Refused(SubError),
    Failed(DsError),
}

impl From<SubError> for Failure {
    fn from(e: SubError) -> Self {
        Failure::Refused(e)
    }
}

impl From<DsError> for Failure {
    fn from(e: DsError) -> Self {
        match e {
            // A missing privilege is an answer, not a failure.
            DsError::Forbidden { .. } => {
                Failure::Refused(SubError::new(ErrorCode::Forbidden, e.to_string()))
            }
            e => Failure::Failed(e),
        }
    }
}

impl From<pgrx::spi::Error> for Failure {
    fn from(e: pgrx::spi::Error) -> Self {
        Failure::Failed(e.into())
    }
}

type Outcome = Result<Value, Failure>;

/// A jsonb request or configuration as a JSON value: nested too deep for
/// the parser it is an invalid request (refused like any other), not an
/// internal error (see `crate::jsonb_text`).
fn request_json(body: &crate::jsonb_text::JsonbText) -> Result<Value, Failure> {
    serde_json::from_slice(&body.0).map_err(|e| {
        Failure::Refused(SubError::invalid(format!("the request is not usable JSON: {e}")))
    })
}

/// The `jsonb` a `ds.try_subscription_*` function returns.
fn respond(outcome: Outcome) -> Result<pgrx::JsonB, ErrorReport> {
    match outcome {
        Ok(v) => Ok(pgrx::JsonB(v)),
        Err(Failure::Refused(e)) => Ok(pgrx::JsonB(e.to_json())),
        Err(Failure::Failed(e)) => Err(e.into()),
    }
}

/// Which side of the membership lock a transaction takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Membership {
    /// Stream creation and deletion: many at once.
    Streams,
    /// Subscription creation, explicit links and registry creation
    /// (`ds.create_registry` lists the streams that exist): alone.
    Subscriptions,
}

/// Keeps the creation of pattern links apart from stream creation and
/// deletion until the transaction ends. Without it, a stream created while
/// a pattern subscription is created is linked by neither: the creating
/// transaction does not see the uncommitted subscription, and the
/// subscription's backfill does not see the uncommitted stream. With it,
/// whichever comes second waits for the first to commit, and its next
/// statement (READ COMMITTED: a new snapshot) sees it. Stream creators take
/// it shared, so they never wait for each other. A heavyweight lock with our
/// own tag space (`0x6474`), not an advisory lock applications could take.
pub(crate) fn lock_membership(side: Membership) {
    let tag = pgrx::pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set once the backend is connected.
        locktag_field1: unsafe { pgrx::pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: 0,
        locktag_field3: 0,
        locktag_field4: MEMBERSHIP_LOCK_SPACE,
        locktag_type: pgrx::pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pgrx::pg_sys::DEFAULT_LOCKMETHOD as u8,
    };
    let mode = match side {
        Membership::Streams => pgrx::pg_sys::ShareLock,
        Membership::Subscriptions => pgrx::pg_sys::ExclusiveLock,
    };
    // SAFETY: a transaction-level heavyweight lock on a tag we own; waits
    // like any lock (deadlock detection, lock_timeout, cancellation).
    unsafe { pgrx::pg_sys::LockAcquire(&tag, mode as pgrx::pg_sys::LOCKMODE, false, false) };
}

/// The lock tag space of [`lock_membership`] (`enqueue.rs` uses `0x6473`).
const MEMBERSHIP_LOCK_SPACE: u16 = 0x6474;

fn not_found(id: &str) -> Failure {
    Failure::Refused(SubError::new(
        ErrorCode::NotFound,
        format!("subscription {id:?} does not exist"),
    ))
}

pgrx::extension_sql!(
    r#"
-- Raises the error object a ds.try_subscription_* function returned, with
-- the SQLSTATE of its code (ds_core::subscription::ErrorCode::sqlstate);
-- returns any other result unchanged. SECURITY DEFINER like every ds function
-- (it reads nothing: the invariant stays simple to check).
CREATE FUNCTION ds.subscription_checked(result jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp AS $$
DECLARE
    code text := result OPERATOR(pg_catalog.#>>) '{error,code}';
BEGIN
    IF code IS NULL THEN
        RETURN result;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = CASE code
            WHEN 'INVALID_REQUEST' THEN 'SD001'
            WHEN 'WEBHOOK_URL_REJECTED' THEN 'SD002'
            WHEN 'SUBSCRIPTION_NOT_FOUND' THEN 'SD003'
            WHEN 'SUBSCRIPTION_ALREADY_EXISTS' THEN 'SD004'
            WHEN 'TOKEN_INVALID' THEN 'SD005'
            WHEN 'FENCED' THEN 'SD006'
            WHEN 'ALREADY_CLAIMED' THEN 'SD007'
            WHEN 'NO_PENDING_WORK' THEN 'SD008'
            WHEN 'INVALID_OFFSET' THEN 'SD009'
            WHEN 'FORBIDDEN' THEN '42501'
            ELSE 'XX000' END,
        MESSAGE = code OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||)
                  coalesce(result OPERATOR(pg_catalog.#>>) '{error,message}', ''),
        DETAIL = (result OPERATOR(pg_catalog.->) 'error')::text;
END
$$;

CREATE FUNCTION ds.subscription_put(id text, config jsonb) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_put(id, config)) $$;
CREATE FUNCTION ds.subscription_get(id text) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_get(id)) $$;
CREATE FUNCTION ds.subscription_delete(id text) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_delete(id)) $$;
CREATE FUNCTION ds.subscription_add_streams(id text, paths text[]) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_add_streams(id, paths)) $$;
CREATE FUNCTION ds.subscription_remove_stream(id text, path text) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_remove_stream(id, path)) $$;
CREATE FUNCTION ds.subscription_claim(id text, worker text) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_claim(id, worker)) $$;
CREATE FUNCTION ds.subscription_ack(id text, token text, request jsonb) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_ack(id, token, request)) $$;
CREATE FUNCTION ds.subscription_callback(id text, token text, request jsonb) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_callback(id, token, request)) $$;
CREATE FUNCTION ds.subscription_release(id text, token text, request jsonb) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_release(id, token, request)) $$;
"#,
    name = "subscription_wrappers",
    requires = [
        control::try_subscription_put,
        control::try_subscription_get,
        control::try_subscription_delete,
        control::try_subscription_add_streams,
        control::try_subscription_remove_stream,
        delivery::try_subscription_claim,
        delivery::try_subscription_ack,
        delivery::try_subscription_callback,
        delivery::try_subscription_release,
    ],
);

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;
