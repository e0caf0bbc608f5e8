//! Properties of every parser that takes untrusted input, one function per
//! fuzz target.
//!
//! Each function takes arbitrary bytes, feeds them to a parser and panics
//! when a property fails: not only "no panic", but round trips (parse of
//! format), canonical forms, agreement with the parser on the other side of
//! the wire (the router's percent-decoding, the `url` crate reqwest
//! connects with) and agreement with a naive reference (glob matching).
//!
//! The same functions run under libFuzzer (`fuzz/fuzz_targets`, `make
//! fuzz`) and on stable in `cargo test -p ds-fuzz`, which replays every file
//! of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`.

mod core_formats;
mod core_rules;
mod sidecar_http;
mod sidecar_routes;

pub use core_formats::{json, notification, offset, segment};
pub use core_rules::{content_type, glob, subscription, webhook_url};
pub use sidecar_http::{headers, query};
pub use sidecar_routes::{jwt, paths};

/// A target's property: panics when the input breaks it.
pub type Property = fn(&[u8]);

/// Every target by name, for the replay test and tooling.
pub const TARGETS: [(&str, Property); 12] = [
    ("offset", offset),
    ("segment", segment),
    ("notification", notification),
    ("json", json),
    ("content_type", content_type),
    ("glob", glob),
    ("webhook_url", webhook_url),
    ("subscription", subscription),
    ("headers", headers),
    ("query", query),
    ("paths", paths),
    ("jwt", jwt),
];

/// The input as text; targets of text parsers skip other bytes (their
/// callers only ever hand them `&str`).
fn text(data: &[u8]) -> Option<&str> {
    std::str::from_utf8(data).ok()
}
