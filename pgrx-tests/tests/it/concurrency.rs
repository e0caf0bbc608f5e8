//! Many connections appending to one stream: offsets contiguous, every byte
//! present once, and a concurrent reader never sees a gap.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{connect, off, unique_path};

const WRITERS: usize = 32;
const APPENDS_PER_WRITER: usize = 40;

/// Every message is exactly 12 bytes: "wWW-NNNNNN;\n"-like, unique per writer and seq.
fn message(writer: usize, n: usize) -> String {
    format!("w{writer:02}-{n:06};\n")
}

/// Checks that rows of ds.read are back to back from 0; returns the bytes.
fn contiguous(rows: &[tokio_postgres::Row]) -> Vec<u8> {
    let mut expected_start = off(0);
    let mut bytes = Vec::new();
    for row in rows {
        let start: String = row.get("start_offset");
        let next: String = row.get("next_offset");
        let data: Vec<u8> = row.get("data");
        assert_eq!(start, expected_start, "gap or overlap in the log");
        assert!(next > start, "offsets strictly increase");
        assert_eq!(next, off(bytes.len() as u64 + data.len() as u64));
        bytes.extend_from_slice(&data);
        expected_start = next;
    }
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_contiguous_and_readers_see_no_gap() {
    let path = unique_path("concurrent");
    let setup = connect().await;
    setup.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (path, done) = (path.clone(), done.clone());
        tokio::spawn(async move {
            let client = connect().await;
            let mut previous = Vec::new();
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) || reads == 0 {
                let rows = client.query("SELECT * FROM ds.read($1)", &[&path]).await.unwrap();
                let bytes = contiguous(&rows);
                assert!(bytes.starts_with(&previous), "a later read must extend an earlier one");
                assert_eq!(bytes.len() % 12, 0, "readers only ever see whole appends");
                previous = bytes;
                reads += 1;
            }
            reads
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let path = path.clone();
        writers.push(tokio::spawn(async move {
            let client = connect().await;
            let mut last = String::new();
            for n in 0..APPENDS_PER_WRITER {
                let row = client
                    .query_one("SELECT ds.append($1, $2::text)", &[&path, &message(w, n)])
                    .await
                    .unwrap();
                let tail: String = row.get(0);
                assert!(tail > last, "a writer's own offsets increase");
                last = tail;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 0);

    let rows = setup.query("SELECT * FROM ds.read($1)", &[&path]).await.unwrap();
    let bytes = contiguous(&rows);
    assert_eq!(bytes.len(), WRITERS * APPENDS_PER_WRITER * 12);
    let seen: Vec<&[u8]> = bytes.chunks(12).collect();
    let unique: HashSet<&[u8]> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "every append present exactly once");
    for w in 0..WRITERS {
        // Each writer's appends appear in the order it made them.
        let mine: Vec<&[u8]> = seen
            .iter()
            .copied()
            .filter(|m| m.starts_with(format!("w{w:02}-").as_bytes()))
            .collect();
        let expected: Vec<String> = (0..APPENDS_PER_WRITER).map(|n| message(w, n)).collect();
        assert_eq!(mine, expected.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
    }
    let tail: String =
        setup.query_one("SELECT next_offset FROM ds.head($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(tail, off(bytes.len() as u64));
}
