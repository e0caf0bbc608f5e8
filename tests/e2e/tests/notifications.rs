//! The sidecar listens only on the installation's private channel: a role
//! that may not call `ds.notify_channel()` cannot wake its waiters (an
//! unprivileged `NOTIFY durable_streams, '*'` used to make every waiter
//! re-read), while appends made in SQL still reach HTTP readers.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ds_e2e::{Sidecar, http, sql, unique_path};

/// `ds_sidecar_notifications_total` from the sidecar's metrics listener.
async fn notifications(sidecar: &Sidecar) -> u64 {
    sidecar.metric("ds_sidecar_notifications_total").await as u64
}

#[tokio::test]
async fn an_unprivileged_notify_wakes_nobody_and_sql_appends_still_do() {
    let sidecar = Sidecar::start(&[]).await;
    let db = sql().await;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let spy = format!("e2e_spy_{nanos}");
    db.batch_execute(&format!("CREATE ROLE {spy} NOLOGIN")).await.unwrap();
    let path = unique_path("spoof");
    db.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    // Let the notifications of the create settle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = notifications(&sidecar).await;

    let spy_db = sql().await;
    spy_db.batch_execute(&format!("SET ROLE {spy}")).await.unwrap();
    for _ in 0..5 {
        spy_db.batch_execute("NOTIFY durable_streams, '*'").await.unwrap();
    }
    let e = spy_db.query_one("SELECT ds.notify_channel()", &[]).await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(notifications(&sidecar).await, before, "the public channel is not listened to");

    // A real append in SQL reaches a long-poll through the private channel.
    let url = format!("{}?offset=now&live=long-poll", sidecar.stream(&path));
    let poll = tokio::spawn(async move { http().get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    db.execute("SELECT ds.append($1, 'hello'::bytea)", &[&path]).await.unwrap();
    let response = poll.await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"hello");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(notifications(&sidecar).await > before);
}
