//! Client-side integration tests: the extension in a real cluster, driven
//! over real connections (tokio-postgres). `scripts/test.sh` starts a fresh
//! cluster and sets `DS_TEST_DATABASE_URL`; each test uses its own streams.

mod concurrency;
mod notify;
mod transactions;
mod ttl;

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Connects to the test database; notifications go to the returned channel.
pub async fn connect_with_notifications() -> (Client, mpsc::UnboundedReceiver<(String, String)>) {
    let url = std::env::var("DS_TEST_DATABASE_URL").expect(
        "DS_TEST_DATABASE_URL must point at a database with durable_streams (run `make test`)",
    );
    let (client, mut connection) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) =
            futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await
        {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                }
                Ok(_) => {}
                Err(e) => panic!("connection error: {e}"),
            }
        }
    });
    (client, rx)
}

pub async fn connect() -> Client {
    connect_with_notifications().await.0
}

/// A stream path no other test (or earlier run) uses.
pub fn unique_path(name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("it/{name}/{nanos}")
}

/// The SQLSTATE of a failed call.
pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// Offset text for a position.
pub fn off(pos: u64) -> String {
    format!("{:016}_{:016}", 0, pos)
}
