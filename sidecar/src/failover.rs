//! Riding out a failover (or any loss of the primary).
//!
//! [`outage`] decides which database failures mean "no usable primary right
//! now": they are answered 503 with `Retry-After` (never 500, never a
//! success), with a message from [`explain`] saying what happened and what
//! to do. A pooled connection whose server turned out read-only is dropped
//! by the pool's user (`db.rs`), not reused. Live readers do not end at the
//! first failed re-read: they wait with [`Backoff`] (or for the next
//! wake-up, such as the LISTEN connection coming back) until their deadline.
//!
//! Reconnecting itself is tokio-postgres': with several hosts in
//! `--database-url` and `target_session_attrs=read-write`, every new
//! connection (pooled or LISTEN) goes to whichever host accepts writes now.

use std::time::Duration;

use tokio_postgres::error::{Severity, SqlState};

use crate::db::DbError;

/// Why the database cannot serve a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// No connection could be made: the primary is down, or no listed host
    /// accepts writes (yet). Nothing was done.
    NoConnection,
    /// The connection broke or the server shut down during the call: a
    /// write may or may not have been applied.
    ConnectionLost,
    /// The server is read-only (a hot standby, or still in recovery):
    /// SQLSTATE 25006. Nothing was written.
    ReadOnly,
    /// Every pooled connection stayed busy for `--pool-timeout-ms`.
    PoolBusy,
    /// Postgres gave up on the request for a passing reason (lock timeout,
    /// deadlock, serialization failure, cancel). Nothing was done.
    Transient,
    /// The database did not answer within the call's time limit
    /// (`--statement-timeout-ms` + `--commit-wait-timeout-ms`), typically a
    /// commit waiting for a synchronous standby that is down: a write may
    /// or may not be applied (it commits if the standby comes back).
    Unconfirmed,
}

/// SQLSTATE classes and codes after which the server is gone or going.
fn server_gone(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
}

/// Errors after which the same request may well succeed.
fn transient(code: &SqlState) -> bool {
    *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::QUERY_CANCELED
}

/// Whether a Postgres error ended the session (FATAL or PANIC): whatever
/// the statement did may already have committed.
pub fn ends_session(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| matches!(db.parsed_severity(), Some(Severity::Fatal | Severity::Panic)))
}

fn postgres_outage(e: &tokio_postgres::Error) -> Option<Outage> {
    let Some(db) = e.as_db_error() else {
        // No server error: the connection broke or could not be used.
        return Some(Outage::ConnectionLost);
    };
    let code = db.code();
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        Some(Outage::ReadOnly)
    } else if server_gone(code) || ends_session(e) {
        Some(Outage::ConnectionLost)
    } else if transient(code) {
        Some(Outage::Transient)
    } else {
        None
    }
}

/// The outage a failed call reveals; `None` for errors that are the
/// request's own (a missing stream, a bad body, a refused role, ...).
pub fn outage(e: &DbError) -> Option<Outage> {
    match e {
        DbError::Pool(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Wait,
        )) => Some(Outage::PoolBusy),
        DbError::Pool(_) => Some(Outage::NoConnection),
        DbError::Postgres(e) | DbError::Role { source: e, .. } => postgres_outage(e),
        DbError::Batch(_) => Some(Outage::ConnectionLost),
        DbError::Unavailable(outage, _) => Some(*outage),
        DbError::Shape(_) => None,
    }
}

/// The body of a 503 for `outage`: what happened, whether anything was
/// done, and what to do.
pub fn explain(outage: Outage) -> &'static str {
    match outage {
        Outage::NoConnection => {
            "service unavailable: cannot connect to a writable database (the primary is down, or \
             a failover is in progress); nothing was done: retry after Retry-After"
        }
        Outage::ConnectionLost => {
            "service unavailable: the database connection was lost during the request (the \
             primary went down, or a failover is in progress); a write may or may not have been \
             applied: retry it (with Producer-Id/Epoch/Seq a retry is deduplicated)"
        }
        Outage::ReadOnly => {
            "service unavailable: the database is read-only (a hot standby, or still in \
             recovery); nothing was written: retry after Retry-After. Operators: point \
             --database-url at the primary, or list every host with \
             target_session_attrs=read-write"
        }
        Outage::PoolBusy => {
            "service unavailable: every database connection stayed busy; nothing was done: retry \
             after Retry-After"
        }
        Outage::Unconfirmed => {
            "service unavailable: the database did not confirm the request in time (a commit \
             waits for a synchronous standby that is down, or the server is stuck); a write may \
             or may not be applied: retry it (with Producer-Id/Epoch/Seq a retry is \
             deduplicated)"
        }
        Outage::Transient => {
            "service unavailable: the database gave up on the request (a lock held too long by \
             another transaction, a deadlock or a cancel); nothing was done: retry"
        }
    }
}

/// TCP keepalive idle time of the sidecar's connections unless
/// `--database-url` sets `keepalives_idle` (the default is 2 hours).
pub const KEEPALIVES_IDLE: Duration = Duration::from_secs(10);
/// Keepalive probe interval (unless set).
pub const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered keepalive probes before the connection is dropped (unless set).
pub const KEEPALIVES_RETRIES: u32 = 3;
/// `tcp_user_timeout` (unless set): how long sent data may stay
/// unacknowledged before the connection is dropped.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes a connection to a host that vanished (powered off, cut off: no
/// reset ever arrives) fail within about half a minute instead of hours, so
/// that the pool and the LISTEN connection move on to the new primary.
/// Settings given in `--database-url` win.
pub fn detect_dead_hosts(pg: &mut tokio_postgres::Config) {
    if !pg.get_keepalives() {
        return;
    }
    if pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        pg.keepalives_idle(KEEPALIVES_IDLE);
    }
    if pg.get_keepalives_interval().is_none() {
        pg.keepalives_interval(KEEPALIVES_INTERVAL);
    }
    if pg.get_keepalives_retries().is_none() {
        pg.keepalives_retries(KEEPALIVES_RETRIES);
    }
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
}

/// The longest a new connection may take in all: tokio-postgres tries the
/// hosts one after the other, each TCP connect bounded by `connect_timeout`
/// (a host that vanished takes that long before the next is tried), so the
/// whole attempt gets one `connect_timeout` per host, plus one for the
/// startup and authentication. 30 s per host without `connect_timeout`.
pub fn connect_limit(pg: &tokio_postgres::Config) -> Duration {
    let per_host = pg.get_connect_timeout().copied().unwrap_or(Duration::from_secs(30));
    let hosts = u32::try_from(pg.get_hosts().len().max(1)).unwrap_or(u32::MAX);
    per_host.saturating_mul(hosts.saturating_add(1))
}

/// Warns at startup when several hosts are listed without
/// `target_session_attrs=read-write`: connections may then land on a
/// standby (its writes are answered 503 and its connections dropped, but
/// the LISTEN connection cannot listen there).
pub fn check_hosts(pg: &tokio_postgres::Config) {
    let hosts = pg.get_hosts().len();
    if hosts > 1
        && pg.get_target_session_attrs() != tokio_postgres::config::TargetSessionAttrs::ReadWrite
    {
        tracing::warn!(
            hosts,
            "--database-url lists several hosts without target_session_attrs=read-write: \
             connections may go to a standby, which cannot take writes or LISTEN. Add \
             target_session_attrs=read-write so that they follow the primary"
        );
    } else if hosts > 1 {
        tracing::info!(
            hosts,
            "several database hosts: connections go to the one that accepts writes"
        );
    }
}

/// Waits between re-reads of a live reader while the database is
/// unavailable: 200 ms, doubling, at most 2 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(2);

    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff { next: Backoff::MIN }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_hosts_are_noticed_unless_the_url_says_otherwise() {
        use std::str::FromStr;
        let mut pg = tokio_postgres::Config::from_str("host=a,b port=1,2 user=u").unwrap();
        detect_dead_hosts(&mut pg);
        assert_eq!(pg.get_keepalives_idle(), KEEPALIVES_IDLE);
        assert_eq!(pg.get_keepalives_interval(), Some(KEEPALIVES_INTERVAL));
        assert_eq!(pg.get_keepalives_retries(), Some(KEEPALIVES_RETRIES));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        // tokio-postgres reads tcp_user_timeout in seconds (libpq: milliseconds).
        let url = "postgresql://u@a:1,b:2/db?keepalives_idle=60&tcp_user_timeout=5";
        let mut pg = tokio_postgres::Config::from_str(url).unwrap();
        assert_eq!(pg.get_hosts().len(), 2);
        detect_dead_hosts(&mut pg);
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(pg.get_tcp_user_timeout(), Some(&Duration::from_secs(5)));
    }

    #[test]
    fn a_connection_attempt_may_try_every_host() {
        use std::str::FromStr;
        let pg = tokio_postgres::Config::from_str("host=a,b,c connect_timeout=2").unwrap();
        assert_eq!(connect_limit(&pg), Duration::from_secs(8));
        let pg = tokio_postgres::Config::from_str("host=a").unwrap();
        assert_eq!(connect_limit(&pg), Duration::from_secs(60));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..6).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 2000, 2000]);
    }

    #[test]
    fn outages_are_classified() {
        let busy = DbError::Pool(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Wait,
        ));
        assert_eq!(outage(&busy), Some(Outage::PoolBusy));
        let create = DbError::Pool(deadpool_postgres::PoolError::Timeout(
            deadpool_postgres::TimeoutType::Create,
        ));
        assert_eq!(outage(&create), Some(Outage::NoConnection));
        assert_eq!(outage(&DbError::Batch("closed".into())), Some(Outage::ConnectionLost));
        assert_eq!(
            outage(&DbError::Unavailable(Outage::ReadOnly, "x".into())),
            Some(Outage::ReadOnly)
        );
        assert_eq!(outage(&DbError::Shape("ds.head")), None);
        for code in ["08006", "08001", "57P01", "57P02", "57P03"] {
            assert!(server_gone(&SqlState::from_code(code)), "{code}");
        }
        for code in ["25006", "42704", "55000", "XX000", "53400"] {
            assert!(!server_gone(&SqlState::from_code(code)), "{code}");
        }
        assert!(transient(&SqlState::LOCK_NOT_AVAILABLE));
    }

    #[test]
    fn every_explanation_names_the_database_and_says_whether_anything_happened() {
        for o in [
            Outage::NoConnection,
            Outage::ConnectionLost,
            Outage::ReadOnly,
            Outage::PoolBusy,
            Outage::Transient,
        ] {
            let text = explain(o);
            assert!(text.starts_with("service unavailable: "), "{text}");
            assert!(text.contains("database"), "{text}");
            assert!(text.contains("nothing") || text.contains("may or may not"), "{text}");
        }
    }
}
