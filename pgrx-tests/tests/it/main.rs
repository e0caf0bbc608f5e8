//! Client-side integration tests: the extension in a real cluster, driven
//! over real connections (tokio-postgres). `scripts/test.sh` starts a fresh
//! cluster and sets `DS_TEST_DATABASE_URL`; each test uses its own streams.

mod access;
mod bulk;
mod capture;
mod concurrency;
mod forks;
mod hot;
mod model;
mod notify;
mod registry;
mod retention;
mod storm;
mod subscriptions;
mod transactions;
mod ttl;
mod worker;

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A notification: channel, payload, sending backend's pid.
pub type Note = (String, String, i32);

/// The test database's URL.
pub fn database_url() -> String {
    std::env::var("DS_TEST_DATABASE_URL").expect(
        "DS_TEST_DATABASE_URL must point at a database with durable_streams (run `make test`)",
    )
}

/// Connects to the test database; notifications go to the returned channel.
pub async fn connect_with_notifications() -> (Client, mpsc::UnboundedReceiver<Note>) {
    connect_to(&database_url()).await
}

/// Connects to any database of the test cluster.
pub async fn connect_to(url: &str) -> (Client, mpsc::UnboundedReceiver<Note>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) =
            futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await
        {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ =
                        tx.send((n.channel().to_owned(), n.payload().to_owned(), n.process_id()));
                }
                Ok(_) => {}
                Err(e) => panic!("connection error: {e}"),
            }
        }
    });
    (client, rx)
}

/// Connects, returning the error instead of panicking (for reconnect loops).
pub async fn connect_to_checked() -> Result<(Client, ()), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(&database_url(), NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((client, ()))
}

pub async fn connect() -> Client {
    connect_with_notifications().await.0
}

/// LISTENs on the installation's private notification channel
/// (`ds.notify_channel()`); returns its name.
pub async fn listen(client: &Client) -> String {
    let channel: String =
        client.query_one("SELECT ds.notify_channel()", &[]).await.expect("notify_channel").get(0);
    client.batch_execute(&format!("LISTEN \"{channel}\"")).await.expect("LISTEN");
    channel
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
    ds_core::Offset(pos).to_string()
}
