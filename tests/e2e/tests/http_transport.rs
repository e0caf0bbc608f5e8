//! The HTTP layer under the routes: HTTP/1.1 and HTTP/2 with prior knowledge
//! on one port (told apart by the first bytes the client sends), and
//! response compression, which applies to catch-up reads a client asked to
//! have compressed and to nothing else (no 204, no SSE); and what every
//! response carries, refusals included (request id, security headers).

use std::io::Read;
use std::time::Duration;

use ds_e2e::{JWT_FLAGS, Sidecar, create_stream, http, read_events, unique_path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Text that compresses well: 64 KiB of repeated lines.
fn compressible() -> String {
    (0..2048).map(|i| format!("line {:05} of the stream\n", i % 100)).collect::<String>()
}

#[tokio::test]
async fn http1_and_http2_with_prior_knowledge_share_the_port() {
    let sidecar = Sidecar::start(&[]).await;
    let path = unique_path("transport/h2c");
    create_stream(&sidecar, &path, "text/plain").await;

    let h2 = reqwest::Client::builder().no_proxy().http2_prior_knowledge().build().unwrap();
    let r = h2
        .post(sidecar.stream(&path))
        .header("content-type", "text/plain")
        .body("over h2c;")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 204);
    let r = http()
        .post(sidecar.stream(&path))
        .header("content-type", "text/plain")
        .body("over http/1.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status().as_u16(), 204);

    for client in [&h2, &http()] {
        let r = client.get(format!("{}?offset=-1", sidecar.stream(&path))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), "over h2c;over http/1.1");
    }
}

/// A request whose first byte comes alone (not enough to tell the protocol
/// by the preface) is still served as HTTP/1.1, and hyper reads the byte.
#[tokio::test]
async fn a_request_trickling_in_is_served() {
    let sidecar = Sidecar::start(&[]).await;
    let addr = sidecar.url("").trim_start_matches("http://").trim_end_matches('/').to_owned();
    for first in ["G", "P"] {
        // "P" is also how the HTTP/2 preface begins: the server must wait
        // for more before deciding.
        let (head, rest) = if first == "G" {
            ("G", "ET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        } else {
            (
                "P",
                "UT /v1/stream/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
        };
        let mut socket = TcpStream::connect(&addr).await.unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        socket.write_all(rest.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        timeout(Duration::from_secs(10), socket.read_to_end(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 "), "{first}: {answer}");
        if first == "G" {
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        } else {
            // No stream name: a client error, not a hang or a 500.
            assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        }
    }
}

#[tokio::test]
async fn only_reads_that_asked_for_it_are_compressed() {
    let sidecar = Sidecar::start(&[]).await;
    let path = unique_path("transport/gzip");
    create_stream(&sidecar, &path, "text/plain").await;
    let content = compressible();

    // An append's 204 has no body to compress.
    let r = http()
        .post(sidecar.stream(&path))
        .header("content-type", "text/plain")
        .header("accept-encoding", "gzip")
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(!r.headers().contains_key("content-encoding"));

    // Asked for: gzip, and it decodes to the stream's bytes.
    let url = format!("{}?offset=-1", sidecar.stream(&path));
    let r = http().get(&url).header("accept-encoding", "gzip").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(r.headers()["vary"].to_str().unwrap().to_ascii_lowercase().contains("accept-encoding"));
    assert!(r.headers().contains_key("stream-next-offset"));
    let compressed = r.bytes().await.unwrap();
    assert!(compressed.len() < content.len() / 4, "{} bytes", compressed.len());
    let mut decoded = String::new();
    flate2::read::GzDecoder::new(&compressed[..]).read_to_string(&mut decoded).unwrap();
    assert_eq!(decoded, content);

    // Not asked for: the bytes as they are.
    let r = http().get(&url).send().await.unwrap();
    assert!(!r.headers().contains_key("content-encoding"));
    assert_eq!(r.text().await.unwrap(), content);

    // SSE is never compressed (events must reach the client as written),
    // even when the client accepts gzip, as browsers always do.
    let r = http()
        .get(format!("{}?offset=-1&live=sse", sidecar.stream(&path)))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(!r.headers().contains_key("content-encoding"));
    let mut got = String::new();
    let read = read_events(r, |e| {
        if e.event == "data" {
            got.push_str(&e.data);
        }
        got.len() < content.len() - 2048
    });
    timeout(Duration::from_secs(10), read).await.expect("SSE events in time");
    assert!(content.starts_with(&got), "SSE data is a prefix of the stream");
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_the_security_headers() {
    let sidecar = Sidecar::start(&JWT_FLAGS).await;
    let missing = sidecar.stream(&unique_path("transport/missing"));
    let check = |r: &reqwest::Response, what: &str| {
        assert_eq!(r.headers()["content-security-policy"], "sandbox", "{what}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(r.headers()["cross-origin-resource-policy"], "cross-origin", "{what}");
        r.headers()["x-request-id"].to_str().unwrap().to_owned()
    };
    // Refused before any handler runs: no token, a method no route has,
    // an unknown path; each gets an id of its own.
    let r = http().get(&missing).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let a = check(&r, "401");
    let r = http().patch(&missing).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let b = check(&r, "405");
    let r = http().get(sidecar.url("/no/such/route")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let c = check(&r, "404");
    assert!(a != b && b != c && a != c, "{a} {b} {c}");
    // The client's own id comes back as sent, even one that is not text.
    let r = http().get(&missing).header("x-request-id", "client-7").send().await.unwrap();
    assert_eq!(check(&r, "client id"), "client-7");
    let odd = reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap();
    let r = http().get(&missing).header("x-request-id", odd.clone()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.headers()["x-request-id"], odd);
}
