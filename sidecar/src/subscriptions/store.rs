//! The subscription calls to the extension's SQL API (`ds.try_subscription_*`,
//! the scheduler and the signing keys). Every answer of a `try_` function
//! is JSON text: the result, or `{"error": {...}}` ([`super::error`]).

use serde_json::Value;

use crate::db::{Db, DbError};

const PUT: &str = "SELECT ds.try_subscription_put($1, $2::text::jsonb)::text";
const GET: &str = "SELECT ds.try_subscription_get($1)::text";
const DELETE: &str = "SELECT ds.try_subscription_delete($1)::text";
const ADD_STREAMS: &str = "SELECT ds.try_subscription_add_streams($1, $2::text[])::text";
const REMOVE_STREAM: &str = "SELECT ds.try_subscription_remove_stream($1, $2)::text";
const CLAIM: &str = "SELECT ds.try_subscription_claim($1, $2)::text";
const ACK: &str = "SELECT ds.try_subscription_ack($1, $2, $3::text::jsonb)::text";
const CALLBACK: &str = "SELECT ds.try_subscription_callback($1, $2, $3::text::jsonb)::text";
const RELEASE: &str = "SELECT ds.try_subscription_release($1, $2, $3::text::jsonb)::text";
const TICK: &str = "SELECT ds.subscription_tick($1)";
const HAS_TICK: &str =
    "SELECT pg_catalog.to_regprocedure('ds.subscription_tick(integer)') IS NOT NULL";
const DELIVERIES: &str = "SELECT subscription_id, wake_id, generation, url, streams::text, \
     callback_token, attempts FROM ds.subscription_deliveries($1, $2)";
const RESULT: &str = "SELECT ds.subscription_delivery_result($1, $2, $3, $4, $5)";
const SIGNING_KEY: &str = "SELECT kid, private_key FROM ds.subscription_signing_key()";
const ADD_SIGNING_KEY: &str =
    "SELECT kid, private_key FROM ds.subscription_add_signing_key($1, $2, $3)";
const JWKS: &str = "SELECT ds.subscription_jwks()::text";

/// A `try_subscription_*` call with a token (callback, ack, release): the
/// token is the credential, so it runs as the sidecar's own role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenCall {
    /// Webhook callback.
    Callback,
    /// Pull-wake ack.
    Ack,
    /// Pull-wake release.
    Release,
}

/// One webhook delivery to make (a row of `ds.subscription_deliveries`).
#[derive(Debug, Clone)]
pub struct Due {
    /// Subscription id.
    pub subscription_id: String,
    /// The wake being delivered.
    pub wake_id: String,
    /// Its generation.
    pub generation: i64,
    /// Where to.
    pub url: String,
    /// The wake snapshot (`[<info>]`), as JSON text.
    pub streams: String,
    /// The callback token the receiver gets.
    pub callback_token: String,
    /// Failed attempts so far (0: first try).
    pub attempts: i32,
}

/// How a delivery ended, as `ds.subscription_delivery_result` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// 2xx without `{"done": true}`.
    Delivered,
    /// 2xx with `{"done": true}`: auto-ack.
    Done,
    /// Anything else.
    Failed,
}

impl Reported {
    /// The SQL name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reported::Delivered => "delivered",
            Reported::Done => "done",
            Reported::Failed => "failed",
        }
    }
}

async fn json(
    db: &Db,
    role: Option<&str>,
    sql: &'static str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &'static str,
) -> Result<Value, DbError> {
    let rows = db.query_as(role, sql, params).await?;
    let text: Option<String> = rows.first().ok_or(DbError::Shape(what))?.try_get(0)?;
    let text = text.ok_or(DbError::Shape(what))?;
    serde_json::from_str(&text).map_err(|_| DbError::Shape(what))
}

/// `ds.try_subscription_put(id, config)`.
pub async fn put(db: &Db, role: Option<&str>, id: &str, config: &Value) -> Result<Value, DbError> {
    let config = config.to_string();
    json(db, role, PUT, &[&id, &config], "ds.try_subscription_put").await
}

/// `ds.try_subscription_get(id)`.
pub async fn get(db: &Db, role: Option<&str>, id: &str) -> Result<Value, DbError> {
    json(db, role, GET, &[&id], "ds.try_subscription_get").await
}

/// `ds.try_subscription_delete(id)`.
pub async fn delete(db: &Db, role: Option<&str>, id: &str) -> Result<Value, DbError> {
    json(db, role, DELETE, &[&id], "ds.try_subscription_delete").await
}

/// `ds.try_subscription_add_streams(id, paths)`.
pub async fn add_streams(
    db: &Db,
    role: Option<&str>,
    id: &str,
    paths: &[String],
) -> Result<Value, DbError> {
    json(db, role, ADD_STREAMS, &[&id, &paths], "ds.try_subscription_add_streams").await
}

/// `ds.try_subscription_remove_stream(id, path)`.
pub async fn remove_stream(
    db: &Db,
    role: Option<&str>,
    id: &str,
    path: &str,
) -> Result<Value, DbError> {
    json(db, role, REMOVE_STREAM, &[&id, &path], "ds.try_subscription_remove_stream").await
}

/// `ds.try_subscription_claim(id, worker)`.
pub async fn claim(db: &Db, role: Option<&str>, id: &str, worker: &str) -> Result<Value, DbError> {
    json(db, role, CLAIM, &[&id, &worker], "ds.try_subscription_claim").await
}

/// A token call (callback, ack, release) as the sidecar's own role.
pub async fn with_token(
    db: &Db,
    call: TokenCall,
    id: &str,
    token: &str,
    request: &Value,
) -> Result<Value, DbError> {
    let request = request.to_string();
    let (sql, what) = match call {
        TokenCall::Callback => (CALLBACK, "ds.try_subscription_callback"),
        TokenCall::Ack => (ACK, "ds.try_subscription_ack"),
        TokenCall::Release => (RELEASE, "ds.try_subscription_release"),
    };
    json(db, None, sql, &[&id, &token, &request], what).await
}

/// Whether the extension has the delivery functions yet (asked without
/// calling them, so an old extension's server log gets no error for it).
pub async fn has_delivery_functions(db: &Db) -> Result<bool, DbError> {
    let rows = db.query_as(None, HAS_TICK, &[]).await?;
    let row = rows.first().ok_or(DbError::Shape("to_regprocedure"))?;
    Ok(row.try_get(0)?)
}

/// `ds.subscription_tick(max)`: wakes created.
pub async fn tick(db: &Db, max: i32) -> Result<i32, DbError> {
    let rows = db.query_as(None, TICK, &[&max]).await?;
    let row = rows.first().ok_or(DbError::Shape("ds.subscription_tick"))?;
    Ok(row.try_get::<_, Option<i32>>(0)?.unwrap_or(0))
}

/// `ds.subscription_tick(max_tick)` and then `ds.subscription_deliveries(max,
/// in_flight_ms)`, in one transaction (one commit): wakes started, and
/// the deliveries taken.
pub async fn tick_and_deliveries(
    db: &Db,
    max_tick: i32,
    max: i32,
    in_flight_ms: i32,
) -> Result<(i32, Vec<Due>), DbError> {
    let (ticked, due) =
        db.query_pair((TICK, &[&max_tick]), (DELIVERIES, &[&max, &in_flight_ms])).await?;
    let started = ticked.first().ok_or(DbError::Shape("ds.subscription_tick"))?;
    Ok((started.try_get::<_, Option<i32>>(0)?.unwrap_or(0), dues(&due)?))
}

/// `ds.subscription_deliveries(max, in_flight_ms)`.
pub async fn deliveries(db: &Db, max: i32, in_flight_ms: i32) -> Result<Vec<Due>, DbError> {
    dues(&db.query_as(None, DELIVERIES, &[&max, &in_flight_ms]).await?)
}

fn dues(rows: &[tokio_postgres::Row]) -> Result<Vec<Due>, DbError> {
    rows.iter()
        .map(|r| {
            Ok(Due {
                subscription_id: r.try_get(0)?,
                wake_id: r.try_get(1)?,
                generation: r.try_get(2)?,
                url: r.try_get(3)?,
                streams: r.try_get(4)?,
                callback_token: r.try_get(5)?,
                attempts: r.try_get(6)?,
            })
        })
        .collect()
}

/// `ds.subscription_delivery_result(...)`: false when the wake changed.
pub async fn delivery_result(
    db: &Db,
    due: &Due,
    outcome: Reported,
    error: Option<&str>,
) -> Result<bool, DbError> {
    let outcome = outcome.as_str();
    let rows = db
        .query_as(
            None,
            RESULT,
            &[&due.subscription_id, &due.wake_id, &due.generation, &outcome, &error],
        )
        .await?;
    let row = rows.first().ok_or(DbError::Shape("ds.subscription_delivery_result"))?;
    Ok(row.try_get::<_, Option<bool>>(0)?.unwrap_or(false))
}

/// The active signing key (`kid`, 32-byte seed), if any.
pub async fn signing_key(db: &Db) -> Result<Option<(String, Vec<u8>)>, DbError> {
    let rows = db.query_as(None, SIGNING_KEY, &[]).await?;
    rows.first().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

/// Stores a new key unless one is active; returns the active key.
pub async fn add_signing_key(
    db: &Db,
    kid: &str,
    public_key: &[u8],
    private_key: &[u8],
) -> Result<(String, Vec<u8>), DbError> {
    let rows = db.query_as(None, ADD_SIGNING_KEY, &[&kid, &public_key, &private_key]).await?;
    let row = rows.first().ok_or(DbError::Shape("ds.subscription_add_signing_key"))?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// `ds.subscription_jwks()` as JSON text.
pub async fn jwks(db: &Db) -> Result<String, DbError> {
    let rows = db.query_as(None, JWKS, &[]).await?;
    let row = rows.first().ok_or(DbError::Shape("ds.subscription_jwks"))?;
    row.try_get::<_, Option<String>>(0)?.ok_or(DbError::Shape("ds.subscription_jwks"))
}
