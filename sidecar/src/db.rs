//! The connection pool and the calls to the extension's SQL API.
//!
//! Architecture invariant: the sidecar only ever calls `ds.*` functions; it
//! never reads or writes the extension's tables. Each HTTP request is one
//! SQL call on a pooled connection that is returned before any waiting.
//!
//! A request with a role (`--auth jwt`) runs as that role: `BEGIN`,
//! `SELECT pg_catalog.set_config('role', $1, true)`, the `ds.*` call and
//! `COMMIT`, pipelined (one round trip). The setting is transaction-local,
//! so the pooled connection is back to the sidecar's own role afterwards,
//! whatever happened. Without a role (`--auth none`) the call runs alone,
//! exactly as before. The extension decides what the role may do.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use prometheus_client::metrics::counter::Counter;
use thiserror::Error;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use crate::config::Config;
use crate::protocol::headers::{Fork, Producer};

/// A failed database call.
#[derive(Debug, Error)]
pub enum DbError {
    /// No connection could be had from the pool.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The statement failed (its SQLSTATE decides the HTTP status).
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// The SQL API answered with an unexpected shape.
    #[error("unexpected result from {0}")]
    Shape(&'static str),
    /// A group-commit batch failed in a way that may or may not have committed.
    #[error("append batch failed: {0}")]
    Batch(String),
    /// The call (or a whole group-commit batch) certainly did nothing
    /// because the database is unavailable, e.g. read-only: see
    /// [`crate::failover`].
    #[error("database unavailable ({0:?}), nothing done: {1}")]
    Unavailable(crate::failover::Outage, String),
    /// The request could not be run as its role: the role does not exist,
    /// or the sidecar's login role may not become it.
    #[error("cannot act as role {role:?}: {source}")]
    Role {
        /// The role named by the token.
        role: String,
        /// What `set_config('role', ...)` answered.
        source: tokio_postgres::Error,
    },
}

impl DbError {
    /// Whether the failed statement certainly rolled back (Postgres reported
    /// an error for it and the session goes on), as opposed to a lost
    /// connection or a FATAL error, after which it may have committed.
    pub fn rolled_back(&self) -> bool {
        match self {
            DbError::Postgres(e) | DbError::Role { source: e, .. } => {
                e.as_db_error().is_some() && !crate::failover::ends_session(e)
            }
            DbError::Unavailable(crate::failover::Outage::Unconfirmed, _) => false,
            DbError::Unavailable(..) => true,
            _ => false,
        }
    }

    /// The SQLSTATE Postgres reported, if any.
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            DbError::Postgres(e) | DbError::Role { source: e, .. } => e.code(),
            _ => None,
        }
    }
}

/// A bad `--database-url`.
#[derive(Debug, Error)]
#[error("invalid database URL: {0}")]
pub struct UrlError(#[from] tokio_postgres::Error);

/// Result row of `ds.create`.
#[derive(Debug, Clone)]
pub struct Created {
    /// True when the stream was created now (201), false when it existed (200).
    pub created: bool,
    /// Tail after any initial body.
    pub next_offset: String,
    /// The stream's content type.
    pub content_type: String,
    /// Whether the stream is closed.
    pub closed: bool,
}

/// Result row of `ds.try_append`.
#[derive(Debug, Clone, Default)]
pub struct Appended {
    /// Outcome name, parsed by `ds_core::outcome::AppendOutcome::from_name`.
    pub outcome: String,
    /// Tail after the request (or the final offset of a closed stream).
    pub next_offset: Option<String>,
    /// Whether the stream is closed now.
    pub closed: bool,
    /// Producer epoch to report (echo, or the current one on a stale epoch).
    pub producer_epoch: Option<i64>,
    /// Highest accepted producer seq.
    pub producer_seq: Option<i64>,
    /// Expected seq on a gap.
    pub expected_seq: Option<i64>,
    /// Received seq on a gap.
    pub received_seq: Option<i64>,
    /// SQLSTATE of an `invalid_request`.
    pub sqlstate: Option<String>,
    /// Message for the client.
    pub detail: Option<String>,
}

impl Appended {
    /// Reads an outcome row whose columns start at `first`.
    fn from_row(row: &tokio_postgres::Row, first: usize) -> Result<Appended, DbError> {
        Ok(Appended {
            outcome: row.try_get(first)?,
            next_offset: row.try_get(first + 1)?,
            closed: row.try_get::<_, Option<bool>>(first + 2)?.unwrap_or(false),
            producer_epoch: row.try_get(first + 3)?,
            producer_seq: row.try_get(first + 4)?,
            expected_seq: row.try_get(first + 5)?,
            received_seq: row.try_get(first + 6)?,
            sqlstate: row.try_get(first + 7)?,
            detail: row.try_get(first + 8)?,
        })
    }
}

/// Result row of `ds.read_chunk`: exactly one response body.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// The body, already framed (JSON array for JSON streams).
    pub body: Bytes,
    /// Where the next read starts.
    pub next_offset: String,
    /// The chunk reaches the tail.
    pub up_to_date: bool,
    /// The chunk reaches the tail of a closed stream.
    pub closed: bool,
    /// The stream's content type.
    pub content_type: String,
    /// Internal stream id (for ETags).
    pub stream_id: i64,
    /// The body as an SSE data event, rendered once and shared by every
    /// clone of this chunk (all the waiters served by one shared read).
    pub sse_data: Arc<OnceLock<Bytes>>,
}

/// Result row of `ds.head`.
#[derive(Debug, Clone)]
pub struct Head {
    /// Internal stream id.
    pub stream_id: i64,
    /// The stream's content type.
    pub content_type: String,
    /// Tail offset.
    pub next_offset: String,
    /// Whether the stream is closed.
    pub closed: bool,
    /// Sliding TTL in seconds.
    pub ttl_seconds: Option<i64>,
    /// Absolute expiry, RFC 3339 in UTC.
    pub expires_at: Option<String>,
    /// Earliest retained offset (where a read from `-1` starts); `None`
    /// from an extension without retention (0.1.0, or a package upgraded
    /// before `ALTER EXTENSION ... UPDATE`).
    pub earliest_offset: Option<String>,
}

const CREATE: &str = "SELECT created, next_offset, content_type, closed \
     FROM ds.create($1, $2, $3, $4::text::timestamptz, $5, $6)";
const FORK: &str = "SELECT created, next_offset, content_type, closed \
     FROM ds.fork($1, $2, $3, $4, $5, $6, $7::text::timestamptz, $8, $9)";
const TRY_APPEND: &str = "SELECT outcome, next_offset, closed, producer_epoch, producer_seq, \
     expected_seq, received_seq, sqlstate, detail \
     FROM ds.try_append($1, $2, $3, $4, $5, $6, $7, $8)";
const TRY_APPEND_BATCH: &str = "SELECT idx, outcome, next_offset, closed, producer_epoch, \
     producer_seq, expected_seq, received_seq, sqlstate, detail \
     FROM ds.try_append_batch($1, $2, $3, $4, $5, $6, $7, $8, skip_locked => true) ORDER BY idx";
/// The batch with each request checked as its own role (`as_roles`).
const TRY_APPEND_BATCH_AS: &str = "SELECT idx, outcome, next_offset, closed, producer_epoch, \
     producer_seq, expected_seq, received_seq, sqlstate, detail \
     FROM ds.try_append_batch($1, $2, $3, $4, $5, $6, $7, $8, skip_locked => true, \
     as_roles => $9) ORDER BY idx";
/// Run the rest of the transaction as `$1`.
const SET_ROLE: &str = "SELECT pg_catalog.set_config('role', $1, true)";
const READ_CHUNK: &str = "SELECT body, next_offset, up_to_date, closed, content_type, stream_id \
     FROM ds.read_chunk($1, $2, $3)";
const HEAD: &str = "SELECT stream_id, content_type, next_offset, closed, ttl_seconds, \
     to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), earliest_offset \
     FROM ds.head($1)";
/// [`HEAD`] for an extension whose `ds.head` has no `earliest_offset` yet.
const HEAD_WITHOUT_RETENTION: &str = "SELECT stream_id, content_type, next_offset, closed, \
     ttl_seconds, to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
     NULL::text FROM ds.head($1)";
const DELETE: &str = "SELECT ds.delete($1)";
const TOUCH: &str = "SELECT ds.touch($1, as_roles => $2)";

impl Created {
    /// The one row `ds.create` and `ds.fork` return.
    fn from_rows(rows: &[tokio_postgres::Row], function: &'static str) -> Result<Created, DbError> {
        let row = rows.first().ok_or(DbError::Shape(function))?;
        Ok(Created {
            created: row.try_get(0)?,
            next_offset: row.try_get(1)?,
            content_type: row.try_get(2)?,
            closed: row.try_get(3)?,
        })
    }
}

/// Parameters of a create request.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest<'a> {
    /// Stream path.
    pub path: &'a str,
    /// Content type (already defaulted).
    pub content_type: &'a str,
    /// `Stream-TTL`.
    pub ttl_seconds: Option<i64>,
    /// `Stream-Expires-At` (RFC 3339, checked).
    pub expires_at: Option<&'a str>,
    /// `Stream-Closed: true`.
    pub closed: bool,
    /// Initial body, if any.
    pub body: Option<&'a [u8]>,
}

/// Parameters of an append / close request.
#[derive(Debug, Clone, Default)]
pub struct AppendRequest<'a> {
    /// Stream path.
    pub path: &'a str,
    /// Body (may be empty for a close).
    pub data: &'a [u8],
    /// Content type of the body (None for close-only).
    pub content_type: Option<&'a str>,
    /// `Stream-Seq`.
    pub stream_seq: Option<&'a str>,
    /// Idempotent producer tuple.
    pub producer: Option<&'a Producer>,
    /// `Stream-Closed: true`.
    pub close: bool,
}

/// The connection settings of the sidecar's pooled connections, from
/// `--database-url` plus the sidecar's own session settings, passed as
/// startup options: they win over server, database and role defaults (an
/// `ALTER ROLE ... SET synchronous_commit = off` cannot make an
/// acknowledged append vanish).
pub fn connection_config(config: &Config) -> Result<tokio_postgres::Config, UrlError> {
    connection_config_named(config, "ds-sidecar")
}

/// [`connection_config`] for the LISTEN connection.
pub fn listen_config(config: &Config) -> Result<tokio_postgres::Config, UrlError> {
    connection_config_named(config, "ds-sidecar-listen")
}

fn connection_config_named(
    config: &Config,
    application_name: &str,
) -> Result<tokio_postgres::Config, UrlError> {
    connection_config_for(config, &config.database_url, application_name)
}

/// [`connection_config`] for another URL (a read replica's).
pub fn connection_config_for(
    config: &Config,
    url: &str,
    application_name: &str,
) -> Result<tokio_postgres::Config, UrlError> {
    let mut pg = tokio_postgres::Config::from_str(url)?;
    let options = pg.get_options().unwrap_or_default().to_owned();
    pg.options(
        format!(
            "{options} -c lock_timeout={} -c statement_timeout={} -c synchronous_commit={}",
            config.lock_timeout_ms, config.statement_timeout_ms, config.synchronous_commit
        )
        .trim_start(),
    );
    if pg.get_application_name().is_none() {
        pg.application_name(application_name);
    }
    if pg.get_connect_timeout().is_none() && config.connect_timeout_ms > 0 {
        pg.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    }
    crate::failover::detect_dead_hosts(&mut pg);
    Ok(pg)
}

/// The pool plus typed calls to the SQL API.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    login_role: Option<String>,
    /// Pooled connections dropped because their server was read-only.
    discarded: Counter,
    /// Where reads go when there are read replicas (`replica/`).
    reads: Option<Arc<crate::replica::Router>>,
    /// Longest wait for one call's answer (`None`: no statement timeout).
    call_timeout: Option<Duration>,
}

impl Db {
    /// Builds the pool (connections are opened lazily) with the session
    /// settings of [`connection_config`]; a request waits at most
    /// `--pool-timeout-ms` for a connection.
    pub fn new(config: &Config) -> Result<Db, UrlError> {
        Db::for_url(config, &config.database_url, "ds-sidecar")
    }

    /// [`Db::new`] for another URL (a read replica's).
    pub fn for_url(config: &Config, url: &str, application_name: &str) -> Result<Db, UrlError> {
        let pg = connection_config_for(config, url, application_name)?;
        // Creating a connection may try every host of a multi-host URL.
        let create_timeout = crate::failover::connect_limit(&pg);
        let login_role = pg.get_user().map(str::to_owned);
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let ms = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(ms(config.pool_timeout_ms))
            .create_timeout(Some(create_timeout))
            .recycle_timeout(ms(config.connect_timeout_ms))
            .build()
            .expect("a pool with a runtime always builds");
        let call_timeout = (config.statement_timeout_ms > 0).then(|| {
            Duration::from_millis(
                config.statement_timeout_ms.saturating_add(config.commit_wait_timeout_ms),
            )
        });
        Ok(Db { pool, login_role, discarded: Counter::default(), reads: None, call_timeout })
    }

    /// This pool, with reads (`read_chunk`, `head`) sent through `router`.
    pub fn with_reads(mut self, router: Arc<crate::replica::Router>) -> Db {
        self.reads = Some(router);
        self
    }

    /// Whether reads go to read replicas (`replica/`), which may not have
    /// this process's latest commit yet.
    pub fn routes_reads(&self) -> bool {
        self.reads.is_some()
    }

    /// After a write of this sidecar committed, before it is acknowledged:
    /// with read replicas, this sidecar's later reads will see it
    /// (`replica/`); nothing otherwise.
    pub async fn wrote(&self) {
        if let Some(router) = &self.reads {
            router.wrote().await;
        }
    }

    /// `pg_current_wal_lsn()` as text.
    pub async fn current_wal_lsn(&self) -> Result<String, DbError> {
        let client = self.pool.get().await?;
        let row = client.query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[]).await?;
        Ok(row.try_get(0)?)
    }

    /// `ds.touch(paths, as_roles)`: restarts sliding TTLs (read replicas).
    pub async fn touch(&self, paths: &[&str], roles: &[Option<&str>]) -> Result<i64, DbError> {
        let rows = self.query(TOUCH, &[&paths, &roles]).await?;
        let row = rows.first().ok_or(DbError::Shape("ds.touch"))?;
        Ok(row.try_get::<_, Option<i64>>(0)?.unwrap_or(0))
    }

    /// Counts connections dropped for a read-only server in `counter`.
    pub fn count_discards_in(&mut self, counter: Counter) {
        self.discarded = counter;
    }

    /// After a failed call on `client`: drops the connection instead of
    /// returning it to the pool when its server is read-only (SQLSTATE
    /// 25006, or an internal error from a server in recovery, such as
    /// "cannot assign TransactionIds during recovery"), so the next request
    /// connects afresh, to whichever host accepts writes now; that error
    /// becomes [`DbError::Unavailable`] (503). Broken connections need
    /// nothing: the pool drops closed ones.
    async fn release(&self, client: Object, error: DbError) -> DbError {
        use crate::failover::Outage;
        let read_only = match crate::failover::outage(&error) {
            Some(Outage::ReadOnly) => true,
            // Only a real server error on a live session can mean recovery.
            _ if error.rolled_back()
                && error.sqlstate() == Some(&tokio_postgres::error::SqlState::INTERNAL_ERROR) =>
            {
                client
                    .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
                    .await
                    .and_then(|row| row.try_get::<_, bool>(0))
                    .unwrap_or(false)
            }
            _ => false,
        };
        if !read_only {
            return error;
        }
        tracing::warn!(
            error = %error,
            "dropping a pooled connection: its server is read-only (a hot standby, or in \
             recovery); with several hosts in --database-url, target_session_attrs=read-write \
             makes new connections go to the primary"
        );
        self.discarded.inc();
        drop(Object::take(client));
        DbError::Unavailable(Outage::ReadOnly, error.to_string())
    }

    /// Longest wait for one call's answer (`None`: unbounded).
    pub fn call_timeout(&self) -> Option<Duration> {
        self.call_timeout
    }

    /// The role named in `--database-url`, if any.
    pub fn login_role(&self) -> Option<&str> {
        self.login_role.as_deref()
    }

    async fn query(
        &self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        self.query_as(None, sql, params).await
    }

    /// Runs `sql` as `role` (see the module docs); as the sidecar itself
    /// when `role` is `None`.
    pub(crate) async fn query_as(
        &self,
        role: Option<&str>,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let client = self.pool.get().await?;
        let call = Self::query_on(&client, role, sql, params);
        let result = match self.call_timeout {
            None => call.await,
            Some(limit) => match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_) => {
                    // The connection goes back to the pool as it is: its
                    // late answer is discarded, and the next call on it
                    // queues behind it (a dropped connection would leave a
                    // backend stuck in its commit, one per timeout).
                    tracing::warn!(
                        limit_ms = limit.as_millis(),
                        "no answer from the database in time (a commit waiting for a \
                         synchronous standby?); answering 503, outcome unknown"
                    );
                    return Err(DbError::Unavailable(
                        crate::failover::Outage::Unconfirmed,
                        format!("no answer within {} ms", limit.as_millis()),
                    ));
                }
            },
        };
        match result {
            Err(e) => Err(self.release(client, e).await),
            ok => ok,
        }
    }

    /// Runs `first` then `second` in ONE transaction as the sidecar itself:
    /// one commit (one WAL flush) instead of two. The subscription
    /// scheduler's tick and the deliveries it makes due travel this way, so
    /// a webhook leaves one flush sooner after the append that woke it.
    pub(crate) async fn query_pair(
        &self,
        first: (&'static str, &[&(dyn ToSql + Sync)]),
        second: (&'static str, &[&(dyn ToSql + Sync)]),
    ) -> Result<(Vec<tokio_postgres::Row>, Vec<tokio_postgres::Row>), DbError> {
        let client = self.pool.get().await?;
        let call = async {
            let a = client.prepare_cached(first.0).await?;
            let b = client.prepare_cached(second.0).await?;
            // One pipeline; a failure fails what follows, and COMMIT then
            // rolls back: the connection always ends outside a transaction.
            let (begin, ra, rb, commit) = tokio::join!(
                client.batch_execute("BEGIN"),
                client.query(&a, first.1),
                client.query(&b, second.1),
                client.batch_execute("COMMIT"),
            );
            begin?;
            let (ra, rb) = (ra?, rb?);
            commit?;
            Ok::<_, DbError>((ra, rb))
        };
        let result = match self.call_timeout {
            None => call.await,
            Some(limit) => tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
                Err(DbError::Unavailable(
                    crate::failover::Outage::Unconfirmed,
                    format!("no answer within {} ms", limit.as_millis()),
                ))
            }),
        };
        match result {
            Err(e) => Err(self.release(client, e).await),
            ok => ok,
        }
    }

    /// [`Self::query_as`] on `client`.
    async fn query_on(
        client: &Object,
        role: Option<&str>,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, DbError> {
        let stmt = client.prepare_cached(sql).await?;
        let Some(role) = role else { return Ok(client.query(&stmt, params).await?) };
        let set_role = client.prepare_cached(SET_ROLE).await?;
        let role_param: [&(dyn ToSql + Sync); 1] = [&role];
        // All four are handed to the connection at the first poll, in this
        // order, so they travel as one pipeline. If any fails, the ones after
        // it fail too and COMMIT rolls back: the connection always ends
        // outside a transaction, as the sidecar's own role.
        let (begin, set, rows, commit) = tokio::join!(
            client.batch_execute("BEGIN"),
            client.query(&set_role, &role_param),
            client.query(&stmt, params),
            client.batch_execute("COMMIT"),
        );
        begin?;
        set.map_err(|source| DbError::Role { role: role.to_owned(), source })?;
        let rows = rows?;
        commit?;
        Ok(rows)
    }

    /// `SELECT 1`, for `/health`.
    pub async fn ping(&self) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// `ds.create`, as `role`.
    pub async fn create(
        &self,
        role: Option<&str>,
        r: &CreateRequest<'_>,
    ) -> Result<Created, DbError> {
        let rows = self
            .query_as(
                role,
                CREATE,
                &[&r.path, &r.content_type, &r.ttl_seconds, &r.expires_at, &r.closed, &r.body],
            )
            .await?;
        Created::from_rows(&rows, "ds.create")
    }

    /// `ds.fork` (§4.2), as `role`: same result as `ds.create`.
    pub async fn fork(
        &self,
        role: Option<&str>,
        r: &CreateRequest<'_>,
        fork: &Fork,
    ) -> Result<Created, DbError> {
        let content_type = (!r.content_type.is_empty()).then_some(r.content_type);
        let rows = self
            .query_as(
                role,
                FORK,
                &[
                    &r.path,
                    &fork.source,
                    &fork.offset,
                    &fork.sub_offset,
                    &content_type,
                    &r.ttl_seconds,
                    &r.expires_at,
                    &r.closed,
                    &r.body,
                ],
            )
            .await?;
        Created::from_rows(&rows, "ds.fork")
    }

    /// `ds.try_append`, as `role`: protocol outcomes come back as data.
    pub async fn try_append(
        &self,
        role: Option<&str>,
        r: &AppendRequest<'_>,
    ) -> Result<Appended, DbError> {
        let producer_id = r.producer.map(|p| p.id.as_str());
        let epoch = r.producer.map(|p| p.epoch);
        let seq = r.producer.map(|p| p.seq);
        let rows = self
            .query_as(
                role,
                TRY_APPEND,
                &[
                    &r.path,
                    &r.data,
                    &r.content_type,
                    &r.stream_seq,
                    &producer_id,
                    &epoch,
                    &seq,
                    &r.close,
                ],
            )
            .await?;
        let row = rows.first().ok_or(DbError::Shape("ds.try_append"))?;
        Appended::from_row(row, 0)
    }

    /// `ds.try_append_batch`: the requests in ONE transaction, one outcome
    /// each, in order. With `roles`, request i is checked as `roles[i]`
    /// (`as_roles`); without, as the sidecar itself (the call of `--auth
    /// none`, unchanged).
    pub async fn try_append_batch(
        &self,
        rs: &[AppendRequest<'_>],
        roles: Option<&[Option<&str>]>,
    ) -> Result<Vec<Appended>, DbError> {
        let paths: Vec<&str> = rs.iter().map(|r| r.path).collect();
        let datas: Vec<&[u8]> = rs.iter().map(|r| r.data).collect();
        let types: Vec<Option<&str>> = rs.iter().map(|r| r.content_type).collect();
        let seqs: Vec<Option<&str>> = rs.iter().map(|r| r.stream_seq).collect();
        let ids: Vec<Option<&str>> = rs.iter().map(|r| r.producer.map(|p| p.id.as_str())).collect();
        let epochs: Vec<Option<i64>> = rs.iter().map(|r| r.producer.map(|p| p.epoch)).collect();
        let pseqs: Vec<Option<i64>> = rs.iter().map(|r| r.producer.map(|p| p.seq)).collect();
        let closes: Vec<bool> = rs.iter().map(|r| r.close).collect();
        let rows = match roles {
            None => {
                self.query(
                    TRY_APPEND_BATCH,
                    &[&paths, &datas, &types, &seqs, &ids, &epochs, &pseqs, &closes],
                )
                .await?
            }
            Some(roles) => {
                self.query(
                    TRY_APPEND_BATCH_AS,
                    &[&paths, &datas, &types, &seqs, &ids, &epochs, &pseqs, &closes, &roles],
                )
                .await?
            }
        };
        if rows.len() != rs.len() {
            return Err(DbError::Shape("ds.try_append_batch"));
        }
        rows.iter().map(|row| Appended::from_row(row, 1)).collect()
    }

    /// `ds.read_chunk`, as `role`; `from` is `-1`, `now` or a server offset.
    pub async fn read_chunk(
        &self,
        role: Option<&str>,
        path: &str,
        from: &str,
        max_bytes: Option<i64>,
    ) -> Result<Chunk, DbError> {
        if let Some(router) = &self.reads {
            return router.read_chunk(role, path, from, max_bytes).await;
        }
        self.read_chunk_here(role, path, from, max_bytes).await
    }

    /// [`Db::read_chunk`] on this pool's database, whatever `reads` says.
    pub(crate) async fn read_chunk_here(
        &self,
        role: Option<&str>,
        path: &str,
        from: &str,
        max_bytes: Option<i64>,
    ) -> Result<Chunk, DbError> {
        let rows = self.query_as(role, READ_CHUNK, &[&path, &from, &max_bytes]).await?;
        let row = rows.first().ok_or(DbError::Shape("ds.read_chunk"))?;
        Ok(Chunk {
            body: Bytes::from(row.try_get::<_, Vec<u8>>(0)?),
            next_offset: row.try_get(1)?,
            up_to_date: row.try_get(2)?,
            closed: row.try_get(3)?,
            content_type: row.try_get(4)?,
            stream_id: row.try_get(5)?,
            sse_data: Arc::default(),
        })
    }

    /// `ds.head`, as `role`; `None` when the stream does not exist.
    pub async fn head(&self, role: Option<&str>, path: &str) -> Result<Option<Head>, DbError> {
        if let Some(router) = &self.reads {
            return router.head(role, path).await;
        }
        self.head_here(role, path).await
    }

    /// [`Db::head`] on this pool's database, whatever `reads` says.
    pub(crate) async fn head_here(
        &self,
        role: Option<&str>,
        path: &str,
    ) -> Result<Option<Head>, DbError> {
        let rows = match self.query_as(role, HEAD, &[&path]).await {
            Err(DbError::Postgres(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) =>
            {
                self.query_as(role, HEAD_WITHOUT_RETENTION, &[&path]).await?
            }
            other => other?,
        };
        let Some(row) = rows.first() else { return Ok(None) };
        Ok(Some(Head {
            stream_id: row.try_get(0)?,
            content_type: row.try_get(1)?,
            next_offset: row.try_get(2)?,
            closed: row.try_get(3)?,
            ttl_seconds: row.try_get(4)?,
            expires_at: row.try_get(5)?,
            earliest_offset: row.try_get(6)?,
        }))
    }

    /// `ds.delete`, as `role`.
    pub async fn delete(&self, role: Option<&str>, path: &str) -> Result<(), DbError> {
        self.query_as(role, DELETE, &[&path]).await?;
        Ok(())
    }

    /// `SHOW <setting>` on a pooled connection (for checks of the session
    /// settings).
    pub async fn show(&self, setting: &'static str) -> Result<String, DbError> {
        let client = self.pool.get().await?;
        let row = client.query_one("SELECT pg_catalog.current_setting($1)", &[&setting]).await?;
        Ok(row.try_get(0)?)
    }

    /// Pool status for metrics: (size, available).
    pub fn pool_status(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size, s.available)
    }
}
