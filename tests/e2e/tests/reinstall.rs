//! `DROP EXTENSION` and `CREATE EXTENSION` under a running sidecar: the new
//! install announces on a new private channel, so the sidecar must notice
//! (it asks `ds.notify_channel()` again every `CHANNEL_RECHECK`) and listen
//! there; SQL appends then reach its HTTP readers again, and statements it
//! prepared before keep working. A test binary of its own: the other tests
//! of its database find a fresh install afterwards, as they would anyway.

use std::time::{Duration, Instant};

use ds_e2e::{Sidecar, create_stream, http, sql, unique_path};
use tokio::time::timeout;

#[tokio::test]
async fn a_sidecar_listens_on_the_channel_of_a_recreated_extension() {
    let sidecar = Sidecar::start(&["--long-poll-timeout-ms", "30000"]).await;
    let db = sql().await;
    // Statements prepared on the pooled connections before the new install.
    let old = unique_path("reinstall/old");
    create_stream(&sidecar, &old, "text/plain").await;
    let r = http().get(format!("{}?offset=-1", sidecar.stream(&old))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let reconnects = sidecar.metric("ds_sidecar_listen_reconnects_total").await;

    db.batch_execute(
        "BEGIN; DROP EXTENSION durable_streams CASCADE; CREATE EXTENSION durable_streams; COMMIT;",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + ds_sidecar::tail::CHANNEL_RECHECK + Duration::from_secs(15);
    loop {
        let listening = sidecar.metric("ds_sidecar_listen_connected").await == 1.0;
        if listening && sidecar.metric("ds_sidecar_listen_reconnects_total").await > reconnects {
            break;
        }
        assert!(Instant::now() < deadline, "the sidecar never listened on the new channel");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An SQL append wakes a long-poll through the new channel, long before
    // the poll's own timeout.
    let path = unique_path("reinstall/new");
    create_stream(&sidecar, &path, "text/plain").await;
    let url = format!("{}?offset=now&live=long-poll", sidecar.stream(&path));
    let poll = tokio::spawn(async move { http().get(url).send().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let appended = Instant::now();
    db.execute("SELECT ds.append($1, 'after the new install'::text)", &[&path]).await.unwrap();
    let r = timeout(Duration::from_secs(10), poll).await.expect("woken in time").unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "after the new install");
    assert!(appended.elapsed() < Duration::from_secs(5), "{:?}", appended.elapsed());

    // HTTP appends and reads of the new install work on the same pool.
    let r = http()
        .post(sidecar.stream(&path))
        .header("content-type", "text/plain")
        .body("; over http")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let r = http().get(format!("{}?offset=-1", sidecar.stream(&path))).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "after the new install; over http");
}
