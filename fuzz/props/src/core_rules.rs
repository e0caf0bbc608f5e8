//! Validation rules of ds-core: content types, grant/subscription glob
//! patterns, webhook URLs, subscription and wake request bodies.

use std::collections::HashMap;
use std::net::IpAddr;

use ds_core::acl::{Pattern, Privileges};
use ds_core::content_type::{self, Mode};
use ds_core::subscription::config::{self, Kind};
use ds_core::subscription::wake::{self, Cursor};
use ds_core::webhook_url::{self as wurl, Host, Scheme};
use ds_core::{Offset, limits};
use serde_json::{Value, json};

use crate::text;

/// An accepted content type has a canonical essence (lower case, one `/`,
/// a fixed point), and the mode and comparison follow from it.
pub fn content_type(data: &[u8]) {
    let Some(ct) = text(data) else { return };
    match content_type::essence(ct) {
        Ok(e) => {
            assert_eq!(content_type::essence(&e).as_ref(), Ok(&e), "the essence is a fixed point");
            assert_eq!(e, e.to_ascii_lowercase());
            assert_eq!(e.matches('/').count(), 1);
            assert!(content_type::same(ct, &e));
            let mode = content_type::mode(ct).expect("a valid type has a mode");
            assert_eq!(mode == Mode::Json, e == "application/json");
            assert_eq!(mode == Mode::Text, e.starts_with("text/"));
        }
        Err(_) => assert!(!content_type::same(ct, ct) && content_type::mode(ct).is_err()),
    }
}

/// The reference glob matcher: plain recursion over segments, exponential
/// but obviously right (inputs are kept small).
fn naive_match(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|k| naive_match(rest, &path[k..])),
        Some((&"*", rest)) => !path.is_empty() && naive_match(rest, &path[1..]),
        Some((lit, rest)) => path.first() == Some(lit) && naive_match(rest, &path[1..]),
    }
}

/// A path the pattern text matches: `*` becomes `x`, each `**` zero to two
/// segments as `choice` says.
fn instance(pattern: &str, choice: u8) -> String {
    let mut parts = Vec::new();
    for (i, s) in pattern.split('/').enumerate() {
        match s {
            "*" => parts.push("x".to_owned()),
            "**" => {
                for _ in 0..((choice >> (i % 4 * 2)) & 3) % 3 {
                    parts.push("y".to_owned());
                }
            }
            lit => parts.push(lit.to_owned()),
        }
    }
    parts.join("/")
}

/// Input: `pattern\npath\nother pattern\nprivileges`. Matching agrees with
/// the naive matcher; `covers` never says yes wrongly; privileges parse to
/// a set their names give back.
pub fn glob(data: &[u8]) {
    let Some(input) = text(data) else { return };
    let mut fields = input.split('\n');
    let (pattern, path) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    let (other, privileges) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
    if let Ok(set) = Privileges::parse(privileges) {
        assert_ne!(set, Privileges::NONE);
        assert_eq!(Privileges::parse(&set.names().join(",")), Ok(set));
    }
    let Ok(p) = Pattern::parse(pattern) else { return };
    let small = pattern.len() <= 200 && path.len() <= 200 && pattern.matches("**").count() <= 4;
    if small {
        let segments: Vec<&str> = pattern.split('/').collect();
        let items: Vec<&str> = path.split('/').collect();
        assert_eq!(p.matches(path), naive_match(&segments, &items), "{pattern:?} vs {path:?}");
    }
    let Ok(o) = Pattern::parse(other) else { return };
    assert!(p.covers(&p), "a pattern covers itself");
    if p.covers(&o) {
        for choice in [0u8, 0x55, 0xaa, data.len() as u8] {
            let example = instance(other, choice);
            assert!(o.matches(&example), "{other:?} matches its instance {example:?}");
            assert!(p.matches(&example), "{pattern:?} covers {other:?} but not {example:?}");
        }
    }
}

/// An accepted webhook URL obeys the scheme and address rules, and the URL
/// the sender rebuilds from it is read by the `url` crate (which reqwest
/// connects with) as the same host and port: what was checked is what is
/// reached.
pub fn webhook_url(data: &[u8]) {
    let Some(raw) = text(data) else { return };
    let parsed = wurl::parse(raw);
    let Ok(url) = wurl::check(raw) else { return };
    assert_eq!(parsed.as_ref(), Ok(&url));
    assert!(url.path_and_query.starts_with('/') && url.port > 0);
    match (&url.scheme, &url.host) {
        (Scheme::Http, Host::Domain(d)) => assert_eq!(d, "localhost"),
        (Scheme::Http, Host::Ip(ip)) => assert!(wurl::is_loopback(*ip)),
        (Scheme::Https, Host::Ip(ip)) => assert_eq!(wurl::forbidden_ip(*ip), None),
        (Scheme::Https, Host::Domain(d)) => {
            assert!(d != "localhost" && !d.ends_with(".localhost"))
        }
    }
    let rebuilt =
        format!("{}://{}:{}{}", url.scheme.as_str(), url.host_str(), url.port, url.path_and_query);
    // (The sender's URL names the port, so it may pass the length limit.)
    if rebuilt.len() <= wurl::MAX_URL_BYTES {
        assert_eq!(wurl::check(&rebuilt).as_ref(), Ok(&url), "the rebuilt URL checks the same");
    }
    let Ok(whatwg) = url::Url::parse(&rebuilt) else { return };
    let their_host = match whatwg.host() {
        Some(url::Host::Domain(d)) => Host::Domain(d.to_owned()),
        Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
        None => panic!("{rebuilt:?} has no host for the url crate"),
    };
    assert_eq!(their_host, url.host, "{rebuilt:?}: the url crate reads another host");
    assert_eq!(whatwg.port_or_known_default(), Some(url.port), "{rebuilt:?}");
}

/// A subscription body (JSON) either fails or gives a normalised config
/// that parses back to itself from its own fields; a wake body's acks are
/// validated into one in-range position per stream.
pub fn subscription(data: &[u8]) {
    let Ok(body) = serde_json::from_slice::<Value>(data) else { return };
    if let Ok(c) = config::parse_config(&body) {
        assert!(c.streams.windows(2).all(|w| w[0] < w[1]), "streams sorted, no duplicates");
        assert!(c.streams.iter().all(|s| limits::validate_path(s).is_ok()));
        assert!((config::MIN_LEASE_TTL_MS..=config::MAX_LEASE_TTL_MS).contains(&c.lease_ttl_ms));
        assert_eq!(c.kind == Kind::Webhook, c.webhook_url.is_some());
        assert_eq!(c.kind == Kind::PullWake, c.wake_stream.is_some());
        let again = json!({
            "type": c.kind.as_str(), "pattern": c.pattern, "streams": c.streams,
            "webhook": c.webhook_url.as_ref().map(|u| json!({"url": u})),
            "wake_stream": c.wake_stream, "lease_ttl_ms": c.lease_ttl_ms,
            "description": c.description,
        });
        let reparsed = config::parse_config(&again).expect("a normalised config parses");
        assert_eq!(reparsed.canonical_json(), c.canonical_json());
        assert_eq!(reparsed, c);
    }
    let Ok(request) = wake::parse_request(&body) else { return };
    assert!(request.acks.len() <= wake::MAX_ACKS);
    let cursor = Cursor { acked: Offset(10), tail: Offset(1_000) };
    let links: HashMap<String, Cursor> =
        request.acks.iter().map(|a| (a.path.clone(), cursor)).collect();
    if let Ok(moves) = wake::validate_acks(&request.acks, &links) {
        assert!(moves.windows(2).all(|w| w[0].0 < w[1].0), "one position per stream");
        for (path, to) in &moves {
            assert!(cursor.acked <= *to && *to <= cursor.tail);
            let best = request.acks.iter().filter(|a| &a.path == path).map(|a| &a.offset).max();
            assert_eq!(best, Some(&to.to_string()), "the highest ack wins");
        }
    }
}
