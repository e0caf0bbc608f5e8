//! Several sidecars on one database behave as one server: an append through
//! one wakes the live readers of all, concurrent appends through all of them
//! are one gap-free sequence that every reader sees in the same order, and a
//! producer may send each request through a different sidecar (order,
//! duplicates and fencing are decided by the database, not by a process).

use std::time::Duration;

use ds_e2e::{
    Event, Sidecar, create_json_stream, http, next_offset, read_events, sql, unique_path,
};
use tokio::time::timeout;

async fn three() -> Vec<Sidecar> {
    let mut sidecars = Vec::new();
    for _ in 0..3 {
        sidecars.push(Sidecar::start(&["--long-poll-timeout-ms", "20000"]).await);
    }
    sidecars
}

fn values(body: &str) -> Vec<String> {
    let v: Vec<serde_json::Value> = serde_json::from_str(body).expect("a JSON array");
    v.iter().map(|m| m.to_string()).collect()
}

/// Opens an SSE reader from `offset` that collects `want` messages.
fn sse(
    sidecar: &Sidecar,
    path: &str,
    offset: &str,
    want: usize,
) -> tokio::task::JoinHandle<Vec<String>> {
    let url = format!("{}?offset={offset}&live=sse", sidecar.stream(path));
    tokio::spawn(async move {
        let r = http().get(url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut got = Vec::new();
        read_events(r, |e: Event| {
            if e.event == "data" {
                got.extend(values(&e.data));
            }
            got.len() < want
        })
        .await;
        got
    })
}

/// The whole stream, read by catch-up requests through `sidecar`.
async fn read_all(sidecar: &Sidecar, path: &str) -> Vec<String> {
    let mut offset = "-1".to_owned();
    let mut got = Vec::new();
    loop {
        let r =
            http().get(format!("{}?offset={offset}", sidecar.stream(path))).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let done = r.headers().contains_key("stream-up-to-date");
        offset = next_offset(&r);
        got.extend(values(&r.text().await.unwrap()));
        if done {
            return got;
        }
    }
}

async fn post(
    sidecar: &Sidecar,
    path: &str,
    body: String,
    producer: Option<(&str, u64, u64)>,
) -> (u16, String) {
    let mut request =
        http().post(sidecar.stream(path)).header("content-type", "application/json").body(body);
    if let Some((id, epoch, seq)) = producer {
        request = request
            .header("producer-id", id)
            .header("producer-epoch", epoch.to_string())
            .header("producer-seq", seq.to_string());
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_through_one_sidecar_wakes_the_readers_of_all() {
    let sidecars = three().await;
    let path = unique_path("many-wake");
    let tail = create_json_stream(&sidecars[0], &path).await;
    let mut polls = Vec::new();
    let mut streams = Vec::new();
    for s in &sidecars {
        let url = format!("{}?offset={tail}&live=long-poll", s.stream(&path));
        polls.push(tokio::spawn(async move {
            let r = http().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
        streams.push(sse(s, &path, &tail, 2));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Through the second sidecar: the first and third only hear of it from
    // the database's notification.
    assert_eq!(post(&sidecars[1], &path, "{\"n\":1}".into(), None).await.0, 204);
    for p in polls {
        let (status, body) = timeout(Duration::from_secs(10), p).await.expect("woken").unwrap();
        assert_eq!((status, body.as_str()), (200, "[{\"n\":1}]"));
    }
    assert_eq!(post(&sidecars[2], &path, "{\"n\":2}".into(), None).await.0, 204);
    for s in streams {
        let got = timeout(Duration::from_secs(10), s).await.expect("SSE woken").unwrap();
        assert_eq!(got, ["{\"n\":1}", "{\"n\":2}"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_through_three_sidecars_are_one_gap_free_order() {
    const WRITERS_PER_SIDECAR: usize = 3;
    const APPENDS: usize = 25;
    let total = 3 * WRITERS_PER_SIDECAR * APPENDS;
    let sidecars = three().await;
    let path = unique_path("many-order");
    let tail = create_json_stream(&sidecars[0], &path).await;
    let readers: Vec<_> = sidecars.iter().map(|s| sse(s, &path, &tail, total)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut writers = Vec::new();
    for (k, s) in sidecars.iter().enumerate() {
        for w in 0..WRITERS_PER_SIDECAR {
            let url = s.stream(&path);
            let writer = k * WRITERS_PER_SIDECAR + w;
            writers.push(tokio::spawn(async move {
                for i in 0..APPENDS {
                    let r = http()
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(format!("{{\"w\":{writer},\"i\":{i}}}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 204, "writer {writer} append {i}");
                }
            }));
        }
    }
    for w in writers {
        timeout(Duration::from_secs(60), w).await.expect("writers finish").unwrap();
    }

    // Each message exactly once, each writer's in its own order.
    let all = read_all(&sidecars[0], &path).await;
    assert_eq!(all.len(), total);
    let mut next = [0u64; 3 * WRITERS_PER_SIDECAR];
    for m in &all {
        let v: serde_json::Value = serde_json::from_str(m).unwrap();
        let (w, i) = (v["w"].as_u64().unwrap() as usize, v["i"].as_u64().unwrap());
        assert_eq!(i, next[w], "writer {w}'s appends once each, in order");
        next[w] += 1;
    }
    // Every sidecar serves the same sequence, catch-up and live.
    for s in &sidecars[1..] {
        assert_eq!(read_all(s, &path).await, all);
    }
    for r in readers {
        let got = timeout(Duration::from_secs(20), r).await.expect("SSE readers done").unwrap();
        assert_eq!(got, all, "an SSE reader saw the same order");
    }
    // Gap-free: each row starts where the previous one ended.
    let db = sql().await;
    let rows = db
        .query(
            "SELECT start_offset, next_offset FROM ds.read($1, '-1') ORDER BY start_offset",
            &[&path],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), total);
    let mut expected_start = tail;
    for row in rows {
        let (start, end): (String, String) = (row.get(0), row.get(1));
        assert_eq!(start, expected_start, "no gap");
        expected_start = end;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_producer_through_three_sidecars_is_ordered_deduplicated_and_fenced() {
    let sidecars = three().await;
    let path = unique_path("many-producer");
    create_json_stream(&sidecars[0], &path).await;
    let msg = |epoch: u64, seq: u64| format!("{{\"e\":{epoch},\"s\":{seq}}}");
    // Each request through the next sidecar.
    for seq in 0..30u64 {
        let via = &sidecars[seq as usize % 3];
        let (status, body) = post(via, &path, msg(0, seq), Some(("importer", 0, seq))).await;
        assert_eq!(status, 200, "seq {seq}: {body}");
    }
    // A retry through another sidecar is a duplicate, and so is an older one.
    for (via, seq) in [(1, 29), (2, 29), (0, 3)] {
        let (status, _) =
            post(&sidecars[via], &path, msg(0, seq), Some(("importer", 0, seq))).await;
        assert_eq!(status, 204, "seq {seq} again through sidecar {via}");
    }
    // A gap is refused wherever it is sent.
    let (status, _) = post(&sidecars[1], &path, msg(0, 31), Some(("importer", 0, 31))).await;
    assert_eq!(status, 409, "seq 31 after 29 is a gap");
    // A new epoch through one sidecar fences the old one on all of them.
    let (status, body) = post(&sidecars[0], &path, msg(1, 0), Some(("importer", 1, 0))).await;
    assert_eq!(status, 200, "epoch 1: {body}");
    for via in [1, 2, 0] {
        let (status, _) = post(&sidecars[via], &path, msg(0, 30), Some(("importer", 0, 30))).await;
        assert_eq!(status, 403, "stale epoch through sidecar {via}");
    }
    let expected: Vec<String> = (0..30).map(|s| msg(0, s)).chain([msg(1, 0)]).collect();
    for s in &sidecars {
        assert_eq!(read_all(s, &path).await, expected);
    }
}
