//! Notifications reach LISTENing clients at commit, never before and never
//! for rolled-back work. With the library preloaded, the worker rings them
//! (one payload per wake-up, from the worker's pid); in a database the worker
//! does not serve, each appending transaction notifies itself.

use std::collections::HashMap;
use std::time::Duration;

use ds_core::notification::{Announcement, CHANNEL, parse};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, timeout};

use crate::{
    Note, connect, connect_to, connect_with_notifications, database_url, listen, off, unique_path,
};

/// Waits for the next announcement about `path`; returns it and the sender's pid.
async fn next_for(
    rx: &mut UnboundedReceiver<Note>,
    path: &str,
    wait: Duration,
) -> Option<(String, i32)> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((channel, payload, pid))) = timeout(left, rx.recv()).await else { return None };
        if !channel.starts_with(CHANNEL) {
            continue;
        }
        for a in parse(&payload) {
            let line = a.line();
            match a {
                Announcement::Advanced { path: p, .. } | Announcement::Deleted { path: p }
                    if p == path =>
                {
                    return Some((line, pid));
                }
                _ => {}
            }
        }
    }
}

/// The worker's pid, waiting for it to (re)connect after the database appeared.
async fn worker_pid(client: &tokio_postgres::Client) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = client
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'durable_streams doorbell'",
                &[],
            )
            .await
            .unwrap();
        match row {
            Some(row) => return row.get(0),
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            None => panic!(
                "the durable_streams worker is not running (shared_preload_libraries, ds.database)"
            ),
        }
    }
}

#[tokio::test]
async fn append_close_and_delete_notify_at_commit() {
    let path = unique_path("notify");
    let (listener, mut rx) = connect_with_notifications().await;
    listen(&listener).await;
    let mut writer = connect().await;
    let worker = worker_pid(&writer).await;
    writer.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();

    let tx = writer.transaction().await.unwrap();
    tx.execute("SELECT ds.append($1, 'hello'::text)", &[&path]).await.unwrap();
    assert_eq!(
        next_for(&mut rx, &path, Duration::from_millis(300)).await,
        None,
        "nothing before commit"
    );
    tx.commit().await.unwrap();
    let sent = next_for(&mut rx, &path, Duration::from_secs(5)).await;
    assert_eq!(sent, Some((format!("{} {path}", off(5)), worker)), "rung by the worker");

    let tx = writer.transaction().await.unwrap();
    tx.execute("SELECT ds.append($1, 'lost'::text)", &[&path]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        next_for(&mut rx, &path, Duration::from_millis(300)).await,
        None,
        "nothing for a rollback"
    );

    writer.execute("SELECT ds.close($1)", &[&path]).await.unwrap();
    let sent = next_for(&mut rx, &path, Duration::from_secs(5)).await.map(|(line, _)| line);
    assert_eq!(sent, Some(format!("! {} {path}", off(5))), "a closure is marked");
    writer.execute("SELECT ds.delete($1)", &[&path]).await.unwrap();
    let sent = next_for(&mut rx, &path, Duration::from_secs(5)).await.map(|(line, _)| line);
    assert_eq!(sent, Some(format!("- {path}")));
}

#[tokio::test]
async fn one_transaction_over_many_streams_rings_once() {
    let paths: Vec<String> = (0..30).map(|i| unique_path(&format!("bell{i:02}"))).collect();
    let (listener, mut rx) = connect_with_notifications().await;
    listen(&listener).await;
    let mut writer = connect().await;
    let worker = worker_pid(&writer).await;
    for p in &paths {
        writer.execute("SELECT ds.create($1)", &[p]).await.unwrap();
    }
    let tx = writer.transaction().await.unwrap();
    for (i, p) in paths.iter().enumerate() {
        // Two appends each: only the final tail is announced.
        tx.execute("SELECT ds.append($1, $2::bytea)", &[p, &vec![b'x'; i + 1]]).await.unwrap();
        tx.execute("SELECT ds.append($1, 'y'::bytea)", &[p]).await.unwrap();
    }
    tx.commit().await.unwrap();

    let mut announced: HashMap<String, String> = HashMap::new();
    let mut payloads_naming_ours = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while announced.len() < paths.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((_, payload, pid))) = timeout(left, rx.recv()).await else { break };
        let mut ours = false;
        for a in parse(&payload) {
            if let Announcement::Advanced { path, tail, .. } = a
                && paths.contains(&path)
            {
                assert_eq!(pid, worker, "announced by the worker, not the writer");
                announced.insert(path, tail.to_string());
                ours = true;
            }
        }
        payloads_naming_ours += usize::from(ours);
    }
    assert_eq!(announced.len(), paths.len(), "every stream announced");
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(announced[p], off(i as u64 + 2));
    }
    assert_eq!(payloads_naming_ours, 1, "one commit, one doorbell ring, one payload");
}

#[tokio::test]
async fn databases_the_worker_does_not_serve_fall_back_to_pg_notify() {
    let admin = connect().await;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = 'ds_it_fallback'", &[])
        .await
        .unwrap();
    if exists.is_none() {
        admin.batch_execute("CREATE DATABASE ds_it_fallback").await.unwrap();
    }
    let url =
        database_url().rsplit_once('/').map(|(base, _)| format!("{base}/ds_it_fallback")).unwrap();
    let (client, mut rx) = connect_to(&url).await;
    client.batch_execute("CREATE EXTENSION IF NOT EXISTS durable_streams").await.unwrap();
    listen(&client).await;
    let path = unique_path("fallback");
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    client.execute("SELECT ds.append($1, 'abc'::bytea)", &[&path]).await.unwrap();
    let me: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let sent = next_for(&mut rx, &path, Duration::from_secs(5)).await;
    assert_eq!(sent, Some((format!("{} {path}", off(3)), me)), "the writer notified itself");
}

#[tokio::test]
async fn rolled_back_savepoints_are_not_announced() {
    let (listener, mut rx) = connect_with_notifications().await;
    listen(&listener).await;
    let mut writer = connect().await;
    let worker = worker_pid(&writer).await;
    let (kept, lost) = (unique_path("savepoint-kept"), unique_path("savepoint-lost"));
    for p in [&kept, &lost] {
        writer.execute("SELECT ds.create($1, 'text/plain')", &[p]).await.unwrap();
    }

    // The rolled-back savepoint advanced `kept` further and `lost` at all.
    let mut tx = writer.transaction().await.unwrap();
    tx.execute("SELECT ds.append($1, 'a'::text)", &[&kept]).await.unwrap();
    {
        let sp = tx.savepoint("s").await.unwrap();
        sp.execute("SELECT ds.append($1, 'bb'::text)", &[&kept]).await.unwrap();
        sp.execute("SELECT ds.append($1, 'z'::text)", &[&lost]).await.unwrap();
        sp.rollback().await.unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(
        next_for(&mut rx, &kept, Duration::from_secs(5)).await,
        Some((format!("{} {kept}", off(1)), worker)),
        "the tail the commit left, not the rolled-back one"
    );
    assert_eq!(next_for(&mut rx, &lost, Duration::from_millis(500)).await, None);

    // A PL/pgSQL exception block is a subtransaction too.
    writer
        .batch_execute(&format!(
            "DO $$ BEGIN \
               BEGIN PERFORM ds.append('{lost}', 'q'::text); RAISE EXCEPTION 'undo'; \
               EXCEPTION WHEN raise_exception THEN NULL; END; \
             END $$"
        ))
        .await
        .unwrap();
    assert_eq!(next_for(&mut rx, &lost, Duration::from_millis(500)).await, None);

    // A released savepoint's appends belong to the transaction.
    let mut tx = writer.transaction().await.unwrap();
    {
        let sp = tx.savepoint("r").await.unwrap();
        sp.execute("SELECT ds.append($1, 'cc'::text)", &[&kept]).await.unwrap();
        sp.commit().await.unwrap();
    }
    tx.commit().await.unwrap();
    let sent = next_for(&mut rx, &kept, Duration::from_secs(5)).await.map(|(line, _)| line);
    assert_eq!(sent, Some(format!("{} {kept}", off(3))));
}

#[tokio::test]
async fn prepared_transactions_are_announced_at_commit_prepared() {
    let (listener, mut rx) = connect_with_notifications().await;
    listen(&listener).await;
    let preparer = connect().await;
    let committer = connect().await;
    let worker = worker_pid(&preparer).await;
    let (path, other) = (unique_path("prepared"), unique_path("after-prepare"));
    for p in [&path, &other] {
        preparer.execute("SELECT ds.create($1, 'text/plain')", &[p]).await.unwrap();
    }
    let gid = format!("ds-it-{}", unique_path("gid"));
    preparer
        .batch_execute(&format!(
            "BEGIN; SELECT ds.append('{path}', 'abc'::text); PREPARE TRANSACTION '{gid}'"
        ))
        .await
        .unwrap();
    assert_eq!(
        next_for(&mut rx, &path, Duration::from_millis(500)).await,
        None,
        "nothing at PREPARE"
    );
    // The preparing backend's next transaction announces only its own work.
    preparer.execute("SELECT ds.append($1, 'x'::text)", &[&other]).await.unwrap();
    let sent = next_for(&mut rx, &other, Duration::from_secs(5)).await.map(|(line, _)| line);
    assert_eq!(sent, Some(format!("{} {other}", off(1))));
    assert_eq!(
        next_for(&mut rx, &path, Duration::from_millis(500)).await,
        None,
        "no stale entry of the prepared transaction"
    );

    // COMMIT PREPARED from another session wakes the listener.
    committer.batch_execute(&format!("COMMIT PREPARED '{gid}'")).await.unwrap();
    assert_eq!(
        next_for(&mut rx, &path, Duration::from_secs(5)).await,
        Some((format!("{} {path}", off(3)), worker))
    );

    // ROLLBACK PREPARED announces nothing.
    let gid2 = format!("{gid}-2");
    preparer
        .batch_execute(&format!(
            "BEGIN; SELECT ds.append('{path}', 'lost'::text); PREPARE TRANSACTION '{gid2}'"
        ))
        .await
        .unwrap();
    committer.batch_execute(&format!("ROLLBACK PREPARED '{gid2}'")).await.unwrap();
    assert_eq!(next_for(&mut rx, &path, Duration::from_millis(500)).await, None);
    let tail: String =
        preparer.query_one("SELECT next_offset FROM ds.head($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(tail, off(3));
}

/// `DROP EXTENSION` and `CREATE EXTENSION` while the worker runs: stream ids
/// start over, so the paths the worker learned for the old ids name other
/// streams now. Its first ring after the new install says `*` and names the
/// new streams by their own paths (it used to announce them under the old
/// streams' paths, or not at all when the tail matched an old announcement).
/// Named to run after the other notification tests; the tests after it get
/// a fresh install, as every test creates what it uses.
#[tokio::test]
async fn the_worker_follows_a_dropped_and_recreated_extension() {
    let (listener, mut rx) = connect_with_notifications().await;
    let writer = connect().await;
    let worker = worker_pid(&writer).await;
    listen(&listener).await;
    // The worker learns a path for the current ids.
    let before = unique_path("reinstall-old");
    writer.execute("SELECT ds.create($1, 'text/plain')", &[&before]).await.unwrap();
    writer.execute("SELECT ds.append($1, 'x'::text)", &[&before]).await.unwrap();
    assert!(next_for(&mut rx, &before, Duration::from_secs(5)).await.is_some());

    // LISTEN on the new install's channel in the same transaction, so that
    // no ring after its commit (one may come at once) is missed.
    listener
        .batch_execute(
            "BEGIN; DROP EXTENSION durable_streams CASCADE; CREATE EXTENSION durable_streams; \
             DO $$ BEGIN EXECUTE pg_catalog.format('LISTEN %I', ds.notify_channel()); END $$; \
             COMMIT;",
        )
        .await
        .unwrap();
    let channel: String =
        listener.query_one("SELECT ds.notify_channel()", &[]).await.unwrap().get(0);
    // Ids from 1 again: several streams, each appended to once (tail 1),
    // the state the worker remembers for many old ids.
    let paths: Vec<String> = (0..5).map(|i| unique_path(&format!("reinstall-new{i}"))).collect();
    for p in &paths {
        writer.execute("SELECT ds.create($1, 'text/plain')", &[p]).await.unwrap();
        writer.execute("SELECT ds.append($1, 'y'::text)", &[p]).await.unwrap();
    }
    let mut everything = false;
    let mut seen: HashMap<String, String> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < paths.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((ch, payload, pid))) = timeout(left, rx.recv()).await else {
            panic!("announced after the new install: {seen:?} (everything: {everything})")
        };
        if ch != channel {
            continue;
        }
        assert_eq!(pid, worker, "rung by the worker that ran through the reinstall");
        for a in parse(&payload) {
            match a {
                Announcement::Everything => everything = true,
                Announcement::Advanced { path, tail, .. } => {
                    assert!(
                        path.contains("reinstall-new"),
                        "only streams of the new install are named: {path}"
                    );
                    seen.insert(path, tail.to_string());
                }
                Announcement::Deleted { path } => panic!("nothing was deleted: {path}"),
            }
        }
    }
    assert!(everything, "the first ring after the new install says `*`");
    for p in &paths {
        assert_eq!(seen.get(p), Some(&off(1)), "{p}");
    }
}
