//! `ds.enqueue` across crashes: writers enqueue three messages per
//! transaction into one stream while Postgres (the postmaster, or only the
//! sequencer worker) is killed with `kill -9`. After recovery every
//! acknowledged transaction's messages are in the stream exactly once, next
//! to each other and in order; an unacknowledged one is there entirely or
//! not at all; nothing is left unsequenced; offsets have no gap.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ds_e2e::cluster::{Cluster, DATABASE};
use tokio::time::sleep;

const WRITERS: u64 = 8;
const PER_TRANSACTION: u64 = 3;

/// Enqueues transactions (w, n) until `stop` or an error; returns the
/// acknowledged n's and the n whose COMMIT had no answer (if any).
async fn write(
    url: String,
    path: String,
    w: u64,
    stop: Arc<AtomicBool>,
) -> (Vec<u64>, Option<u64>) {
    let Ok((mut client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await
    else {
        return (Vec::new(), None);
    };
    tokio::spawn(connection);
    let mut acked = Vec::new();
    for n in 0.. {
        if stop.load(Ordering::Relaxed) {
            return (acked, None);
        }
        let Ok(tx) = client.transaction().await else { return (acked, None) };
        for i in 0..PER_TRANSACTION {
            let msg = format!(r#"{{"i":{i},"n":{n},"w":{w}}}"#);
            if tx.execute("SELECT ds.enqueue($1, $2::text::jsonb)", &[&path, &msg]).await.is_err() {
                return (acked, None);
            }
        }
        match tx.commit().await {
            Ok(()) => acked.push(n),
            Err(_) => return (acked, Some(n)),
        }
    }
    unreachable!()
}

/// Every message of `path` in order, checking that pages join up.
async fn read_all(db: &tokio_postgres::Client, path: &str) -> Vec<String> {
    let (mut out, mut from) = (Vec::new(), "-1".to_owned());
    loop {
        let rows = db
            .query(
                "SELECT start_offset, next_offset, convert_from(data, 'UTF8') FROM ds.read($1, $2)",
                &[&path, &from],
            )
            .await
            .unwrap();
        if rows.is_empty() {
            return out;
        }
        for r in rows {
            let start: String = r.get(0);
            if from != "-1" {
                assert_eq!(start, from, "a gap in the offsets");
            }
            from = r.get(1);
            out.push(r.get(2));
        }
    }
}

/// Runs writers, calls `crash` after a while, restarts and checks.
async fn crash_while_enqueueing(name: &str, crash_sequencer_only: bool) {
    let cluster = Cluster::primary(name, &[]).await;
    let db = cluster.sql(DATABASE).await;
    let path = format!("hot/{name}");
    db.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    // The sequencer connects once the database exists (it retries every 5 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    while db
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'durable_streams sequencer'",
            &[],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "the sequencer started");
        sleep(Duration::from_millis(100)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write(cluster.url(DATABASE), path.clone(), w, stop.clone())))
        .collect();
    sleep(Duration::from_millis(1500)).await;
    if crash_sequencer_only {
        let pid: i32 = db
            .query_one(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'durable_streams sequencer'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        let ok = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -9 of the sequencer {pid}");
        // The postmaster restarts every backend (crash recovery).
        sleep(Duration::from_millis(500)).await;
    } else {
        cluster.crash().await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut unknown: Vec<(u64, u64)> = Vec::new();
    for (w, h) in writers.into_iter().enumerate() {
        let (ok, lost) = h.await.unwrap();
        acked.insert(w as u64, ok);
        if let Some(n) = lost {
            unknown.push((w as u64, n));
        }
    }
    if !crash_sequencer_only {
        cluster.start();
    }
    let db = cluster.sql(DATABASE).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 =
            db.query_one("SELECT count(*) FROM ds.pending", &[]).await.unwrap().get(0);
        if pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{pending} appends still unsequenced after 30 s");
        sleep(Duration::from_millis(50)).await;
    }
    let stored = read_all(&db, &path).await;
    let position: HashMap<&str, usize> =
        stored.iter().enumerate().map(|(k, m)| (m.as_str(), k)).collect();
    assert_eq!(position.len(), stored.len(), "a message stored twice");
    let message = |w: u64, n: u64, i: u64| format!(r#"{{"i":{i},"n":{n},"w":{w}}}"#);
    let mut expected = 0;
    for (w, ns) in &acked {
        for n in ns {
            let first = position.get(message(*w, *n, 0).as_str()).copied();
            let first = first.unwrap_or_else(|| panic!("acknowledged ({w}, {n}) lost"));
            for i in 1..PER_TRANSACTION {
                assert_eq!(position.get(message(*w, *n, i).as_str()), Some(&(first + i as usize)));
            }
            expected += PER_TRANSACTION as usize;
        }
    }
    for (w, n) in unknown {
        let found: Vec<bool> = (0..PER_TRANSACTION)
            .map(|i| position.contains_key(message(w, n, i).as_str()))
            .collect();
        assert!(found.iter().all(|f| *f == found[0]), "({w}, {n}) partly stored: {found:?}");
        if found[0] {
            expected += PER_TRANSACTION as usize;
        }
    }
    assert_eq!(stored.len(), expected, "messages of no transaction in the stream");
    assert!(expected > 0, "the writers got nothing done before the crash");
    eprintln!("{name}: {expected} messages checked after the crash");
}

#[tokio::test]
async fn kill_9_of_postgres_while_enqueueing_loses_and_doubles_nothing() {
    crash_while_enqueueing("hot-kill-postgres", false).await;
}

#[tokio::test]
async fn kill_9_of_the_sequencer_loses_and_doubles_nothing() {
    crash_while_enqueueing("hot-kill-sequencer", true).await;
}
