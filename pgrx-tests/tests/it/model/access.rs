//! Path grants in the model test (README "Security"): the case's role gets
//! and loses privileges on a few patterns over the case's paths, and calls
//! run as that role (`SET ROLE`) must be refused (42501, or the outcome
//! `forbidden`) exactly when no grant covers them, before the stream is
//! looked up.

use std::collections::BTreeMap;

use proptest::prelude::*;

/// The role `Op::AsRole` calls run as: no privilege of its own beyond
/// EXECUTE, so path grants alone decide.
pub const ROLE: &str = "ds_model_role";

/// Run once per test run, as the superuser the test connects as.
pub const SETUP: &str = "DO $$ BEGIN \
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'ds_model_role') THEN \
        CREATE ROLE ds_model_role NOLOGIN; \
    END IF; END $$; \
    GRANT USAGE ON SCHEMA ds TO ds_model_role; \
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ds TO ds_model_role;";

/// After each case: its grants go (the next case has other paths anyway).
pub const TEARDOWN: &str =
    "DELETE FROM ds.path_grants WHERE grantee = 'ds_model_role'::pg_catalog.regrole;";

/// Patterns over the case's paths (`<base>/s<i>`): `<base>/**`,
/// `<base>/*`, and the first two paths themselves.
pub const PATTERNS: usize = 4;

pub fn pattern(i: usize, paths: &[String]) -> String {
    let base = paths[0].rsplit_once('/').expect("case paths have a base").0;
    match i {
        0 => format!("{base}/**"),
        1 => format!("{base}/*"),
        2 => paths[0].clone(),
        _ => paths[1].clone(),
    }
}

fn matches(pattern: usize, p: usize) -> bool {
    match pattern {
        0 | 1 => true,
        2 => p == 0,
        _ => p == 1,
    }
}

/// The privileges of the README's table, as the bits the model keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    Read = 1,
    Append = 2,
    Create = 4,
    Fork = 8,
    Delete = 16,
    Admin = 32,
}

const ALL: u8 = 63;
const NAMES: [(u8, &str); 6] =
    [(1, "read"), (2, "append"), (4, "create"), (8, "fork"), (16, "delete"), (32, "admin")];

/// The `privileges` argument of `ds.grant` / `ds.revoke` for `mask`.
pub fn names(mask: u8) -> String {
    if mask == ALL {
        return "all".to_owned();
    }
    NAMES.iter().filter(|(bit, _)| mask & bit != 0).map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
}

/// A non-empty set of privileges, `all` now and then.
pub fn privileges() -> impl Strategy<Value = u8> {
    prop_oneof![1 => Just(ALL), 4 => 1u8..ALL]
}

pub fn pattern_index() -> impl Strategy<Value = usize> {
    0..PATTERNS
}

/// The role's grants: privileges by pattern.
#[derive(Debug, Default, Clone)]
pub struct Grants {
    by_pattern: BTreeMap<usize, u8>,
}

impl Grants {
    /// `ds.grant` adds to the grant on that exact pattern.
    pub fn grant(&mut self, pattern: usize, mask: u8) {
        *self.by_pattern.entry(pattern).or_default() |= mask;
    }

    /// `ds.revoke` takes privileges of that exact grant back; a grant left
    /// with none goes.
    pub fn revoke(&mut self, pattern: usize, mask: u8) {
        if let Some(held) = self.by_pattern.get_mut(&pattern) {
            *held &= !mask;
            if *held == 0 {
                self.by_pattern.remove(&pattern);
            }
        }
    }

    pub fn allows(&self, p: usize, privilege: Privilege) -> bool {
        self.by_pattern.iter().any(|(pat, mask)| matches(*pat, p) && mask & privilege as u8 != 0)
    }
}
