//! The probe of each standby: its replay position, polled fast while some
//! read waits for it and slowly otherwise; also its health.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::{IDLE_PROBE, Lsn, POLL_INTERVAL, Replica, Router};

/// The probe of one standby: its replay position, fast while reads wait.
pub(super) async fn probe(router: Arc<Router>, r: Arc<Replica>, shutdown: CancellationToken) {
    const REPLAYED: &str = "SELECT (CASE WHEN pg_catalog.pg_is_in_recovery() \
         THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END)::text";
    let query_timeout = Duration::from_secs(5);
    loop {
        let connected = tokio::select! {
            c = tokio::time::timeout(query_timeout, r.probe.connect(NoTls)) => c,
            () = shutdown.cancelled() => return,
        };
        let client = match connected {
            Ok(Ok((client, connection))) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
            }
            Ok(Err(e)) => {
                tracing::debug!(replica = %r.name, error = %e, "probe cannot connect");
                r.set_up(false, router.m());
                tokio::select! {
                    () = tokio::time::sleep(IDLE_PROBE) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
            Err(_) => {
                r.set_up(false, router.m());
                continue;
            }
        };
        loop {
            let answer = tokio::select! {
                a = tokio::time::timeout(query_timeout, client.query_one(REPLAYED, &[])) => a,
                () = shutdown.cancelled() => return,
            };
            let text: Option<String> = match answer {
                Ok(Ok(row)) => row.get(0),
                Ok(Err(e)) => {
                    tracing::warn!(replica = %r.name, error = %e, "probe failed; reconnecting");
                    r.set_up(false, router.m());
                    break;
                }
                Err(_) => {
                    tracing::warn!(replica = %r.name, "probe timed out; reconnecting");
                    r.set_up(false, router.m());
                    break;
                }
            };
            let at = text.as_deref().and_then(|t| t.parse::<Lsn>().ok()).unwrap_or_default();
            r.replayed.send_if_modified(|v| {
                let newer = at.0 > *v;
                *v = (*v).max(at.0);
                newer
            });
            r.set_up(true, router.m());
            if r.waiters.load(Ordering::SeqCst) > 0 {
                tokio::select! {
                    () = tokio::time::sleep(POLL_INTERVAL) => {}
                    () = shutdown.cancelled() => return,
                }
            } else {
                tokio::select! {
                    () = r.poke.notified() => {}
                    () = tokio::time::sleep(IDLE_PROBE) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
