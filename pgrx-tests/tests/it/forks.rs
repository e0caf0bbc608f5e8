//! Fork reference counts stay right when forks are created and deleted
//! concurrently, and soft-deleted sources are cleaned up exactly when their
//! last fork goes.

use crate::{connect, sqlstate, unique_path};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_forks_and_deletes_keep_reference_counts_exact() {
    const FORKERS: usize = 8;
    const ROUNDS: usize = 15;
    let source = unique_path("fork-source");
    let admin = connect().await;
    admin
        .execute("SELECT ds.create($1, 'text/plain', body => 'shared')", &[&source])
        .await
        .unwrap();

    // Each task repeatedly forks the source and deletes its fork again, while
    // the others do the same: the count goes up and down concurrently.
    let mut tasks = Vec::new();
    for t in 0..FORKERS {
        let source = source.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect().await;
            let mut kept = Vec::new();
            for r in 0..ROUNDS {
                let fork = format!("{source}/fork-{t}-{r}");
                c.execute("SELECT ds.fork($1, $2)", &[&fork, &source]).await.unwrap();
                let body: Vec<u8> = c
                    .query_one("SELECT body FROM ds.read_chunk($1)", &[&fork])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(body, b"shared");
                if r % 3 == 0 {
                    kept.push(fork);
                } else {
                    c.execute("SELECT ds.delete($1)", &[&fork]).await.unwrap();
                }
            }
            kept
        }));
    }
    let mut kept = Vec::new();
    for t in tasks {
        kept.extend(t.await.unwrap());
    }
    assert_eq!(
        fork_count(&admin, &source).await as usize,
        kept.len(),
        "one reference per live fork"
    );

    // Delete the source (soft, forks remain), then the forks concurrently:
    // the source disappears with the last one, never earlier.
    admin.execute("SELECT ds.delete($1)", &[&source]).await.unwrap();
    let e = admin.query_one("SELECT * FROM ds.head($1)", &[&source]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "55006", "soft-deleted: 410 over HTTP");
    let last = kept.pop().unwrap();
    let mut deletes = Vec::new();
    for fork in kept {
        deletes.push(tokio::spawn(async move {
            let c = connect().await;
            c.execute("SELECT ds.delete($1)", &[&fork]).await.unwrap();
        }));
    }
    for d in deletes {
        d.await.unwrap();
    }
    assert_eq!(fork_count(&admin, &source).await, 1, "the last fork still holds the source");
    let body: Vec<u8> =
        admin.query_one("SELECT body FROM ds.read_chunk($1)", &[&last]).await.unwrap().get(0);
    assert_eq!(body, b"shared");
    admin.execute("SELECT ds.delete($1)", &[&last]).await.unwrap();
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM ds.streams WHERE path = $1 OR path LIKE $1 || '/fork-%'",
            &[&source],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the source went with its last fork");
}

async fn fork_count(c: &tokio_postgres::Client, path: &str) -> i32 {
    c.query_one("SELECT fork_count FROM ds.streams WHERE path = $1", &[&path]).await.unwrap().get(0)
}
