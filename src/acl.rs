//! Who may do what to which path: the checks every `ds.*` function makes
//! before it touches data, and `ds.grant` / `ds.revoke` / `ds.grants`.
//!
//! The role that counts is the one the session acts as: its login role, or
//! what `SET [LOCAL] ROLE` made it (the sidecar runs each request that way).
//! Our functions are SECURITY DEFINER, so `current_user` inside them is the
//! extension's owner; Postgres keeps the acting role as the "outer user"
//! (`GetOuterUserId`), which SECURITY DEFINER does not change. An
//! application's own SECURITY DEFINER wrapper therefore does not lend its
//! owner's stream privileges to its callers.
//!
//! Superusers and the extension's owner pass every check, as does everyone
//! while `ds.path_checks` is off. Grants are read once per role and
//! transaction (so a revoke counts from the next transaction on) and
//! matched by `ds_core::acl`. This module runs the SQL of its own tables
//! (`ds.path_grants`, `ds.settings`); storage.rs runs everything else.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::rc::Rc;

use ds_core::acl::{self, Grant, Pattern, Privilege, Privileges};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::error::{DsError, DsResult};
use crate::gucs;
use crate::storage;

/// Roles whose grants one transaction keeps; a batch names at most a few
/// hundred. Past this the cache starts over (correct, just slower).
const MAX_CACHED_ROLES: usize = 1024;

#[derive(Default)]
struct Cache {
    /// Local transaction id the entries belong to.
    lxid: u32,
    /// Bumped by `ds.grant` / `ds.revoke` in this backend.
    generation: u64,
    loaded_generation: u64,
    owner: Option<Oid>,
    grants: HashMap<Oid, Rc<Vec<Grant>>>,
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// Runs `f` on the cache, emptied first if it belongs to another
/// transaction or grants changed since it was filled.
fn with_cache<T>(f: impl FnOnce(&mut Cache) -> T) -> T {
    // SAFETY: MyProc is this backend's PGPROC, set up before any SQL runs.
    let lxid = unsafe { (*pg_sys::MyProc).lxid };
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.lxid != lxid || c.loaded_generation != c.generation {
            c.lxid = lxid;
            c.loaded_generation = c.generation;
            c.owner = None;
            c.grants.clear();
        }
        f(&mut c)
    })
}

fn invalidate() {
    CACHE.with(|c| c.borrow_mut().generation += 1);
}

/// The role the session acts as (see the module comment).
pub fn caller() -> Oid {
    // SAFETY: plain read of backend state.
    unsafe { pg_sys::GetOuterUserId() }
}

/// A role's name, for messages (`#<oid>` if it was dropped meanwhile).
pub fn role_name(role: Oid) -> String {
    // SAFETY: with noerr = true this returns NULL for an unknown role.
    let name = unsafe { pg_sys::GetUserNameFromId(role, true) };
    if name.is_null() {
        format!("#{}", role.to_u32())
    } else {
        // SAFETY: a palloc'd NUL-terminated string.
        unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned()
    }
}

/// The OID of the role called `name`, if there is one.
pub fn role_oid(name: &str) -> Option<Oid> {
    let name = CString::new(name).ok()?;
    // SAFETY: with missing_ok = true this returns InvalidOid instead of raising.
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Whether `member` may `SET ROLE` to `role` (the sidecar, on behalf of a token).
pub fn may_become(member: Oid, role: Oid) -> bool {
    // SAFETY: catalog lookups through Postgres' role membership cache.
    member == role || unsafe { pg_sys::is_member_of_role(member, role) }
}

pub fn extension_owner(client: &SpiClient<'_>) -> DsResult<Oid> {
    if let Some(owner) = with_cache(|c| c.owner) {
        return Ok(owner);
    }
    let owner = storage::select(
            client,
            "SELECT extowner FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'durable_streams'",
            Some(1),
            &[],
        )?
        .first()
        .get_one::<Oid>()?
        .unwrap_or(pg_sys::InvalidOid);
    with_cache(|c| c.owner = Some(owner));
    Ok(owner)
}

/// Whether `role` surely skips path checks, without running SQL (the
/// extension's owner is known only once [`extension_owner`] read it).
pub fn exempt_without_sql(role: Oid) -> bool {
    // SAFETY: catalog lookup.
    !gucs::path_checks()
        || unsafe { pg_sys::superuser_arg(role) }
        || with_cache(|c| c.owner) == Some(role)
}

/// Whether `role` skips path checks: superusers, the extension's owner, and
/// everyone while `ds.path_checks` is off.
pub fn exempt(client: &SpiClient<'_>, role: Oid) -> DsResult<bool> {
    // SAFETY: catalog lookup.
    Ok(!gucs::path_checks() || unsafe { pg_sys::superuser_arg(role) } || {
        role == extension_owner(client)?
    })
}

/// The grants that apply to `role`: its own and those of every role whose
/// privileges it has (inherited membership).
fn grants_of(client: &SpiClient<'_>, role: Oid) -> DsResult<Rc<Vec<Grant>>> {
    if let Some(g) = with_cache(|c| c.grants.get(&role).cloned()) {
        return Ok(g);
    }
    let table = storage::select(
        client,
        "SELECT pattern, privileges FROM ds.path_grants \
         WHERE pg_catalog.pg_has_role($1, grantee::pg_catalog.oid, 'USAGE')",
        None,
        &[role.into()],
    )?;
    let mut grants = Vec::new();
    for row in table {
        let (Some(pattern), Some(bits)) = (row.get::<String>(1)?, row.get::<i32>(2)?) else {
            continue;
        };
        // Patterns were checked on the way in; fail closed on anything else.
        if let Ok(pattern) = Pattern::parse(&pattern) {
            grants.push(Grant { pattern, privileges: Privileges::from_bits(bits) });
        }
    }
    let grants = Rc::new(grants);
    with_cache(|c| {
        if c.grants.len() >= MAX_CACHED_ROLES {
            c.grants.clear();
        }
        c.grants.insert(role, Rc::clone(&grants));
    });
    Ok(grants)
}

/// Whether `role` holds `privilege` on `path`.
pub fn allows(
    client: &SpiClient<'_>,
    role: Oid,
    path: &str,
    privilege: Privilege,
) -> DsResult<bool> {
    Ok(exempt(client, role)? || acl::allows(&grants_of(client, role)?, path, privilege))
}

/// Whether `role` holds `privilege` on every path `pattern` matches.
pub fn allows_pattern(
    client: &SpiClient<'_>,
    role: Oid,
    pattern: &Pattern,
    privilege: Privilege,
) -> DsResult<bool> {
    Ok(exempt(client, role)? || acl::allows_pattern(&grants_of(client, role)?, pattern, privilege))
}

/// The error for `role` lacking `privilege` on `path`.
pub fn denied(role: Oid, path: &str, privilege: Privilege) -> DsError {
    DsError::Forbidden { role: role_name(role), path: path.to_owned(), privilege }
}

/// Raises 42501 unless `role` holds `privilege` on `path`.
pub fn require(
    client: &SpiClient<'_>,
    role: Oid,
    path: &str,
    privilege: Privilege,
) -> DsResult<()> {
    if allows(client, role, path, privilege)? { Ok(()) } else { Err(denied(role, path, privilege)) }
}

/// Validates `path`, then [`require`]s `privilege` on it for the caller: the
/// first thing every single-path function does, so that a role without the
/// privilege learns nothing about the stream (not even whether it exists).
pub fn check_path(client: &SpiClient<'_>, path: &str, privilege: Privilege) -> DsResult<()> {
    ds_core::limits::validate_path(path)?;
    require(client, caller(), path, privilege)
}

/// The channel the doorbell announces on (see `ds.settings`).
pub fn notify_channel(client: &SpiClient<'_>) -> DsResult<String> {
    Ok(client
        .select(
            "SELECT value FROM ds.settings WHERE key OPERATOR(pg_catalog.=) 'notify_channel'",
            Some(1),
            &[],
        )?
        .first()
        .get_one::<String>()?
        .unwrap_or_else(|| ds_core::notification::CHANNEL.to_owned()))
}

/// Checks that the caller may grant or revoke on `pattern`: superuser,
/// owner, or `admin` on a pattern that covers it.
fn require_admin(client: &SpiClient<'_>, pattern: &Pattern, text: &str) -> DsResult<()> {
    let role = caller();
    if exempt(client, role)? || acl::administers(&grants_of(client, role)?, pattern) {
        return Ok(());
    }
    Err(DsError::Forbidden {
        role: role_name(role),
        path: text.to_owned(),
        privilege: Privilege::Admin,
    })
}

fn grantee_oid(role: &str) -> DsResult<Oid> {
    role_oid(role).ok_or_else(|| DsError::NoSuchRole(role.to_owned()))
}

/// Gives `role` the `privileges` (comma-separated names, or `all`) on every
/// path `pattern` matches. Adds to what the role already has there. Needs
/// `admin` on a pattern covering `pattern` (or superuser / owner).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn grant(role: &str, pattern: &str, privileges: &str) -> Result<(), ErrorReport> {
    storage::require_primary("ds.grant")?;
    let parsed = Pattern::parse(pattern).map_err(DsError::from)?;
    let privileges = Privileges::parse(privileges).map_err(DsError::from)?;
    let grantee = grantee_oid(role)?;
    Spi::connect_mut(|client| -> DsResult<()> {
        require_admin(client, &parsed, pattern)?;
        client.update(
            "INSERT INTO ds.path_grants (grantee, pattern, privileges, granted_by) \
             VALUES ($1::pg_catalog.regrole, $2, $3, $4::pg_catalog.regrole) \
             ON CONFLICT (grantee, pattern) DO UPDATE \
             SET privileges = ds.path_grants.privileges OPERATOR(pg_catalog.|) excluded.privileges, \
                 granted_by = excluded.granted_by, granted_at = pg_catalog.now()",
            None,
            &[grantee.into(), pattern.into(), privileges.bits().into(), caller().into()],
        )?;
        Ok(())
    })?;
    invalidate();
    Ok(())
}

/// Takes `privileges` (default: all) on `pattern` back from `role`; the
/// grant disappears when nothing is left. Revokes exactly the grant made
/// on `pattern`, not grants on other patterns that overlap it. Same
/// privilege rule as `ds.grant`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn revoke(
    role: &str,
    pattern: &str,
    privileges: default!(&str, "'all'"),
) -> Result<(), ErrorReport> {
    storage::require_primary("ds.revoke")?;
    let parsed = Pattern::parse(pattern).map_err(DsError::from)?;
    let privileges = Privileges::parse(privileges).map_err(DsError::from)?;
    let grantee = grantee_oid(role)?;
    Spi::connect_mut(|client| -> DsResult<()> {
        require_admin(client, &parsed, pattern)?;
        // A grant left with no privilege goes; otherwise it keeps the rest.
        let keep = (!privileges.bits()).into();
        client.update(
            "DELETE FROM ds.path_grants \
             WHERE grantee OPERATOR(pg_catalog.=) $1::pg_catalog.regrole \
               AND pattern OPERATOR(pg_catalog.=) $2 \
               AND (privileges OPERATOR(pg_catalog.&) $3) OPERATOR(pg_catalog.=) 0",
            None,
            &[grantee.into(), pattern.into(), keep],
        )?;
        client.update(
            "UPDATE ds.path_grants \
             SET privileges = privileges OPERATOR(pg_catalog.&) $3 \
             WHERE grantee OPERATOR(pg_catalog.=) $1::pg_catalog.regrole \
               AND pattern OPERATOR(pg_catalog.=) $2",
            None,
            &[grantee.into(), pattern.into(), (!privileges.bits()).into()],
        )?;
        Ok(())
    })?;
    invalidate();
    Ok(())
}

/// The grants the caller may see: its own (and its roles'), those within
/// patterns it administers, and all of them for superusers and the owner.
/// Behind the `ds.grants` view.
#[pg_extern(security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
fn list_grants() -> Result<
    TableIterator<
        'static,
        (
            name!(grantee, String),
            name!(pattern, String),
            name!(privileges, Vec<String>),
            name!(granted_by, Option<String>),
            name!(granted_at, TimestampWithTimeZone),
        ),
    >,
    ErrorReport,
> {
    let rows = Spi::connect(|client| -> DsResult<Vec<_>> {
        let me = caller();
        let everything = exempt(client, me)?;
        let mine = grants_of(client, me)?;
        let table = client.select(
            "SELECT grantee::pg_catalog.oid, pattern, privileges, granted_by::pg_catalog.oid, \
                    granted_at, pg_catalog.pg_has_role($1, grantee::pg_catalog.oid, 'USAGE') \
             FROM ds.path_grants ORDER BY grantee::pg_catalog.text, pattern",
            None,
            &[me.into()],
        )?;
        let mut out = Vec::new();
        for row in table {
            let grantee: Oid = row.get(1)?.unwrap_or(pg_sys::InvalidOid);
            let pattern: String = row.get(2)?.unwrap_or_default();
            let own = row.get::<bool>(6)?.unwrap_or(false);
            let visible = everything
                || own
                || Pattern::parse(&pattern).is_ok_and(|p| acl::administers(&mine, &p));
            if !visible {
                continue;
            }
            let bits = row.get::<i32>(3)?.unwrap_or(0);
            let names = Privileges::from_bits(bits).names().into_iter().map(String::from).collect();
            let granted_by = row.get::<Oid>(4)?.map(role_name);
            let at = row.get::<TimestampWithTimeZone>(5)?.expect("granted_at is NOT NULL");
            out.push((role_name(grantee), pattern, names, granted_by, at));
        }
        Ok(out)
    })?;
    Ok(TableIterator::new(rows))
}

/// The name of the channel the doorbell announces committed appends on.
/// Whoever may call this can LISTEN to every stream's path and tail: grant
/// it to the sidecar's role and to trusted operators only.
#[pg_extern(name = "notify_channel", security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
fn notify_channel_name() -> Result<String, ErrorReport> {
    Ok(Spi::connect(notify_channel)?)
}

extension_sql!(
    r#"
CREATE VIEW ds.grants AS SELECT * FROM ds.list_grants();
COMMENT ON VIEW ds.grants IS
    'Path grants the current role may see: its own, those within patterns it administers, all for superusers.';
REVOKE ALL ON ds.grants FROM PUBLIC;
"#,
    name = "grants_view",
    requires = [list_grants, notify_channel_name],
);
