//! Appends are part of the caller's transaction: atomic with application
//! rows and with producer state; a writer blocks other writers of the same
//! stream until it commits, but never readers.

use std::time::Duration;

use crate::{connect, off, sqlstate, unique_path};

#[tokio::test]
async fn appends_commit_and_roll_back_with_application_rows() {
    let path = unique_path("outbox");
    let mut client = connect().await;
    client.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    client
        .batch_execute("CREATE TABLE IF NOT EXISTS it_orders (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let id: i64 = rand_id();

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO it_orders VALUES ($1)", &[&id]).await.unwrap();
    tx.execute("SELECT ds.append($1, jsonb_build_object('order', $2::bigint))", &[&path, &id])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let n: i64 =
        client.query_one("SELECT count(*) FROM ds.read($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(n, 0, "rolled back with the order");

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO it_orders VALUES ($1)", &[&id]).await.unwrap();
    tx.execute("SELECT ds.append($1, jsonb_build_object('order', $2::bigint))", &[&path, &id])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let body: Vec<u8> =
        client.query_one("SELECT body FROM ds.read_chunk($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(String::from_utf8(body).unwrap(), format!("[{{\"order\":{id}}}]"));
}

#[tokio::test]
async fn producer_state_rolls_back_with_the_data() {
    let path = unique_path("producer-tx");
    let mut client = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    let call = "SELECT outcome FROM ds.try_append($1, 'x'::bytea, producer_id => 'p', producer_epoch => 0, producer_seq => 0)";
    let tx = client.transaction().await.unwrap();
    let outcome: String = tx.query_one(call, &[&path]).await.unwrap().get(0);
    assert_eq!(outcome, "ok");
    tx.rollback().await.unwrap();
    // Had the producer state survived the rollback, this would be a duplicate.
    let outcome: String = client.query_one(call, &[&path]).await.unwrap().get(0);
    assert_eq!(outcome, "ok");
    let outcome: String = client.query_one(call, &[&path]).await.unwrap().get(0);
    assert_eq!(outcome, "duplicate");
}

#[tokio::test]
async fn an_open_append_blocks_appenders_but_not_readers() {
    let path = unique_path("blocking");
    let mut a = connect().await;
    a.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    a.execute("SELECT ds.append($1, 'first'::text)", &[&path]).await.unwrap();

    let tx = a.transaction().await.unwrap();
    tx.execute("SELECT ds.append($1, 'second'::text)", &[&path]).await.unwrap();

    let b = {
        let path = path.clone();
        tokio::spawn(async move {
            let b = connect().await;
            let row = b.query_one("SELECT ds.append($1, 'third'::text)", &[&path]).await.unwrap();
            row.get::<_, String>(0)
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!b.is_finished(), "the second appender waits for the first to commit");

    let reader = connect().await;
    let read = tokio::time::timeout(
        Duration::from_secs(2),
        reader.query_one("SELECT convert_from(body, 'UTF8') FROM ds.read_chunk($1)", &[&path]),
    )
    .await
    .expect("readers never wait for writers")
    .unwrap();
    assert_eq!(read.get::<_, String>(0), "first", "uncommitted data is invisible");

    tx.commit().await.unwrap();
    assert_eq!(b.await.unwrap(), off(16), "the waiter appends after the committed data");
    let read = reader
        .query_one("SELECT convert_from(body, 'UTF8') FROM ds.read_chunk($1)", &[&path])
        .await
        .unwrap();
    assert_eq!(read.get::<_, String>(0), "firstsecondthird");
}

#[tokio::test]
async fn concurrent_creates_of_one_path_agree() {
    let path = unique_path("create-race");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect().await;
            c.query_one("SELECT created FROM ds.create($1, 'text/plain')", &[&path])
                .await
                .map(|r| r.get::<_, bool>(0))
        }));
    }
    let mut created = 0;
    for t in tasks {
        if t.await.unwrap().expect("every racer succeeds") {
            created += 1;
        }
    }
    assert_eq!(created, 1, "exactly one racer creates, the others confirm");
    let c = connect().await;
    let e =
        c.query_one("SELECT * FROM ds.create($1, 'application/json')", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42710");
}

fn rand_id() -> i64 {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    (nanos % (i64::MAX as u128)) as i64
}
