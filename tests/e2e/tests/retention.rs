//! Retention over HTTP: HEAD names the earliest retained offset; a read
//! (catch-up, long-poll, SSE) or a fork from before it is 410 Gone with
//! `Stream-Earliest-Offset`; `-1` starts at it; a stream that retention
//! emptied answers `-1` with no data and nothing cacheable; a long-poll
//! waiting at the tail is not disturbed by a trim.

use std::time::Duration;

use ds_e2e::{Sidecar, http, next_offset, sql, unique_path};

fn off(pos: u64) -> String {
    ds_core::Offset(pos).to_string()
}

const EARLIEST: &str = "stream-earliest-offset";

#[tokio::test]
async fn reads_before_the_earliest_retained_offset_are_410_with_the_offset() {
    let sidecar = Sidecar::start(&[]).await;
    let db = sql().await;
    let path = unique_path("retention");
    let url = sidecar.stream(&path);
    let put = http().put(&url).header("content-type", "text/plain").send().await.unwrap();
    assert_eq!(put.status(), 201);
    for i in 1..=5 {
        let r = http()
            .post(&url)
            .header("content-type", "text/plain")
            .body(format!("m{i};"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let head = http().head(&url).send().await.unwrap();
    assert_eq!(head.headers()[EARLIEST], off(0).as_str(), "nothing trimmed yet");
    db.execute("SELECT ds.set_retention($1, NULL, 6)", &[&path]).await.unwrap();
    db.execute("SELECT ds.trim($1)", &[&path]).await.unwrap();

    let head = http().head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()[EARLIEST], off(9).as_str());
    assert_eq!(next_offset(&head), off(15));

    // -1 starts at the earliest retained offset; at and after it: data.
    for (from, want) in [("-1".to_owned(), "m4;m5;"), (off(9), "m4;m5;"), (off(12), "m5;")] {
        let r = http().get(format!("{url}?offset={from}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "from {from}");
        assert_eq!(r.text().await.unwrap(), want, "from {from}");
    }
    // Before it: 410 for every read mode, naming the offset to go on from.
    for query in [
        format!("offset={}", off(0)),
        format!("offset={}", off(6)),
        format!("offset={}&live=long-poll", off(3)),
        format!("offset={}&live=sse", off(3)),
    ] {
        let r = http().get(format!("{url}?{query}")).send().await.unwrap();
        assert_eq!(r.status(), 410, "{query}");
        assert_eq!(r.headers()[EARLIEST], off(9).as_str(), "{query}");
        let body = r.text().await.unwrap();
        assert!(body.contains(&off(9)) && body.contains("earliest retained"), "{body}");
    }
    // A fork from before it, too.
    let fork = http()
        .put(sidecar.stream(&format!("{path}-fork")))
        .header("stream-forked-from", format!("/v1/stream/{path}"))
        .header("stream-fork-offset", off(3))
        .send()
        .await
        .unwrap();
    assert_eq!(fork.status(), 410);
    assert_eq!(fork.headers()[EARLIEST], off(9).as_str());

    // A long-poll waiting at the tail sees the next append after a trim.
    let waiting = tokio::spawn({
        let url = url.clone();
        async move {
            http().get(format!("{url}?offset={}&live=long-poll", off(15))).send().await.unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    db.execute("SELECT ds.set_retention($1, NULL, 0)", &[&path]).await.unwrap();
    db.execute("SELECT ds.trim($1)", &[&path]).await.unwrap();
    let r =
        http().post(&url).header("content-type", "text/plain").body("m6;").send().await.unwrap();
    assert_eq!(r.status(), 204);
    let woken = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert_eq!(woken.status(), 200);
    assert_eq!(woken.text().await.unwrap(), "m6;");

    // Emptied by retention: -1 answers no data at the tail, not cacheable.
    db.execute("SELECT ds.trim($1)", &[&path]).await.unwrap();
    let r = http().get(format!("{url}?offset=-1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(next_offset(&r), off(18));
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["stream-up-to-date"], "true");
    assert_eq!(r.text().await.unwrap(), "");
}
