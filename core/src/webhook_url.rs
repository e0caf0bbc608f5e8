//! Webhook URL rules: which URLs a subscription may deliver to.
//!
//! A webhook makes the server send requests to an address a client chose, so
//! a careless rule turns the server into a proxy into its own network (cloud
//! metadata at 169.254.169.254, admin ports on loopback, private subnets).
//! The rules, checked twice:
//!
//! - when a subscription is created ([`check`]): the syntax, the scheme
//!   (`https`, or `http` only to `localhost` or a 127.0.0.0/8 literal, for
//!   local development) and, for an IP literal host, its address;
//! - by the sender, for every address the host resolves to
//!   ([`check_resolved`]), because a name can resolve anywhere (and change:
//!   the sender connects to the address it checked).
//!
//! The parser is deliberately narrow: no user info, no fragment, ASCII only,
//! no backslashes, no numeric host forms other than a dotted quad. What the
//! WHATWG parser would read differently from us is rejected, not guessed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// Longest accepted webhook URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a webhook URL cannot be used (the `WEBHOOK_URL_REJECTED` error).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("webhook.url rejected: {0}")]
pub struct Rejected(pub String);

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// The host of a URL: a DNS name (lower-cased, without a trailing dot) or
/// an IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Domain(String),
    Ip(IpAddr),
}

/// A parsed webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub scheme: Scheme,
    pub host: Host,
    /// The explicit port, or the scheme's default.
    pub port: u16,
    /// Path and query as given (starts with `/`; `/` when the URL had none).
    pub path_and_query: String,
}

impl WebhookUrl {
    /// The host as it goes into a `Host` header or a TLS server name lookup:
    /// the domain, or the IP literal (IPv6 in brackets).
    pub fn host_str(&self) -> String {
        match &self.host {
            Host::Domain(d) => d.clone(),
            Host::Ip(IpAddr::V4(ip)) => ip.to_string(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        }
    }
}

fn reject<T>(reason: impl Into<String>) -> Result<T, Rejected> {
    Err(Rejected(reason.into()))
}

/// Parses `raw` without applying the scheme and address rules.
pub fn parse(raw: &str) -> Result<WebhookUrl, Rejected> {
    if raw.is_empty() {
        return reject("the URL is empty");
    }
    if raw.len() > MAX_URL_BYTES {
        return reject(format!(
            "the URL is {} bytes long, the maximum is {MAX_URL_BYTES}",
            raw.len()
        ));
    }
    if let Some(c) = raw.chars().find(|c| !c.is_ascii_graphic()) {
        return reject(format!(
            "the URL contains U+{:04X}: percent-encode it (and give international host names in punycode)",
            u32::from(c)
        ));
    }
    if raw.contains('\\') {
        return reject("the URL contains a backslash");
    }
    if raw.contains('#') {
        return reject("the URL has a fragment (#...), which is never sent");
    }
    let Some((scheme, rest)) = raw.split_once("://") else {
        return reject("not an absolute URL: expected https://host/path");
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        _ => return reject("the scheme must be https (or http to localhost)"),
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    if authority.contains('@') {
        return reject("the URL carries user info (user@host); put credentials elsewhere");
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        None => scheme.default_port(),
        Some(p) => parse_port(p)?,
    };
    let path_and_query = if path.starts_with('/') { path.to_owned() } else { format!("/{path}") };
    Ok(WebhookUrl { scheme, host, port, path_and_query })
}

fn split_host_port(authority: &str) -> Result<(Host, Option<&str>), Rejected> {
    if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((literal, after)) = bracketed.split_once(']') else {
            return reject("unterminated IPv6 literal");
        };
        let Ok(ip) = Ipv6Addr::from_str(literal) else {
            return reject(format!("invalid IPv6 literal [{literal}]"));
        };
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return reject("unexpected text after the IPv6 literal"),
            },
        };
        return Ok((Host::Ip(IpAddr::V6(ip)), port));
    }
    let (name, port) = match authority.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (authority, None),
    };
    Ok((parse_host_name(name)?, port))
}

fn parse_port(port: &str) -> Result<u16, Rejected> {
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return reject(format!("invalid port {port:?}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => reject(format!("invalid port {port:?}: must be 1..65535")),
    }
}

fn parse_host_name(name: &str) -> Result<Host, Rejected> {
    let trimmed = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if trimmed.is_empty() {
        return reject("the URL has no host");
    }
    if trimmed.len() > 253 {
        return reject("the host name is longer than 253 bytes");
    }
    let labels: Vec<&str> = trimmed.split('.').collect();
    if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
        return reject(format!("invalid host name {name:?}: empty or over-long label"));
    }
    if let Some(c) = trimmed
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.' || *c == '_'))
    {
        return reject(format!("invalid host name {name:?}: character {c:?}"));
    }
    // A host whose last label looks numeric is an IPv4 address to a WHATWG
    // parser ("127.1", "0x7f.1", "2130706433" all mean 127.0.0.1); accept
    // only the unambiguous dotted quad.
    let last = labels.last().copied().unwrap_or_default();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return match Ipv4Addr::from_str(&trimmed) {
            Ok(ip) if !name.ends_with('.') => Ok(Host::Ip(IpAddr::V4(ip))),
            _ => {
                reject(format!("ambiguous numeric host {name:?}: write an IPv4 address as a.b.c.d"))
            }
        };
    }
    Ok(Host::Domain(trimmed))
}

fn is_localhost_name(domain: &str) -> bool {
    domain == "localhost" || domain.ends_with(".localhost")
}

/// Whether `ip` is a loopback address (127.0.0.0/8, ::1, or IPv4-mapped
/// 127.0.0.0/8).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Why `ip` must never receive a webhook, or `None` when it may.
pub fn forbidden_ip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("the cloud metadata address")
    } else if a == 0 {
        Some("an unspecified address (0.0.0.0/8)")
    } else if a == 127 {
        Some("a loopback address")
    } else if a == 10 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) {
        Some("a private address (RFC 1918)")
    } else if a == 169 && b == 254 {
        Some("a link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared carrier-grade NAT address (100.64.0.0/10)")
    } else if a >= 224 {
        Some("a multicast, reserved or broadcast address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        Some("an unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        forbidden_v4(v4)
    } else if segments[0] & 0xfe00 == 0xfc00 {
        Some("a unique local address (fc00::/7)")
    } else if segments[0] & 0xffc0 == 0xfe80 || segments[0] & 0xffc0 == 0xfec0 {
        Some("a link-local address")
    } else if segments[0] & 0xff00 == 0xff00 {
        Some("a multicast address")
    } else if segments[..6] == [0; 6] {
        // IPv4-compatible (deprecated) ::a.b.c.d: reaches the embedded v4.
        forbidden_v4(embedded_v4(segments))
    } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix: translated to the embedded v4.
        forbidden_v4(embedded_v4(segments))
    } else {
        None
    }
}

fn embedded_v4(segments: [u16; 8]) -> Ipv4Addr {
    let [h6, l6] = segments[6].to_be_bytes();
    let [h7, l7] = segments[7].to_be_bytes();
    Ipv4Addr::new(h6, l6, h7, l7)
}

/// Parses `raw` and applies the scheme rules and, for an IP literal host,
/// the address rules. What a subscription stores.
pub fn check(raw: &str) -> Result<WebhookUrl, Rejected> {
    let url = parse(raw)?;
    match (url.scheme, &url.host) {
        (Scheme::Http, Host::Domain(d)) if d == "localhost" => {}
        (Scheme::Http, Host::Ip(IpAddr::V4(v4))) if v4.is_loopback() => {}
        (Scheme::Http, _) => {
            return reject(
                "http webhook URLs are only allowed to localhost or 127.0.0.0/8; use https",
            );
        }
        (Scheme::Https, Host::Domain(d)) if is_localhost_name(d) => {
            return reject("localhost webhook URLs must use http (development only)");
        }
        (Scheme::Https, Host::Ip(ip)) => {
            if let Some(reason) = forbidden_ip(*ip) {
                return reject(format!("the host {ip} is {reason}"));
            }
        }
        (Scheme::Https, Host::Domain(_)) => {}
    }
    Ok(url)
}

/// Checks one address the URL's host resolved to, before connecting to it:
/// an `http` URL (localhost) must reach loopback, an `https` URL must not
/// reach any forbidden address.
pub fn check_resolved(url: &WebhookUrl, addr: IpAddr) -> Result<(), Rejected> {
    match url.scheme {
        Scheme::Http if is_loopback(addr) => Ok(()),
        Scheme::Http => {
            reject(format!("{} resolved to {addr}, which is not loopback", url.host_str()))
        }
        Scheme::Https => match forbidden_ip(addr) {
            Some(reason) => reject(format!("{} resolved to {addr}, {reason}", url.host_str())),
            None => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).unwrap()
    }

    #[test]
    fn parses_the_parts() {
        let url = check("https://Hooks.Example.com:8443/in?x=1").unwrap();
        assert_eq!(url.scheme, Scheme::Https);
        assert_eq!(url.host, Host::Domain("hooks.example.com".into()));
        assert_eq!(url.port, 8443);
        assert_eq!(url.path_and_query, "/in?x=1");
        let url = check("http://localhost:3000").unwrap();
        assert_eq!((url.port, url.path_and_query.as_str()), (3000, "/"));
        let url = check("https://example.com?q").unwrap();
        assert_eq!((url.port, url.path_and_query.as_str()), (443, "/?q"));
        let url = check("https://[2001:db8::1]:9/x").unwrap();
        assert_eq!(url.host_str(), "[2001:db8::1]");
        assert_eq!(check("http://127.0.0.9/x").unwrap().port, 80);
        assert_eq!(
            check("HTTPS://example.com./").unwrap().host,
            Host::Domain("example.com".into())
        );
    }

    #[test]
    fn scheme_rules() {
        for bad in [
            "ftp://example.com/",
            "http://example.com/",
            "http://10.0.0.1/",
            "http://[::1]/",
            "https://localhost/",
            "https://a.localhost/",
            "example.com/hook",
            "mailto:x@example.com",
        ] {
            assert!(check(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn syntax_rules() {
        for bad in [
            "",
            "https://",
            "https:///x",
            "https://user:pw@example.com/",
            "https://example.com/#frag",
            "https://exa mple.com/",
            "https://example.com\\@evil.com/",
            "https://exämple.com/",
            "https://example.com:0/",
            "https://example.com:65536/",
            "https://example.com:/",
            "https://example.com:12a/",
            "https://[::1/",
            "https://[zz::1]/",
            "https://[2001:db8::1]x/",
            "https://a..b/",
            "https://2130706433/",
            "https://0x7f.1/",
            "https://127.1/",
            "https://010.0.0.1/",
            "http://127.0.0.1./",
        ] {
            assert!(parse(bad).is_err() || check(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse(&format!("https://e.com/{}", "a".repeat(MAX_URL_BYTES))).is_err());
        // A numeric label that is not the last one is a name.
        assert!(check("https://1.example.com/").is_ok());
    }

    #[test]
    fn literal_addresses() {
        for bad in [
            "https://10.1.2.3/",
            "https://172.16.0.1/",
            "https://172.31.255.255/",
            "https://192.168.1.1/",
            "https://127.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://169.254.1.1/",
            "https://0.0.0.0/",
            "https://100.64.0.1/",
            "https://100.127.255.255/",
            "https://[::1]/",
            "https://[::]/",
            "https://[fd00:ec2::254]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[64:ff9b::a00:1]/",
            "https://255.255.255.255/",
        ] {
            assert!(check(bad).is_err(), "{bad} accepted");
        }
        for good in [
            "https://8.8.8.8/",
            "https://172.32.0.1/",
            "https://100.128.0.1/",
            "https://[2606:4700::1]/",
        ] {
            assert!(check(good).is_ok(), "{good} rejected");
        }
    }

    #[test]
    fn forbidden_reasons() {
        assert_eq!(forbidden_ip(ip("169.254.169.254")), Some("the cloud metadata address"));
        assert_eq!(forbidden_ip(ip("192.168.0.1")), Some("a private address (RFC 1918)"));
        assert_eq!(forbidden_ip(ip("::ffff:127.0.0.1")), Some("a loopback address"));
        assert_eq!(forbidden_ip(ip("93.184.216.34")), None);
        assert_eq!(forbidden_ip(ip("2001:db8::1")), None);
    }

    #[test]
    fn resolved_addresses() {
        let local = check("http://localhost:8080/").unwrap();
        assert!(check_resolved(&local, ip("127.0.0.1")).is_ok());
        assert!(check_resolved(&local, ip("::1")).is_ok());
        assert!(check_resolved(&local, ip("::ffff:127.0.0.2")).is_ok());
        assert!(check_resolved(&local, ip("10.0.0.1")).is_err());
        assert!(check_resolved(&local, ip("8.8.8.8")).is_err());
        let remote = check("https://hooks.example.com/").unwrap();
        assert!(check_resolved(&remote, ip("8.8.8.8")).is_ok());
        let err = check_resolved(&remote, ip("169.254.169.254")).unwrap_err();
        assert!(err.to_string().contains("metadata"), "{err}");
        assert!(check_resolved(&remote, ip("127.0.0.1")).is_err());
        assert!(check_resolved(&remote, ip("fc00::1")).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(raw in "\\PC{0,80}") {
            let _ = check(&raw);
        }

        #[test]
        fn never_panics_on_url_shapes(
            scheme in "(https?|HTTP|ftp)",
            host in "[a-z0-9.:\\[\\]x-]{0,40}",
            rest in "[/?a-z0-9%@#:]{0,20}",
        ) {
            let raw = format!("{scheme}://{host}{rest}");
            if let Ok(url) = check(&raw) {
                prop_assert!(url.path_and_query.starts_with('/'));
                prop_assert!(url.port > 0);
            }
        }

        #[test]
        fn any_address_classifies(bits in any::<u128>(), v4 in any::<u32>()) {
            let _ = forbidden_ip(IpAddr::V6(Ipv6Addr::from(bits)));
            let _ = forbidden_ip(IpAddr::V4(Ipv4Addr::from(v4)));
            let mapped = Ipv4Addr::from(v4).to_ipv6_mapped();
            prop_assert_eq!(forbidden_ip(IpAddr::V6(mapped)), forbidden_ip(IpAddr::V4(Ipv4Addr::from(v4))));
        }
    }
}
