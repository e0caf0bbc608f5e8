//! Streams on physical standbys: what a primary commits, a hot standby
//! replays and serves to readers.

use ds_e2e::cluster::{Cluster, DATABASE};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_standby_reads_what_the_primary_committed() {
    let primary = Cluster::primary("primary", &[]).await;
    let standby = Cluster::standby(&primary, "standby1", &[]).await;
    let db = primary.sql(DATABASE).await;
    db.batch_execute(
        "SELECT ds.create('orders', 'application/json');
         SELECT ds.append('orders', '{\"n\":1}'::jsonb);
         SELECT ds.append('orders', '{\"n\":2}'::jsonb);",
    )
    .await
    .unwrap();
    standby.wait_replayed(&primary).await;
    let replica = standby.sql(DATABASE).await;
    let rows = replica
        .query(
            "SELECT convert_from(data, 'UTF8') FROM ds.read('orders', '-1') ORDER BY start_offset",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, ["{\"n\":1}", "{\"n\":2}"]);
}
