//! Live readers served from the sidecar's own appends (`tail::Fresh`): an
//! SSE event or long-poll answer taken from the body of an append this
//! sidecar just committed, when it starts exactly where the reader is,
//! instead of reading it back. The bytes readers get must be exactly the
//! stream's, whatever mix of concurrent HTTP appends (several per group
//! commit), SQL appends and JSON streams (never served this way) runs.

use std::time::Duration;

use ds_e2e::{
    Sidecar, create_json_stream, create_stream, http, next_offset, read_events, sql, unique_path,
};
use tokio::task::JoinSet;
use tokio::time::timeout;

const FRESH: &str = "ds_sidecar_live_fresh_reads_total";
const SSE_CLIENTS: usize = 20;
const WRITERS: usize = 4;
const PER_WRITER: usize = 25;
const SQL_APPENDS: usize = 20;

/// The whole stream from the start, as catch-up reads.
async fn read_all(sidecar: &Sidecar, path: &str) -> String {
    let mut offset = "-1".to_owned();
    let mut all = String::new();
    loop {
        let r =
            http().get(format!("{}?offset={offset}", sidecar.stream(path))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let up_to_date = r.headers().contains_key("stream-up-to-date");
        offset = next_offset(&r);
        all.push_str(&r.text().await.unwrap());
        if up_to_date {
            return all;
        }
    }
}

/// An SSE reader from `offset` until it holds `len` bytes of data.
async fn sse_reader(url: String, len: usize) -> String {
    let r = http().get(url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut got = String::new();
    read_events(r, |e| {
        if e.event == "data" {
            got.push_str(&e.data);
        }
        got.len() < len
    })
    .await;
    got
}

/// A long-poll reader from `offset` until it holds `len` bytes.
async fn long_poll_reader(stream: String, mut offset: String, len: usize) -> String {
    let mut got = String::new();
    while got.len() < len {
        let r =
            http().get(format!("{stream}?offset={offset}&live=long-poll")).send().await.unwrap();
        assert!(matches!(r.status().as_u16(), 200 | 204), "{}", r.status());
        offset = next_offset(&r);
        got.push_str(&r.text().await.unwrap());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_served_from_the_sidecars_own_appends_get_exactly_the_stream() {
    let sidecar = Sidecar::start(&[]).await;
    let path = unique_path("fresh");
    let start = create_stream(&sidecar, &path, "text/plain").await;
    // Every message is 8 bytes, so the readers know when they are done.
    let message = |who: char, w: usize, n: usize| format!("{who}{w}-{n:04}\n");
    let total = (WRITERS * PER_WRITER + SQL_APPENDS) * message('w', 0, 0).len();

    let mut readers = JoinSet::new();
    for _ in 0..SSE_CLIENTS {
        let url = format!("{}?offset={start}&live=sse", sidecar.stream(&path));
        readers.spawn(sse_reader(url, total));
    }
    readers.spawn(long_poll_reader(sidecar.stream(&path), start.clone(), total));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut writers = JoinSet::new();
    for w in 0..WRITERS {
        let url = sidecar.stream(&path);
        writers.spawn(async move {
            for n in 0..PER_WRITER {
                let r = http()
                    .post(&url)
                    .header("content-type", "text/plain")
                    .body(message('w', w, n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 204);
                if n % 5 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
    }
    // Appends the sidecar did not make: readers must read those back.
    let db = sql().await;
    for n in 0..SQL_APPENDS {
        db.execute("SELECT ds.append($1, $2::text)", &[&path, &message('s', 0, n)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    while let Some(w) = writers.join_next().await {
        w.unwrap();
    }

    let stream = read_all(&sidecar, &path).await;
    assert_eq!(stream.len(), total);
    for w in 0..WRITERS {
        let own: Vec<&str> = stream.lines().filter(|l| l.starts_with(&format!("w{w}-"))).collect();
        let expected: Vec<String> =
            (0..PER_WRITER).map(|n| message('w', w, n).trim_end().to_owned()).collect();
        assert_eq!(own, expected, "writer {w}'s appends in its order");
    }
    while let Some(got) = timeout(Duration::from_secs(60), readers.join_next()).await.unwrap() {
        assert_eq!(got.unwrap(), stream, "a live reader got exactly the stream's bytes");
    }
    let served = sidecar.metric(FRESH).await;
    assert!(served > 0.0, "some reads were served from the sidecar's own appends");

    // JSON streams are stored as compact messages, not as the request
    // body: their readers always read.
    let json = unique_path("fresh-json");
    let tail = create_json_stream(&sidecar, &json).await;
    let url = format!("{}?offset={tail}&live=sse", sidecar.stream(&json));
    let reader = tokio::spawn(async move {
        let r = http().get(url).send().await.unwrap();
        let mut got: Vec<serde_json::Value> = Vec::new();
        read_events(r, |e| {
            if e.event == "data" {
                got.extend(serde_json::from_str::<Vec<serde_json::Value>>(&e.data).unwrap());
            }
            got.len() < 3
        })
        .await;
        got
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..3 {
        let r = http()
            .post(sidecar.stream(&json))
            .header("content-type", "application/json")
            .body(format!("{{ \"n\" : {n} }}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = timeout(Duration::from_secs(30), reader).await.unwrap().unwrap();
    let expected: Vec<serde_json::Value> = (0..3).map(|n| serde_json::json!({ "n": n })).collect();
    assert_eq!(got, expected);
    assert_eq!(sidecar.metric(FRESH).await, served, "no JSON read was served from a request body");
}
