//! Retention against a real cluster: reads at, before and after the
//! boundary while appenders, rotations and trims run; forks created while
//! their source is trimmed keep every byte they inherit; the worker applies
//! policies and defaults; a kill -9 in the middle of a trim loses nothing
//! readable and leaves the boundary at a message.
//!
//! Messages are `{"i":"NNNNNN"}`, 14 bytes each, so a message's number and
//! its offset determine each other where one writer appends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, sleep};
use tokio_postgres::Client;

use crate::worker::{configure, crash_restart, reset};
use crate::{connect, off, sqlstate, unique_path};

const SIZE: i64 = 14;

fn message(n: i64) -> String {
    format!(r#"{{"i":"{n:06}"}}"#)
}

fn number(data: &[u8]) -> i64 {
    let text = std::str::from_utf8(data).expect("utf-8");
    text[6..12].parse().unwrap_or_else(|_| panic!("a test message: {text}"))
}

fn pos(offset: &str) -> i64 {
    ds_core::Offset::parse(offset).expect("an offset").as_i64()
}

/// (tail, earliest retained) positions of a stream.
async fn head(c: &Client, path: &str) -> (i64, i64) {
    let row = c
        .query_one("SELECT next_offset, earliest_offset FROM ds.head($1)", &[&path])
        .await
        .unwrap();
    (pos(row.get(0)), pos(row.get(1)))
}

/// Every message from `from` (a position or -1) to the tail, paging with
/// `ds.read`: (start position, data). Checks the rows are contiguous.
async fn read_from(
    c: &Client,
    path: &str,
    from: Option<i64>,
) -> Result<Vec<(i64, Vec<u8>)>, String> {
    let mut out: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut at = from.map_or_else(|| "-1".to_owned(), |p| off(p as u64));
    loop {
        let rows = c
            .query("SELECT start_offset, next_offset, data FROM ds.read($1, $2)", &[&path, &at])
            .await
            .map_err(|e| sqlstate(&e))?;
        if rows.is_empty() {
            return Ok(out);
        }
        for r in rows {
            let start = pos(r.get(0));
            if let Some((prev, data)) = out.last() {
                assert_eq!(start, prev + data.len() as i64, "rows are contiguous");
            }
            at = r.get::<_, String>(1);
            out.push((start, r.get(2)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_at_before_and_after_the_boundary_while_appends_rotations_and_trims_run() {
    const APPENDERS: i64 = 3;
    const PER_APPENDER: i64 = 150;
    const KEEP: i64 = 50 * SIZE;
    let path = unique_path("retention-live");
    let admin = connect().await;
    admin.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    admin.execute("SELECT ds.set_retention($1, NULL, $2)", &[&path, &KEEP]).await.unwrap();
    // Where each appended message went (start position -> number).
    let placed: Arc<Mutex<HashMap<i64, i64>>> = Arc::default();
    let mut appenders = Vec::new();
    for t in 0..APPENDERS {
        let (path, placed) = (path.clone(), placed.clone());
        appenders.push(tokio::spawn(async move {
            let c = connect().await;
            for k in 0..PER_APPENDER {
                let n = t * 1000 + k;
                let next: String = c
                    .query_one("SELECT ds.append($1, $2::text)", &[&path, &message(n)])
                    .await
                    .unwrap()
                    .get(0);
                placed.lock().unwrap().insert(pos(&next) - SIZE, n);
            }
        }));
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Rotation (small segments) and trims, interleaved, until the appenders end.
    let trimmer = {
        let (path, done) = (path.clone(), done.clone());
        tokio::spawn(async move {
            let c = connect().await;
            c.batch_execute("SET ds.segment_target_bytes = 140; SET ds.hot_tail_bytes = 140")
                .await
                .unwrap();
            let mut trims = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                c.execute("SELECT ds.rotate($1)", &[&path]).await.unwrap();
                c.execute("SELECT ds.trim($1)", &[&path]).await.unwrap();
                trims += 1;
            }
            trims
        })
    };
    // Readers: from -1, the first row is at the earliest offset; a read
    // below it is SD410; each row holds a whole message.
    let reader = {
        let (path, done) = (path.clone(), done.clone());
        tokio::spawn(async move {
            let c = connect().await;
            let (mut gone, mut reads) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let (_, earliest) = head(&c, &path).await;
                for from in [None, Some(earliest), Some((earliest - SIZE).max(0))] {
                    match read_from(&c, &path, from).await {
                        Ok(rows) => {
                            reads += 1;
                            if let Some((start, data)) = rows.first() {
                                assert!(*start >= from.unwrap_or(0), "never below the request");
                                assert_eq!(data.len() as i64, SIZE, "whole messages");
                            }
                        }
                        // Trimmed between the head and a page of the read.
                        Err(code) => {
                            assert_eq!(code, "SD410", "only a trim makes a read fail");
                            gone += 1;
                        }
                    }
                }
            }
            (reads, gone)
        })
    };
    for a in appenders {
        a.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let trims = trimmer.await.unwrap();
    let (reads, gone) = reader.await.unwrap();
    assert!(trims > 0 && reads > 0, "trims {trims}, reads {reads}");
    // A last trim, then the exact state.
    admin.execute("SELECT ds.trim($1)", &[&path]).await.unwrap();
    let (tail, earliest) = head(&admin, &path).await;
    assert_eq!(tail, APPENDERS * PER_APPENDER * SIZE);
    assert!(tail - earliest >= KEEP, "at least max_bytes stays: {tail} - {earliest}");
    assert!(earliest > 0, "something was trimmed");
    let placed = placed.lock().unwrap().clone();
    let rows = read_from(&admin, &path, None).await.unwrap();
    assert_eq!(rows.first().map(|r| r.0), Some(earliest), "-1 starts at the boundary, a message");
    for (start, data) in &rows {
        assert_eq!(Some(&number(data)), placed.get(start), "the message appended at {start}");
    }
    assert_eq!(rows.len() as i64, (tail - earliest) / SIZE, "nothing above the cut is lost");
    // At, before and after the boundary.
    assert_eq!(read_from(&admin, &path, Some(earliest)).await.unwrap(), rows);
    assert_eq!(read_from(&admin, &path, Some(earliest + SIZE)).await.unwrap(), rows[1..]);
    assert_eq!(read_from(&admin, &path, Some(earliest - SIZE)).await, Err("SD410".into()));
    assert_eq!(read_from(&admin, &path, Some(0)).await, Err("SD410".into()));
    let stored: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM ds.messages m WHERE m.stream_id = h.stream_id \
                       AND m.start_pos < $2) \
                  + (SELECT count(*) FROM ds.segments g WHERE g.stream_id = h.stream_id \
                       AND g.start_pos < $2) \
             FROM ds.head($1) h",
            &[&path, &earliest],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0, "nothing below the cut is stored");
    eprintln!("{trims} trims, {reads} reads, {gone} SD410 during the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forks_created_while_their_source_is_trimmed_keep_every_inherited_byte() {
    const FORKERS: usize = 3;
    const ROUNDS: usize = 15;
    let source = unique_path("retention-fork-source");
    let admin = connect().await;
    admin.execute("SELECT ds.create($1, 'application/json')", &[&source]).await.unwrap();
    for n in 0..200 {
        admin.execute("SELECT ds.append($1, $2::text)", &[&source, &message(n)]).await.unwrap();
    }
    // Trim the source as far as its forks allow, while appending more.
    admin.execute("SELECT ds.set_retention($1, NULL, 0)", &[&source]).await.unwrap();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trimmer = {
        let (source, done) = (source.clone(), done.clone());
        tokio::spawn(async move {
            let c = connect().await;
            let mut n = 200;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                c.execute("SELECT ds.append($1, $2::text)", &[&source, &message(n)]).await.unwrap();
                n += 1;
                c.execute("SELECT ds.trim($1)", &[&source]).await.unwrap();
            }
        })
    };
    let mut forkers = Vec::new();
    for t in 0..FORKERS {
        let source = source.clone();
        forkers.push(tokio::spawn(async move {
            let c = connect().await;
            let (mut made, mut refused, mut kept) = (0, 0, Vec::new());
            for r in 0..ROUNDS {
                let (tail, earliest) = head(&c, &source).await;
                // A fork point a few messages into what is retained now.
                let at = (earliest + SIZE * (r as i64 % 4)).min(tail);
                let fork = format!("{source}/fork-{t}-{r}");
                match c
                    .execute("SELECT ds.fork($1, $2, $3)", &[&fork, &source, &off(at as u64)])
                    .await
                {
                    Ok(_) => made += 1,
                    Err(e) => {
                        // The source was trimmed past `at` meanwhile.
                        assert_eq!(sqlstate(&e), "SD410", "{e}");
                        refused += 1;
                        continue;
                    }
                }
                check_fork(&c, &fork, at).await;
                if r % 2 == 0 {
                    kept.push((fork, at));
                } else {
                    c.execute("SELECT ds.delete($1)", &[&fork]).await.unwrap();
                }
            }
            (made, refused, kept)
        }));
    }
    let mut kept = Vec::new();
    let (mut made, mut refused) = (0, 0);
    for f in forkers {
        let (m, r, k) = f.await.unwrap();
        made += m;
        refused += r;
        kept.extend(k);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    trimmer.await.unwrap();
    admin.execute("SELECT ds.trim($1)", &[&source]).await.unwrap();
    assert!(made > 0, "forks were made ({refused} refused)");
    for (fork, at) in &kept {
        check_fork(&admin, fork, *at).await;
    }
    // With the forks gone the source trims past what they held.
    for (fork, _) in &kept {
        admin.execute("SELECT ds.delete($1)", &[fork]).await.unwrap();
    }
    admin.execute("SELECT ds.trim($1)", &[&source]).await.unwrap();
    let (tail, earliest) = head(&admin, &source).await;
    assert_eq!(earliest, tail, "max_bytes 0 and no forks: everything dropped");
    eprintln!("{made} forks made, {refused} refused with SD410, {} kept to the end", kept.len());
}

/// A fork at `at` reads, from -1, exactly the source's messages from its
/// earliest retained offset up to `at`, each the one written there.
async fn check_fork(c: &Client, fork: &str, at: i64) {
    let (tail, earliest) = head(c, fork).await;
    assert_eq!(tail, at, "the fork's tail is its fork point");
    assert!(earliest <= at);
    let rows = read_from(c, fork, None).await.unwrap_or_else(|e| panic!("{fork}: {e}"));
    assert_eq!(rows.first().map_or(at, |r| r.0), earliest, "{fork} starts at its earliest offset");
    assert_eq!(rows.len() as i64, (at - earliest) / SIZE, "{fork} lost no inherited message");
    for (start, data) in rows {
        assert_eq!(number(&data), start / SIZE, "{fork}: the message written at {start}");
    }
}

/// Waits (bounded) until `path`'s earliest retained position passes `past`.
async fn wait_for_trim(c: &Client, path: &str, past: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, earliest) = head(c, path).await;
        if earliest > past {
            return earliest;
        }
        assert!(Instant::now() < deadline, "the worker trimmed {path}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_worker_applies_policies_and_server_defaults() {
    let c = connect().await;
    let own = unique_path("retention-worker-own");
    let defaulted = unique_path("retention-worker-default");
    let (streams_before, bytes_before) = trims_counted(&c).await;
    for path in [&own, &defaulted] {
        c.execute("SELECT ds.create($1, 'application/json')", &[path]).await.unwrap();
        for n in 0..100 {
            c.execute("SELECT ds.append($1, $2::text)", &[path, &message(n)]).await.unwrap();
        }
    }
    c.execute("SELECT ds.set_retention($1, NULL, $2)", &[&own, &(10 * SIZE)]).await.unwrap();
    configure(&c, &[("ds.rotation_interval_ms", "200")]).await;
    let earliest = wait_for_trim(&c, &own, 0).await;
    assert_eq!(earliest, 90 * SIZE, "keeps the newest 10 messages");
    assert_eq!(head(&c, &defaulted).await.1, 0, "no default yet: untouched");
    // 1 kB by default: at least 1024 bytes stay, i.e. 74 messages.
    configure(&c, &[("ds.retention_max_bytes", "1kB")]).await;
    let earliest = wait_for_trim(&c, &defaulted, 0).await;
    assert_eq!(earliest, (100 - 74) * SIZE);
    assert_eq!(head(&c, &own).await.1, 90 * SIZE, "its own policy wins over the default");
    // ds.worker_stats counts both trims once their pass ends (other tests'
    // trims may add to the counters: at least these).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (streams, bytes) = trims_counted(&c).await;
        if streams >= streams_before + 2 && bytes >= bytes_before + (90 + 26) * SIZE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ds.worker_stats counts the 2 trims of {} bytes: {} streams, {} bytes since",
            (90 + 26) * SIZE,
            streams - streams_before,
            bytes - bytes_before
        );
        sleep(Duration::from_millis(100)).await;
    }
    reset(&c, &["ds.retention_max_bytes", "ds.rotation_interval_ms"]).await;
}

/// `ds.worker_stats()`'s (streams_trimmed, bytes_trimmed).
async fn trims_counted(c: &Client) -> (i64, i64) {
    let row = c
        .query_one("SELECT streams_trimmed, bytes_trimmed FROM ds.worker_stats()", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn kill_9_in_the_middle_of_a_trim_loses_nothing_readable() {
    let c = connect().await;
    let path = unique_path("retention-crash");
    c.execute("SELECT ds.create($1, 'application/json')", &[&path]).await.unwrap();
    for n in 0..200 {
        c.execute("SELECT ds.append($1, $2::text)", &[&path, &message(n)]).await.unwrap();
    }
    let before = read_from(&c, &path, None).await.unwrap();
    // The pause first, so that the worker's first trim of the stream pauses.
    configure(&c, &[("ds.rotation_interval_ms", "200"), ("ds.debug_trim_pause_ms", "5000")]).await;
    c.execute("SELECT ds.set_retention($1, NULL, $2)", &[&path, &(50 * SIZE)]).await.unwrap();
    // Wait until the worker has deleted the rows but not yet committed: it
    // holds the stream row (RowShareLock on ds.streams; rotation never
    // does) and has deleted from ds.messages.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let deleting: bool = c
            .query_one(
                "SELECT count(DISTINCT l.relation) = 2 \
                 FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
                 WHERE a.backend_type = 'durable_streams maintenance' AND l.locktype = 'relation' \
                   AND ((l.mode = 'RowExclusiveLock' AND l.relation = 'ds.messages'::regclass) \
                        OR (l.mode = 'RowShareLock' AND l.relation = 'ds.streams'::regclass))",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if deleting {
            break;
        }
        assert!(Instant::now() < deadline, "the worker started trimming");
        sleep(Duration::from_millis(50)).await;
    }
    let c = crash_restart(c).await;
    reset(&c, &["ds.debug_trim_pause_ms"]).await;
    // The trim rolled back: the boundary and every message are as before.
    assert_eq!(head(&c, &path).await.1, 0, "the interrupted trim left no boundary");
    assert_eq!(read_from(&c, &path, None).await.unwrap(), before, "nothing lost");
    // The worker trims again once it is back, at a message boundary.
    let earliest = wait_for_trim(&c, &path, 0).await;
    assert_eq!(earliest, 150 * SIZE);
    let after = read_from(&c, &path, None).await.unwrap();
    assert_eq!(after, before[150..], "exactly the newest 50 messages, unchanged");
    reset(&c, &["ds.rotation_interval_ms"]).await;
}
