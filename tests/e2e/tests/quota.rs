//! Storage quotas over HTTP: an append that would pass a stream's quota is
//! 507 Insufficient Storage with a message naming the limit, and appends
//! nothing; one that fits still goes through.

use ds_e2e::{Sidecar, http, sql, unique_path};

#[tokio::test]
async fn an_append_over_a_quota_is_507_and_appends_nothing() {
    let sidecar = Sidecar::start(&[]).await;
    let db = sql().await;
    let path = unique_path("quota");
    let url = sidecar.stream(&path);
    let created = http().put(&url).header("content-type", "text/plain").send().await.unwrap();
    assert_eq!(created.status(), 201);
    db.execute("SELECT ds.set_stream_quota($1, 10)", &[&path]).await.unwrap();

    let post = |body: &'static str| {
        http().post(&url).header("content-type", "text/plain").body(body).send()
    };
    assert_eq!(post("12345678").await.unwrap().status(), 204);
    let refused = post("abcde").await.unwrap();
    assert_eq!(refused.status(), 507);
    let message = refused.text().await.unwrap();
    assert!(message.contains("quota"), "{message}");

    let read = http().get(format!("{url}?offset=-1")).send().await.unwrap();
    assert_eq!(read.text().await.unwrap(), "12345678", "nothing of the refused append");
    assert_eq!(post("ab").await.unwrap().status(), 204, "what fits still goes through");
}
