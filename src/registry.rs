//! Stream registries (issue 13): JSON streams that list the streams under a
//! path prefix as State Protocol change messages, written in the same
//! transaction as each change (see `ds_core::registry` for the scheme).
//!
//! `ds.create_registry(prefix)` makes the stream `<prefix>__registry__`
//! (owned by the extension: no owner role, no quota) and lists every live
//! stream under the prefix; from then on, while `ds.registry` is on,
//! `streams.rs` calls [`record`] for every creation, fork, deletion and
//! expiry. Registry appends go through `ds.enqueue`'s lock-free path, so
//! concurrent creations do not queue on the registry's row lock; without a
//! sequencer (or above READ COMMITTED) they take the locking append.
//! Registry paths are reserved: nobody appends to, creates, forks onto,
//! closes or deletes them (42501); only this module writes them.

use std::cell::Cell;

use ds_core::acl::{Pattern, Privilege};
use ds_core::content_type::Mode;
use ds_core::json::Purpose;
use ds_core::notification::Announcement;
use ds_core::outcome::AppendOutcome;
use ds_core::registry::{self, Change, StreamEntry};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::acl;
use crate::append::{AppendRequest, messages_for};
use crate::apply::{self, LockWait};
use crate::error::{DsError, DsResult};
use crate::gucs;
use crate::storage::{self, Lock, NewStream, registries};
use crate::subscriptions::{Membership, lock_membership};

#[cfg(any(test, feature = "pg_test"))]
#[path = "registry_pg_tests.rs"]
mod pg_tests;

/// Streams one page of a new registry's listing covers (one append each).
const LISTING_PAGE: i64 = 1000;

/// Microseconds from the Unix epoch to Postgres' (2000-01-01).
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

thread_local! {
    /// Set while this module appends to a registry through the locking
    /// path, which would otherwise refuse the reserved path.
    static WRITING: Cell<bool> = const { Cell::new(false) };
}

/// Marks a registry append in progress until dropped.
struct Writing;

impl Writing {
    fn start() -> Writing {
        WRITING.with(|w| w.set(true));
        Writing
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        WRITING.with(|w| w.set(false));
    }
}

/// A timestamp as microseconds since the Unix epoch.
pub fn unix_micros(at: TimestampWithTimeZone) -> i64 {
    pg_sys::TimestampTz::from(at).saturating_add(PG_EPOCH_UNIX_MICROS)
}

/// The error for a write to a registry path by anyone but this module
/// (`None`: not a registry path, or this module is writing).
pub fn reserved(path: &str) -> Option<DsError> {
    (registry::is_registry_path(path) && !WRITING.with(Cell::get))
        .then(|| DsError::Reserved(path.to_owned()))
}

/// Refuses creating, forking onto or enqueuing to a registry path.
pub fn refuse_reserved(path: &str) -> DsResult<()> {
    reserved(path).map_or(Ok(()), Err)
}

/// Refuses deleting a registered registry (`ds.drop_registry` does that).
/// A stream at a reserved path that is not a registry (made before
/// registries existed) may be deleted, so its path can become one.
pub fn refuse_registered(client: &SpiClient<'_>, path: &str) -> DsResult<()> {
    match path.strip_suffix(registry::REGISTRY_NAME) {
        Some(prefix) if registry::is_registry_path(path) => {
            if registries::is_registered(client, prefix)? {
                return Err(DsError::Reserved(path.to_owned()));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The entry of a stream being created (now, in this transaction).
pub fn entry(s: &NewStream<'_>) -> StreamEntry {
    StreamEntry {
        content_type: s.content_type.clone(),
        created_at: transaction_start(),
        ttl_seconds: s.ttl_seconds,
        expires_at: s.expires_at.map(unix_micros),
        forked_from: s.fork.as_ref().map(|f| f.source_path.clone()),
    }
}

/// Appends `change` of the stream at `path` to the registries of its
/// prefixes, if `ds.registry` is on: at most `MAX_PREFIX_DEPTH + 1`
/// appends, one look-up of `ds.registries` when any could exist.
pub fn record(client: &mut SpiClient<'_>, path: &str, change: Change) -> DsResult<()> {
    if !gucs::registry() {
        return Ok(());
    }
    let prefixes = registry::candidate_prefixes(path);
    if prefixes.is_empty() {
        return Ok(());
    }
    let targets = registries::registries_of(client, &prefixes)?;
    if targets.is_empty() {
        return Ok(());
    }
    let message = registry::change_message(path, &change, txid(), transaction_start());
    for (prefix, stream_id) in targets {
        append(client, &registry::registry_path(&prefix), stream_id, vec![message.clone()])?;
    }
    Ok(())
}

/// This transaction's id (assigned now if it has none yet), as
/// `pg_current_xact_id()` shows it.
fn txid() -> u64 {
    // SAFETY: assigns a transaction id if needed; we are in a transaction.
    unsafe { pg_sys::GetTopFullTransactionId() }.value
}

/// `now()`: the start of this transaction, in Unix microseconds.
fn transaction_start() -> i64 {
    // SAFETY: plain read of transaction state.
    let at = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    at.saturating_add(PG_EPOCH_UNIX_MICROS)
}

/// Appends change messages to the registry `stream_id` at `path` on the
/// extension's behalf: the change they describe was already checked.
fn append(
    client: &mut SpiClient<'_>,
    path: &str,
    stream_id: i64,
    messages: Vec<String>,
) -> DsResult<()> {
    let body = format!("[{}]", messages.join(","));
    if crate::enqueue::lock_free_possible() {
        let stored =
            messages_for(Mode::Json, "application/json", body.as_bytes(), Purpose::Append)?;
        return crate::enqueue::enqueue_unchecked(client, path, stream_id, stored);
    }
    let _writing = Writing::start();
    let owner = acl::extension_owner(client)?;
    let request = AppendRequest {
        path,
        data: body.as_bytes(),
        content_type: None,
        stream_seq: None,
        producer: None,
        close: false,
        as_role: Some(owner),
    };
    let result = apply::execute_all(client, &[request], LockWait::Wait)?.pop();
    match result {
        Some(r) if r.outcome == AppendOutcome::Ok => Ok(()),
        other => Err(DsError::Internal(format!(
            "the append to the registry {path:?} failed: {:?}",
            other.map(|r| (r.outcome, r.detail))
        ))),
    }
}

/// Raises 42501 unless the caller holds `admin` on every path under `prefix`.
fn require_admin(client: &SpiClient<'_>, prefix: &str) -> DsResult<()> {
    let text = format!("{prefix}**");
    let pattern = Pattern::parse(&text)?;
    let me = acl::caller();
    if acl::allows_pattern(client, me, &pattern, Privilege::Admin)? {
        Ok(())
    } else {
        Err(acl::denied(me, &text, Privilege::Admin))
    }
}

/// Makes `prefix` a registered prefix (`""`: every stream): creates the
/// registry stream `<prefix>__registry__` and lists every live stream under
/// the prefix in it (`listed`). Needs `admin` on `<prefix>**`. Idempotent:
/// `created = false` if it exists. Changes are recorded while `ds.registry`
/// is on.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn create_registry(
    prefix: &str,
) -> Result<
    TableIterator<'static, (name!(path, String), name!(created, bool), name!(listed, i64))>,
    ErrorReport,
> {
    storage::require_primary("ds.create_registry")?;
    registry::validate_prefix(prefix).map_err(DsError::from)?;
    let path = registry::registry_path(prefix);
    let (created, listed) = Spi::connect_mut(|client| {
        require_admin(client, prefix)?;
        // Creations and deletions in flight commit first (the listing then
        // sees them); later ones wait for this transaction (and then see the
        // registry): none is missed, none listed twice.
        lock_membership(Membership::Subscriptions);
        if registries::is_registered(client, prefix)? {
            return Ok((false, 0));
        }
        let wanted = NewStream {
            path: &path,
            content_type: "application/json".into(),
            ttl_seconds: None,
            expires_at: None,
            closed: false,
            fork: None,
            owner_role: None,
            retained_from: ds_core::Offset::ZERO,
        };
        let not_a_registry = || DsError::Conflict {
            path: path.clone(),
            differences: "a stream that is not a registry holds the path; delete it first".into(),
        };
        if storage::find_stream(client, &path, Lock::ForWrite)?.is_some() {
            return Err(not_a_registry());
        }
        let stream_id = storage::insert_stream(client, &wanted)?.ok_or_else(not_a_registry)?;
        crate::subscriptions::link_new_stream(client, &path, 0)?;
        registries::insert_registry(client, prefix, stream_id)?;
        Ok((true, list_streams(client, prefix, &path, stream_id)?))
    })?;
    Ok(TableIterator::once((path, created, listed)))
}

/// Appends an `insert` for every live stream under `prefix` to its new
/// registry, a page at a time; returns how many.
fn list_streams(
    client: &mut SpiClient<'_>,
    prefix: &str,
    path: &str,
    stream_id: i64,
) -> DsResult<i64> {
    let (txid, now) = (txid(), transaction_start());
    let mut after = String::new();
    let mut listed = 0;
    loop {
        let page = registries::live_streams_under(client, prefix, &after, LISTING_PAGE)?;
        let Some((last, _)) = page.last() else { return Ok(listed) };
        after = last.clone();
        let messages: Vec<String> = page
            .into_iter()
            .filter(|(p, _)| !registry::is_registry_path(p))
            .map(|(p, entry)| registry::change_message(&p, &Change::Insert(entry), txid, now))
            .collect();
        if !messages.is_empty() {
            listed += messages.len() as i64;
            append(client, path, stream_id, messages)?;
        }
    }
}

/// Unregisters `prefix` and deletes its registry stream (kept pathless
/// while forks of it read it). Needs `admin` on `<prefix>**`. False if the
/// prefix was not registered.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_registry(prefix: &str) -> Result<bool, ErrorReport> {
    storage::require_primary("ds.drop_registry")?;
    registry::validate_prefix(prefix).map_err(DsError::from)?;
    let path = registry::registry_path(prefix);
    Ok(Spi::connect_mut(|client| {
        require_admin(client, prefix)?;
        let Some(stream_id) = registries::delete_registry(client, prefix)? else {
            return Ok::<_, DsError>(false);
        };
        if let Some(row) = storage::find_stream_by_id(client, stream_id, Lock::ForWrite)? {
            crate::streams::retire_stream(client, &path, row, true)?;
            storage::notify(client, &Announcement::Deleted { path: path.clone() }.line())?;
        }
        Ok(true)
    })?)
}
