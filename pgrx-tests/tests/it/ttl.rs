//! A sliding TTL is restarted by reads and appends, not by head; an expired
//! stream is absent at once, before anything deletes it.

use std::time::Duration;

use tokio::time::sleep;

use crate::{connect, sqlstate, unique_path};

#[tokio::test]
async fn sliding_ttl_is_refreshed_by_reads_and_appends_not_head() {
    let path = unique_path("ttl");
    let c = connect().await;
    c.execute("SELECT ds.create($1, ttl_seconds => 2)", &[&path]).await.unwrap();
    sleep(Duration::from_millis(1300)).await;
    c.query_one("SELECT * FROM ds.read_chunk($1)", &[&path]).await.unwrap();
    sleep(Duration::from_millis(1300)).await;
    // 2.6 s after create, 1.3 s after the read: alive.
    c.query_one("SELECT * FROM ds.head($1)", &[&path]).await.unwrap();
    c.execute("SELECT ds.append($1, 'x'::bytea)", &[&path]).await.unwrap();
    sleep(Duration::from_millis(1300)).await;
    c.query_one("SELECT * FROM ds.head($1)", &[&path]).await.unwrap();
    sleep(Duration::from_millis(1000)).await;
    // 2.3 s after the append; the heads in between did not count.
    let e = c.query_one("SELECT * FROM ds.head($1)", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    let e = c.query_one("SELECT ds.append($1, 'x'::bytea)", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
}

#[tokio::test]
async fn absolute_expiry_hides_the_stream_at_once() {
    let path = unique_path("expires");
    let c = connect().await;
    c.execute(
        "SELECT ds.create($1, expires_at => clock_timestamp() + interval '1 second')",
        &[&path],
    )
    .await
    .unwrap();
    c.query_one("SELECT * FROM ds.read_chunk($1)", &[&path]).await.unwrap();
    sleep(Duration::from_millis(1200)).await;
    let e = c.query_one("SELECT * FROM ds.read_chunk($1)", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    let created: bool =
        c.query_one("SELECT created FROM ds.create($1)", &[&path]).await.unwrap().get(0);
    assert!(created, "an expired path can be created again");
}
