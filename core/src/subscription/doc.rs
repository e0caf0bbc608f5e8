//! The JSON documents of the subscription API.

use serde_json::{Value, json};

use crate::Offset;

/// One linked stream of a subscription, with its tail now (or in a wake's
/// snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub path: String,
    pub explicit: bool,
    pub acked: Offset,
    pub tail: Offset,
}

impl LinkInfo {
    /// `explicit` wins over `glob` when a link is both.
    pub fn link_type(&self) -> &'static str {
        if self.explicit { "explicit" } else { "glob" }
    }

    pub fn has_pending(&self) -> bool {
        self.tail > self.acked
    }

    /// `{path, link_type, acked_offset}`: a stream in a subscription document.
    pub fn summary(&self) -> Value {
        json!({"path": self.path, "link_type": self.link_type(), "acked_offset": self.acked.to_string()})
    }

    /// `{path, link_type, acked_offset, tail_offset, has_pending}`: a stream
    /// in a claim or a webhook delivery.
    pub fn info(&self) -> Value {
        json!({
            "path": self.path,
            "link_type": self.link_type(),
            "acked_offset": self.acked.to_string(),
            "tail_offset": self.tail.to_string(),
            "has_pending": self.has_pending(),
        })
    }
}

/// What a subscription document shows.
#[derive(Debug, Clone)]
pub struct Subscription<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub pattern: Option<&'a str>,
    /// Sorted by path.
    pub links: &'a [LinkInfo],
    pub webhook_url: Option<&'a str>,
    pub wake_stream: Option<&'a str>,
    pub lease_ttl_ms: i64,
    /// RFC 3339 with milliseconds, UTC.
    pub created_at: &'a str,
    pub status: &'a str,
    pub description: Option<&'a str>,
}

/// The subscription document (the sidecar adds `webhook.signing`).
pub fn document(s: &Subscription<'_>) -> Value {
    json!({
        "id": s.id,
        "subscription_id": s.id,
        "type": s.kind,
        "pattern": s.pattern,
        "streams": s.links.iter().map(LinkInfo::summary).collect::<Vec<_>>(),
        "webhook": s.webhook_url.map(|url| json!({"url": url})),
        "wake_stream": s.wake_stream,
        "lease_ttl_ms": s.lease_ttl_ms,
        "created_at": s.created_at,
        "status": s.status,
        "description": s.description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents() {
        let links = [
            LinkInfo { path: "a".into(), explicit: true, acked: Offset(1), tail: Offset(1) },
            LinkInfo { path: "b".into(), explicit: false, acked: Offset(0), tail: Offset(4) },
        ];
        let doc = document(&Subscription {
            id: "s",
            kind: "webhook",
            pattern: Some("b*"),
            links: &links,
            webhook_url: Some("https://e.com"),
            wake_stream: None,
            lease_ttl_ms: 1000,
            created_at: "2026-05-09T00:00:00.000Z",
            status: "active",
            description: None,
        });
        assert_eq!(doc["subscription_id"], "s");
        assert_eq!(doc["webhook"]["url"], "https://e.com");
        assert_eq!(doc["streams"][0]["link_type"], "explicit");
        assert_eq!(
            doc["streams"][1],
            json!({"path": "b", "link_type": "glob", "acked_offset": Offset(0).to_string()})
        );
        assert!(doc["wake_stream"].is_null() && doc["description"].is_null());
        assert_eq!(links[1].info()["has_pending"], true);
        assert_eq!(links[0].info()["tail_offset"], Offset(1).to_string());
    }
}
