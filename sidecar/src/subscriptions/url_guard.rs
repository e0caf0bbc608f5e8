//! Where a webhook may be delivered (PROTOCOL.md §12.8), checked at every
//! delivery with `ds_core::webhook_url` (the same rules the extension
//! applied when the subscription was created):
//!
//! - the URL must pass [`webhook_url::check`] (https; http only to
//!   localhost or 127.0.0.0/8); an IP literal host is checked as is;
//! - a host name is resolved by [`CheckedResolver`], the HTTP client's own
//!   DNS resolver, which refuses the name when ANY of its addresses is
//!   forbidden ([`webhook_url::check_resolved`]: http must reach loopback,
//!   https must reach none of loopback, private, link-local, metadata,
//!   unspecified, ULA, multicast). The client connects only to the
//!   addresses this resolver returned, so a name cannot be re-resolved to
//!   another address between the check and the connection (no DNS
//!   rebinding).
//!
//! The HTTP client follows no redirects (a 3xx is a failed delivery) and
//! uses no proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ds_core::webhook_url::{self, Host, Rejected, Scheme, WebhookUrl};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Longest wait for a name's addresses.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A URL checked for delivery: the request URL rebuilt from the parsed
/// parts (so the HTTP client reads exactly what was checked) and the
/// `host:port` that breakers and per-host limits are keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The URL to request.
    pub url: String,
    /// `host:port`.
    pub host: String,
}

/// Checks `raw` for delivery (the resolved addresses are checked later,
/// by [`CheckedResolver`]).
pub fn target(raw: &str) -> Result<Target, Rejected> {
    let url = webhook_url::check(raw)?;
    if let Host::Ip(ip) = url.host {
        // The HTTP client does not resolve IP literals: check here.
        webhook_url::check_resolved(&url, ip)?;
    }
    let host = format!("{}:{}", url.host_str(), url.port);
    Ok(Target {
        scheme: url.scheme,
        url: format!("{}://{host}{}", url.scheme.as_str(), url.path_and_query),
        host,
    })
}

/// The DNS resolver of one scheme's HTTP client (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver {
    scheme: Scheme,
}

impl CheckedResolver {
    /// The resolver of `scheme`'s client.
    pub fn new(scheme: Scheme) -> CheckedResolver {
        CheckedResolver { scheme }
    }

    /// Checks the addresses `name` resolved to.
    pub fn check(&self, name: &str, addrs: &[SocketAddr]) -> Result<(), Rejected> {
        if addrs.is_empty() {
            return Err(Rejected(format!("{name} resolved to no address")));
        }
        let url = WebhookUrl {
            scheme: self.scheme,
            host: Host::Domain(name.to_owned()),
            port: 0,
            path_and_query: "/".into(),
        };
        addrs.iter().try_for_each(|a| webhook_url::check_resolved(&url, a.ip()))
    }
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = *self;
        Box::pin(async move {
            let name = name.as_str().to_owned();
            let lookup = tokio::net::lookup_host((name.as_str(), 0));
            let addrs: Vec<SocketAddr> = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(found) => found?.collect(),
                Err(_) => return Err(format!("resolving {name} timed out").into()),
            };
            resolver.check(&name, &addrs)?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Whether `error` (from the HTTP client) is a refusal of this module, and
/// its reason.
pub fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Rejected> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(r) = e.downcast_ref::<Rejected>() {
            return Some(r);
        }
        cause = e.source();
    }
    None
}

/// The two HTTP clients (one per scheme, each with its resolver).
#[derive(Debug, Clone)]
pub struct Clients {
    http: reqwest::Client,
    https: reqwest::Client,
}

impl Clients {
    /// Clients with these timeouts.
    pub fn new(connect_timeout: Duration, total_timeout: Duration) -> Result<Clients, String> {
        let build = |scheme| {
            reqwest::Client::builder()
                .dns_resolver(Arc::new(CheckedResolver::new(scheme)))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(connect_timeout)
                .timeout(total_timeout)
                .https_only(scheme == Scheme::Https)
                .user_agent(concat!("ds-sidecar/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
        };
        Ok(Clients { http: build(Scheme::Http)?, https: build(Scheme::Https)? })
    }

    /// The client for `target`.
    pub fn of(&self, target: &Target) -> &reqwest::Client {
        match target.scheme {
            Scheme::Http => &self.http,
            Scheme::Https => &self.https,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_rebuilt_from_the_checked_parts() {
        let t = target("http://localhost:8080/hook?x=1").unwrap();
        assert_eq!(t.url, "http://localhost:8080/hook?x=1");
        assert_eq!(t.host, "localhost:8080");
        let t = target("https://Example.COM/h").unwrap();
        assert_eq!(
            (t.url.as_str(), t.host.as_str()),
            ("https://example.com:443/h", "example.com:443")
        );
        assert!(target("http://127.0.0.1:9/x").is_ok());
    }

    #[test]
    fn forbidden_literals_and_schemes_are_refused() {
        for bad in [
            "http://10.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://169.254.169.254/latest",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "http://example.com/x",
            "ftp://example.com/x",
            "https://localhost/x",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolved_addresses_are_checked_per_scheme() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let https = CheckedResolver::new(Scheme::Https);
        let http = CheckedResolver::new(Scheme::Http);
        assert!(https.check("example.com", &[a("93.184.216.34:0")]).is_ok());
        for private in [
            "10.1.2.3:0",
            "127.0.0.1:0",
            "192.168.1.1:0",
            "169.254.169.254:0",
            "[::1]:0",
            "0.0.0.0:0",
        ] {
            assert!(
                https.check("evil.example", &[a("93.184.216.34:0"), a(private)]).is_err(),
                "{private}"
            );
        }
        assert!(http.check("localhost", &[a("127.0.0.1:0"), a("[::1]:0")]).is_ok());
        assert!(http.check("localhost", &[a("127.0.0.1:0"), a("10.0.0.1:0")]).is_err());
        assert!(https.check("nothing", &[]).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_of_a_loopback_address_for_https() {
        let addrs = CheckedResolver::new(Scheme::Https).resolve("localhost".parse().unwrap()).await;
        let err = addrs.err().expect("refused");
        assert!(refusal(err.as_ref()).is_some(), "{err}");
        let ok = CheckedResolver::new(Scheme::Http).resolve("localhost".parse().unwrap()).await;
        assert!(ok.unwrap().all(|a| a.ip().is_loopback()));
    }
}
