//! Wake storms: one transaction over thousands of streams is announced
//! stream by stream, never as `*` (which would make every waiter of every
//! stream re-read). Up to the doorbell's shared set (8,192 streams) the
//! worker names what the commits told it; beyond it (an overflow) it
//! compares the tables with what it announced and names exactly the streams
//! whose tail differs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ds_core::notification::{Announcement, CHANNEL, MAX_PAYLOAD, parse};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, timeout};

use crate::{Note, connect, connect_with_notifications, listen, off, unique_path};

/// What the listener heard until every path of `want` was announced at its
/// wanted tail (or `wait` passed), then for `quiet` more: every announced
/// tail per path (of `watched` only), and whether anything said `*`.
struct Heard {
    tails: HashMap<String, Vec<String>>,
    everything: bool,
}

async fn hear(
    rx: &mut UnboundedReceiver<Note>,
    watched: &HashSet<String>,
    want: &HashMap<String, String>,
    wait: Duration,
    quiet: Duration,
) -> Heard {
    let mut heard = Heard { tails: HashMap::new(), everything: false };
    let mut deadline = Instant::now() + wait;
    let mut settled = false;
    loop {
        let done = want.iter().all(|(p, t)| heard.tails.get(p).is_some_and(|v| v.contains(t)));
        if done && !settled {
            settled = true;
            deadline = Instant::now() + quiet;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((channel, payload, _))) = timeout(left, rx.recv()).await else { return heard };
        if !channel.starts_with(CHANNEL) {
            continue;
        }
        assert!(payload.len() <= MAX_PAYLOAD, "a payload of {} bytes", payload.len());
        for a in parse(&payload) {
            match a {
                Announcement::Everything => heard.everything = true,
                Announcement::Advanced { path, tail, .. } if watched.contains(&path) => {
                    heard.tails.entry(path).or_default().push(tail.to_string());
                }
                _ => {}
            }
        }
    }
}

async fn create_all(client: &tokio_postgres::Client, paths: &[String]) {
    client
        .execute(
            "SELECT count(*) FROM pg_catalog.unnest($1::text[]) p, LATERAL ds.create(p) c",
            &[&paths],
        )
        .await
        .unwrap();
}

/// One transaction appending `bytes` bytes to each of `paths`.
async fn append_all(client: &tokio_postgres::Client, paths: &[String], bytes: i32) {
    client
        .execute(
            "SELECT count(*) FROM pg_catalog.unnest($1::text[]) p, \
             LATERAL ds.append(p, pg_catalog.repeat('x', $2)::bytea) a",
            &[&paths, &bytes],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_batch_over_thousands_of_streams_names_each_of_them() {
    // More streams than the old per-transaction limit (64) and more than the
    // old shared set (1,024), fewer than the shared set holds now.
    let base = unique_path("storm-set");
    let paths: Vec<String> = (0..2_000).map(|i| format!("{base}/{i:04}")).collect();
    let bystanders: Vec<String> = (0..50).map(|i| format!("{base}/by{i:02}")).collect();
    let (listener, mut rx) = connect_with_notifications().await;
    listen(&listener).await;
    let writer = connect().await;
    create_all(&writer, &paths).await;
    create_all(&writer, &bystanders).await;
    append_all(&writer, &bystanders, 1).await;
    append_all(&writer, &paths, 3).await;

    let watched: HashSet<String> = paths.iter().chain(&bystanders).cloned().collect();
    let want: HashMap<String, String> = paths.iter().map(|p| (p.clone(), off(3))).collect();
    let mut heard = hear(&mut rx, &watched, &want, Duration::from_secs(20), Duration::ZERO).await;
    // The bystanders' own append came first; now only the batch counts.
    heard.tails.retain(|p, _| paths.contains(p));
    assert!(!heard.everything, "nobody was told to re-check everything");
    assert_eq!(heard.tails.len(), paths.len(), "every stream of the batch announced");
    for p in &paths {
        assert_eq!(heard.tails[p], vec![off(3)], "{p} announced once, at its tail");
    }
}

#[tokio::test]
async fn an_overflow_names_exactly_the_streams_that_changed() {
    // More streams than the doorbell's shared set holds (8,192): the worker
    // must find the rest in the tables.
    let base = unique_path("storm-overflow");
    let paths: Vec<String> = (0..9_000).map(|i| format!("{base}/{i:04}")).collect();
    let (listener, mut rx) = connect_with_notifications().await;
    listen(&listener).await;
    let writer = connect().await;
    create_all(&writer, &paths).await;
    let watched: HashSet<String> = paths.iter().cloned().collect();

    // First over all of them: every stream is new to the worker.
    append_all(&writer, &paths, 2).await;
    let want: HashMap<String, String> = paths.iter().map(|p| (p.clone(), off(2))).collect();
    let heard = hear(&mut rx, &watched, &want, Duration::from_secs(30), Duration::ZERO).await;
    assert!(!heard.everything, "an overflow is not announced as *");
    let missing = paths.iter().filter(|p| !heard.tails.contains_key(*p)).count();
    assert_eq!(missing, 0, "every stream announced");

    // Then over all but 500: those 500 must not be announced again, every
    // other one exactly at its new tail, although 8,500 > 8,192 overflow.
    let (bystanders, changed) = paths.split_at(500);
    append_all(&writer, changed, 5).await;
    let want: HashMap<String, String> = changed.iter().map(|p| (p.clone(), off(7))).collect();
    let heard =
        hear(&mut rx, &watched, &want, Duration::from_secs(30), Duration::from_millis(500)).await;
    assert!(!heard.everything, "an overflow is not announced as *");
    let woken: Vec<&String> = bystanders.iter().filter(|p| heard.tails.contains_key(*p)).collect();
    assert!(
        woken.is_empty(),
        "{} unchanged streams announced, e.g. {:?}",
        woken.len(),
        woken.first()
    );
    for p in changed {
        assert_eq!(heard.tails.get(p), Some(&vec![off(7)]), "{p} announced once, at its tail");
    }
}
