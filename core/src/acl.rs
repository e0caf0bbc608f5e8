//! Path privileges: what a grant allows, and which paths its pattern covers.
//!
//! A grant is (role, pattern, privileges). Patterns use the glob syntax of
//! the Durable Streams protocol's subscriptions (section 6): a path is split
//! at `/` into segments, `*` matches exactly one segment and `**` matches zero
//! or more; any other segment matches itself literally. A `*` inside a
//! segment (`room-*`) is refused rather than guessed at.
//!
//! Pure logic only: the extension (`src/acl.rs`) looks grants up and asks
//! here whether they cover a path.

use std::fmt;

use crate::error::{Error, Result};

/// Longest pattern accepted (the longest path is 1024 bytes).
pub const MAX_PATTERN_BYTES: usize = 1024;

/// One privilege a grant can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// `ds.read`, `ds.read_chunk`, `ds.head`; seeing the stream in `ds.stats`.
    Read,
    /// `ds.append`, `ds.try_append*`, `ds.close`.
    Append,
    /// `ds.create`, and the new path of a `ds.fork`.
    Create,
    /// The new path of a `ds.fork` (which also needs `read` on the source
    /// and `create` on the new path).
    Fork,
    /// `ds.delete`.
    Delete,
    /// Granting and revoking within the pattern; `ds.rotate`.
    Admin,
}

const NAMES: [(Privilege, &str); 6] = [
    (Privilege::Read, "read"),
    (Privilege::Append, "append"),
    (Privilege::Create, "create"),
    (Privilege::Fork, "fork"),
    (Privilege::Delete, "delete"),
    (Privilege::Admin, "admin"),
];

impl Privilege {
    /// The name used in SQL (`ds.grant`, messages, the `ds.grants` view).
    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(p, _)| *p == self).map(|(_, n)| *n).expect("every privilege is named")
    }

    fn bit(self) -> i32 {
        1 << NAMES.iter().position(|(p, _)| *p == self).expect("every privilege is listed")
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of privileges, stored as a bit mask (`ds.path_grants.privileges`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privileges(i32);

impl Privileges {
    /// Every privilege.
    pub const ALL: Privileges = Privileges((1 << NAMES.len()) - 1);

    /// No privilege.
    pub const NONE: Privileges = Privileges(0);

    /// Parses `read, append` (case-insensitive, comma-separated; `all` for
    /// every privilege). An empty list or an unknown name is an error that
    /// lists the valid names.
    pub fn parse(text: &str) -> Result<Privileges> {
        let mut set = Privileges::NONE;
        let valid = || NAMES.map(|(_, n)| n).join(", ");
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            if word.eq_ignore_ascii_case("all") {
                set = Privileges::ALL;
                continue;
            }
            let Some((p, _)) = NAMES.iter().find(|(_, n)| word.eq_ignore_ascii_case(n)) else {
                return Err(Error::InvalidGrant(format!(
                    "unknown privilege {word:?}: use a comma-separated list of {}, or all",
                    valid()
                )));
            };
            set = set.with(*p);
        }
        if set == Privileges::NONE {
            return Err(Error::InvalidGrant(format!(
                "no privilege given: use a comma-separated list of {}, or all",
                valid()
            )));
        }
        Ok(set)
    }

    /// The set stored as `bits`; unknown bits are dropped.
    pub fn from_bits(bits: i32) -> Privileges {
        Privileges(bits & Privileges::ALL.0)
    }

    /// The stored form.
    pub fn bits(self) -> i32 {
        self.0
    }

    /// This set plus `p`.
    pub fn with(self, p: Privilege) -> Privileges {
        Privileges(self.0 | p.bit())
    }

    /// Whether `p` is in the set.
    pub fn contains(self, p: Privilege) -> bool {
        self.0 & p.bit() != 0
    }

    /// Both sets together.
    pub fn union(self, other: Privileges) -> Privileges {
        Privileges(self.0 | other.0)
    }

    /// This set without `other`.
    pub fn minus(self, other: Privileges) -> Privileges {
        Privileges(self.0 & !other.0)
    }

    /// The names, in a fixed order (for the `ds.grants` view).
    pub fn names(self) -> Vec<&'static str> {
        NAMES.iter().filter(|(p, _)| self.contains(*p)).map(|(_, n)| *n).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: zero or more segments.
    Any,
}

/// A parsed glob pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

impl Pattern {
    /// Parses and validates a pattern.
    pub fn parse(text: &str) -> Result<Pattern> {
        if text.is_empty() || text.len() > MAX_PATTERN_BYTES {
            return Err(Error::InvalidGrant(format!(
                "a pattern must be 1 to {MAX_PATTERN_BYTES} bytes long"
            )));
        }
        if text.chars().any(char::is_control) {
            return Err(Error::InvalidGrant(
                "a pattern must not contain control characters".into(),
            ));
        }
        let mut segments = Vec::new();
        for s in text.split('/') {
            let segment = match s {
                "*" => Segment::One,
                "**" => Segment::Any,
                _ if s.contains('*') => {
                    return Err(Error::InvalidGrant(format!(
                        "pattern segment {s:?}: * and ** must be whole segments \
                         (e.g. \"tenant-a/*\" or \"tenant-a/**\")"
                    )));
                }
                _ => Segment::Literal(s.to_owned()),
            };
            // `**/**` means the same as `**`; keeping one bounds the matcher.
            if segment == Segment::Any && segments.last() == Some(&Segment::Any) {
                continue;
            }
            segments.push(segment);
        }
        Ok(Pattern { segments })
    }

    /// Whether `path` matches the pattern.
    pub fn matches(&self, path: &str) -> bool {
        let path: Vec<&str> = path.split('/').collect();
        glob_match(&self.segments, &path, &|p, s| match p {
            Segment::Literal(l) => l == s,
            Segment::One => true,
            Segment::Any => unreachable!("handled by glob_match"),
        })
    }

    /// Whether every path `other` matches is also matched by `self` (used
    /// to let an `admin` grant on `self` grant within its prefix). Never
    /// says yes wrongly; it may say no to a few exotic equivalent patterns.
    pub fn covers(&self, other: &Pattern) -> bool {
        // `other`'s wildcards are symbols here: `*` is covered by `*` or `**`,
        // `**` only by `**`, a literal by itself, `*` or `**`.
        glob_match(&self.segments, &other.segments, &|p, s| match (p, s) {
            (Segment::Literal(a), Segment::Literal(b)) => a == b,
            (Segment::One, Segment::Literal(_) | Segment::One) => true,
            _ => false,
        })
    }
}

/// Matches `pattern` against `items`, `**` absorbing any run of items,
/// other segments matching one item each as `one` decides. Iterative with
/// backtracking to the last `**` only (patterns have their `**` runs merged),
/// so time is O(pattern x items) and the stack is constant.
fn glob_match<T>(pattern: &[Segment], items: &[T], one: &dyn Fn(&Segment, &T) -> bool) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while i < items.len() {
        match pattern.get(p) {
            Some(Segment::Any) => {
                resume = Some((p, i));
                p += 1;
            }
            Some(seg) if one(seg, &items[i]) => {
                p += 1;
                i += 1;
            }
            _ => match resume {
                // Let the last `**` absorb one more item and retry.
                Some((star, at)) => {
                    resume = Some((star, at + 1));
                    p = star + 1;
                    i = at + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|s| *s == Segment::Any)
}

/// What the extension needs to know about one grant that applies to a role.
#[derive(Debug, Clone)]
pub struct Grant {
    pub pattern: Pattern,
    pub privileges: Privileges,
}

/// Whether any of `grants` gives `privilege` on `path`.
pub fn allows(grants: &[Grant], path: &str, privilege: Privilege) -> bool {
    grants.iter().any(|g| g.privileges.contains(privilege) && g.pattern.matches(path))
}

/// The literal segments a pattern starts with (`events/*` → `events`):
/// every path it matches starts with this text (to narrow a search).
pub fn literal_prefix(pattern: &str) -> String {
    let literal: Vec<&str> = pattern.split('/').take_while(|s| !s.contains('*')).collect();
    literal.join("/")
}

/// Whether any of `grants` gives `privilege` on every path `pattern` matches
/// (a subscription to a pattern needs `read` on all it may ever match).
pub fn allows_pattern(grants: &[Grant], pattern: &Pattern, privilege: Privilege) -> bool {
    grants.iter().any(|g| g.privileges.contains(privilege) && g.pattern.covers(pattern))
}

/// Whether any of `grants` carries `admin` over everything `pattern` matches.
pub fn administers(grants: &[Grant], pattern: &Pattern) -> bool {
    allows_pattern(grants, pattern, Privilege::Admin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s).unwrap()
    }

    #[test]
    fn privileges_parse() {
        let p = Privileges::parse("read, Append").unwrap();
        assert!(p.contains(Privilege::Read) && p.contains(Privilege::Append));
        assert!(!p.contains(Privilege::Delete));
        assert_eq!(Privileges::parse("all").unwrap(), Privileges::ALL);
        assert_eq!(Privileges::ALL.names().len(), 6);
        assert!(Privileges::parse("").is_err());
        let e = Privileges::parse("read,write").unwrap_err().to_string();
        assert!(e.contains("\"write\"") && e.contains("admin"), "{e}");
        assert_eq!(Privileges::from_bits(Privileges::ALL.bits() | 1 << 20), Privileges::ALL);
        assert_eq!(Privileges::ALL.minus(Privileges::ALL), Privileges::NONE);
    }

    #[test]
    fn literal_prefixes() {
        for (pattern, prefix) in
            [("events/*", "events"), ("a/b/**/c", "a/b"), ("**", ""), ("a/b", "a/b")]
        {
            assert_eq!(literal_prefix(pattern), prefix);
        }
        // `a/**` matches `a` itself: the prefix has no trailing slash.
        assert!(pat("a/**").matches("a") && "a".starts_with(&literal_prefix("a/**")));
    }

    #[test]
    fn pattern_privileges_need_a_covering_grant() {
        let grants =
            [Grant { pattern: pat("events/**"), privileges: Privileges::parse("read").unwrap() }];
        assert!(allows_pattern(&grants, &pat("events/*"), Privilege::Read));
        assert!(allows_pattern(&grants, &pat("events/a/**"), Privilege::Read));
        assert!(!allows_pattern(&grants, &pat("**"), Privilege::Read));
        assert!(!allows_pattern(&grants, &pat("events/*"), Privilege::Append));
        assert!(!administers(&grants, &pat("events/*")));
    }

    #[test]
    fn patterns_match_segments() {
        assert!(pat("a/*").matches("a/b"));
        assert!(!pat("a/*").matches("a/b/c"));
        assert!(!pat("a/*").matches("a"));
        assert!(pat("a/**").matches("a"));
        assert!(pat("a/**").matches("a/b/c"));
        assert!(!pat("a/**").matches("ab/c"));
        assert!(pat("**").matches("anything/at/all"));
        assert!(pat("**/x").matches("x"));
        assert!(pat("**/x").matches("a/b/x"));
        assert!(!pat("**/x").matches("a/b/x/y"));
        assert!(pat("a/**/z").matches("a/z"));
        assert!(pat("a/**/z").matches("a/b/c/z"));
        assert!(pat("*/logs").matches("t1/logs"));
        assert!(!pat("*/logs").matches("logs"));
        assert!(pat("exact").matches("exact"));
        assert!(!pat("exact").matches("exactly"));
        // Literal comparison is exact: no case folding, no normalisation.
        assert!(!pat("A/*").matches("a/b"));
        assert!(pat("/lead/*").matches("/lead/x"));
    }

    #[test]
    fn bad_patterns_say_what_to_fix() {
        for bad in ["", "room-*", "a/*b", "a/***", "a\nb"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Pattern::parse(&"a".repeat(MAX_PATTERN_BYTES + 1)).is_err());
        let e = Pattern::parse("t/room-*").unwrap_err().to_string();
        assert!(e.contains("whole segments"), "{e}");
    }

    #[test]
    fn covers_only_what_it_contains() {
        assert!(pat("t/**").covers(&pat("t/**")));
        assert!(pat("t/**").covers(&pat("t/a/*")));
        assert!(pat("t/**").covers(&pat("t")));
        assert!(pat("t/*").covers(&pat("t/x")));
        assert!(pat("t/*").covers(&pat("t/*")));
        assert!(!pat("t/*").covers(&pat("t/**")));
        assert!(!pat("t/*").covers(&pat("t/x/y")));
        assert!(!pat("t/**").covers(&pat("**")));
        assert!(!pat("t/**").covers(&pat("u/x")));
        assert!(!pat("t/x").covers(&pat("t/*")));
        assert!(pat("**").covers(&pat("anything/**/at/*")));
    }

    #[test]
    fn many_stars_stay_linear() {
        let p = pat(&["**", "a"].repeat(200).join("/"));
        let path = vec!["b"; 1000].join("/");
        assert!(!p.matches(&path));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![Just("a".to_owned()), Just("b".to_owned()), Just("*".into()), Just("**".into())]
    }

    proptest! {
        /// `covers` is sound: if A covers P, every path P matches, A matches.
        #[test]
        fn covers_is_sound(
            a in prop::collection::vec(segment(), 1..5),
            p in prop::collection::vec(segment(), 1..5),
            paths in prop::collection::vec(prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..6), 1..20),
        ) {
            let (a, p) = (pat(&a.join("/")), pat(&p.join("/")));
            if a.covers(&p) {
                for path in paths {
                    let path = path.join("/");
                    prop_assert!(!p.matches(&path) || a.matches(&path), "{a:?} {p:?} {path}");
                }
            }
        }

        /// A pattern of literals covers and matches exactly itself.
        #[test]
        fn literal_patterns(path in "[a-z]{1,3}(/[a-z]{1,3}){0,3}") {
            let p = pat(&path);
            prop_assert!(p.matches(&path));
            prop_assert!(p.covers(&p));
            prop_assert!(pat("**").covers(&p));
        }
    }
}
