//! A webhook receiver for the subscription tests (a small hyper server in
//! the test process) and the HTTP calls those tests share.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::{Sidecar, http, sql};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived (before any delay).
    pub at: Instant,
    /// `Webhook-Signature`.
    pub signature: Option<String>,
    /// The body as sent.
    pub raw: Vec<u8>,
    /// The body as JSON (`Null` if it is not).
    pub body: Value,
}

impl Received {
    /// `subscription_id` of the body.
    pub fn subscription_id(&self) -> &str {
        self.body["subscription_id"].as_str().unwrap_or_default()
    }
}

/// How the receiver answers.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    body: String,
    /// Held this long before answering (all subscriptions).
    delay: Duration,
    /// Held this long before answering, by subscription id (overrides `delay`).
    delay_of: HashMap<String, Duration>,
}

/// A webhook receiver answering every request with the current reply. It
/// records only requests of subscriptions whose id starts with its
/// `prefix` (a leftover subscription of an earlier run may still deliver
/// to a reused port) and answers the others 410.
#[derive(Clone)]
pub struct Receiver {
    /// Its port on 127.0.0.1.
    pub port: u16,
    prefix: String,
    log: Arc<Mutex<Vec<Received>>>,
    reply: Arc<Mutex<Reply>>,
    arrived: Arc<Notify>,
    /// The accept loop; it owns the connections (dropping it closes them).
    server: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Receiver {
    /// Starts a receiver on a free port answering `status` with `body`.
    pub async fn start(status: u16, body: &str, prefix: &str) -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", crate::free_port())).await.unwrap();
        let receiver = Receiver {
            port: listener.local_addr().unwrap().port(),
            prefix: prefix.to_owned(),
            log: Arc::default(),
            reply: Arc::new(Mutex::new(Reply {
                status,
                body: body.to_owned(),
                delay: Duration::ZERO,
                delay_of: HashMap::new(),
            })),
            arrived: Arc::new(Notify::new()),
            server: Arc::default(),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: TcpListener) {
        let r = self.clone();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let r = r.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| r.clone().answer(req));
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        if let Some(old) = self.server.lock().unwrap().replace(task) {
            old.abort();
        }
    }

    /// Stops listening and closes every open connection: deliveries are
    /// refused at connect (not answered with an error status).
    pub async fn stop(&self) {
        let task = self.server.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port (after [`Receiver::stop`]).
    pub async fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(e) => {
                    assert!(Instant::now() < deadline, "rebind port {}: {e}", self.port);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.serve(listener);
    }

    async fn answer(
        self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
        let signature =
            req.headers().get("webhook-signature").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let raw =
            req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
        let at = Instant::now();
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        let received = Received { at, signature, raw, body };
        let id = received.subscription_id().to_owned();
        if !id.starts_with(&self.prefix) {
            let gone = Full::new(Bytes::from_static(b"{}"));
            return Ok(hyper::Response::builder().status(410).body(gone).unwrap());
        }
        self.log.lock().unwrap().push(received);
        self.arrived.notify_waiters();
        let reply = self.reply.lock().unwrap().clone();
        let delay = reply.delay_of.get(&id).copied().unwrap_or(reply.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(hyper::Response::builder()
            .status(reply.status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(reply.body)))
            .unwrap())
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Answers later requests with `status` and `body`.
    pub fn set_reply(&self, status: u16, body: &str) {
        let mut reply = self.reply.lock().unwrap();
        (reply.status, reply.body) = (status, body.to_owned());
    }

    /// Holds later requests `delay` before answering.
    pub fn set_delay(&self, delay: Duration) {
        self.reply.lock().unwrap().delay = delay;
    }

    /// Holds later requests of `subscription_id` `delay` before answering.
    pub fn set_delay_of(&self, subscription_id: &str, delay: Duration) {
        self.reply.lock().unwrap().delay_of.insert(subscription_id.to_owned(), delay);
    }

    /// Every request recorded so far.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (at most `limit`).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let arrived = self.arrived.notified();
            let count = self.log.lock().unwrap().len();
            if count >= n {
                return self.received();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {count} of {n} webhook requests within {limit:?}");
            let _ = tokio::time::timeout(left, arrived).await;
        }
    }
}

/// Deletes subscriptions an earlier, failed run of the subscription tests
/// left behind (ids contain `-e2e-subs-`): their webhooks would keep going
/// to ports this run reuses (and count as failures of that host in the
/// breakers). The tests run one at a time.
pub async fn clear_leftovers() {
    sql()
        .await
        .execute(
            "SELECT ds.subscription_delete(id) FROM ds.subscriptions \
             WHERE id LIKE '%-e2e-subs-%' AND deleted_at IS NULL",
            &[],
        )
        .await
        .unwrap();
}

/// URL of a subscription.
pub fn sub_url(s: &Sidecar, id: &str) -> String {
    s.stream(&format!("__ds/subscriptions/{id}"))
}

/// `PUT` of a subscription: status and JSON body.
pub async fn put_sub(s: &Sidecar, id: &str, config: Value) -> (u16, Value) {
    let r = http().put(sub_url(s, id)).json(&config).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Deletes subscriptions at the end of a test (their webhooks would
/// otherwise be retried against a receiver that is gone).
pub async fn delete_subs(s: &Sidecar, ids: &[&str]) {
    for id in ids {
        let r = http().delete(sub_url(s, id)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 204);
    }
}

/// The subscription document (asserting 200).
pub async fn get_sub(s: &Sidecar, id: &str) -> Value {
    let r = http().get(sub_url(s, id)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.json().await.unwrap()
}

/// Creates `path` as a JSON stream with one message.
pub async fn create_stream(s: &Sidecar, path: &str) {
    write(http().put(s.stream(path)), path).await;
}

/// Appends one JSON message to `path`.
pub async fn append(s: &Sidecar, path: &str) {
    write(http().post(s.stream(path)), path).await;
}

async fn write(request: reqwest::RequestBuilder, path: &str) {
    let r = request
        .header("content-type", "application/json")
        .body(r#"{"event":"created"}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "write {path}: {}", r.status());
}

/// Polls `check` every 100 ms until it holds (at most `limit`).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tail (`Stream-Next-Offset`) of a stream.
pub async fn tail(s: &Sidecar, path: &str) -> String {
    let head = http().head(s.stream(path)).send().await.unwrap();
    head.headers().get("stream-next-offset").unwrap().to_str().unwrap().to_owned()
}

/// Whether every link of the subscription is acked up to the stream's tail.
pub async fn all_acked(s: &Sidecar, id: &str) -> bool {
    let doc = get_sub(s, id).await;
    let mut all = true;
    for link in doc["streams"].as_array().unwrap() {
        all &= link["acked_offset"] == tail(s, link["path"].as_str().unwrap()).await.as_str();
    }
    all
}
