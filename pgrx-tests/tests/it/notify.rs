//! Notifications reach LISTENing clients at commit, never before and never
//! for rolled-back work.

use std::time::Duration;

use tokio::time::timeout;

use crate::{connect, connect_with_notifications, off, unique_path};

const CHANNEL: &str = "durable_streams";

async fn next_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    path: &str,
    wait: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match timeout(left, rx.recv()).await {
            Ok(Some((channel, payload)))
                if channel == CHANNEL && payload.ends_with(&format!(" {path}")) =>
            {
                return Some(payload);
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn append_close_and_delete_notify_at_commit() {
    let path = unique_path("notify");
    let (listener, mut rx) = connect_with_notifications().await;
    listener.batch_execute(&format!("LISTEN {CHANNEL}")).await.unwrap();
    let mut writer = connect().await;
    writer.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();

    let tx = writer.transaction().await.unwrap();
    tx.execute("SELECT ds.append($1, 'hello'::text)", &[&path]).await.unwrap();
    assert_eq!(
        next_for(&mut rx, &path, Duration::from_millis(300)).await,
        None,
        "nothing before commit"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        next_for(&mut rx, &path, Duration::from_secs(5)).await,
        Some(format!("{} {path}", off(5)))
    );

    let tx = writer.transaction().await.unwrap();
    tx.execute("SELECT ds.append($1, 'lost'::text)", &[&path]).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(
        next_for(&mut rx, &path, Duration::from_millis(300)).await,
        None,
        "nothing for a rollback"
    );

    writer.execute("SELECT ds.close($1)", &[&path]).await.unwrap();
    assert_eq!(
        next_for(&mut rx, &path, Duration::from_secs(5)).await,
        Some(format!("{} {path}", off(5)))
    );
    writer.execute("SELECT ds.delete($1)", &[&path]).await.unwrap();
    assert_eq!(next_for(&mut rx, &path, Duration::from_secs(5)).await, Some(format!("- {path}")));
}
