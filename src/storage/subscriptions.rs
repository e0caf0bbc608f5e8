//! The SQL of subscriptions: `ds.subscriptions`, `ds.subscription_links`
//! and `ds.signing_keys`. Same rules as the rest of storage: parameterised,
//! schema-qualified, kept plans. Decides nothing.

use ds_core::Offset;
use ds_core::subscription::config::Config;
use ds_core::subscription::doc::LinkInfo;
use pgrx::pg_sys::Oid;
use pgrx::spi::SpiClient;

use super::{select, update};
use crate::error::DsResult;

/// One row of `ds.subscriptions`, as the API needs it.
#[derive(Debug, Clone)]
pub struct SubscriptionRow {
    pub id: String,
    pub owner_role: Oid,
    pub kind: String,
    pub pattern: Option<String>,
    pub webhook_url: Option<String>,
    pub wake_stream: Option<String>,
    pub lease_ttl_ms: i64,
    pub description: Option<String>,
    pub config_hash: String,
    /// RFC 3339, milliseconds, UTC.
    pub created_at: String,
    pub deleted: bool,
    pub status: String,
    pub generation: i64,
    pub wake_id: Option<String>,
    pub holder: Option<String>,
    /// A lease is set and has run out.
    pub lease_expired: bool,
    pub attempts: i32,
}

const SUBSCRIPTION_COLUMNS: &str = "id, owner_role::pg_catalog.oid, type, pattern, webhook_url, \
     wake_stream, lease_ttl_ms, description, config_hash, \
     pg_catalog.to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
     deleted_at IS NOT NULL, status, generation, wake_id, holder, \
     coalesce(lease_expires_at OPERATOR(pg_catalog.<) pg_catalog.now(), false), attempts";

fn subscription_row(row: &pgrx::spi::SpiHeapTupleData<'_>) -> DsResult<SubscriptionRow> {
    Ok(SubscriptionRow {
        id: row.get(1)?.unwrap_or_default(),
        owner_role: row.get(2)?.unwrap_or(pgrx::pg_sys::InvalidOid),
        kind: row.get(3)?.unwrap_or_default(),
        pattern: row.get(4)?,
        webhook_url: row.get(5)?,
        wake_stream: row.get(6)?,
        lease_ttl_ms: i64::from(row.get::<i32>(7)?.unwrap_or_default()),
        description: row.get(8)?,
        config_hash: row.get(9)?.unwrap_or_default(),
        created_at: row.get(10)?.unwrap_or_default(),
        deleted: row.get(11)?.unwrap_or(false),
        status: row.get(12)?.unwrap_or_default(),
        generation: row.get(13)?.unwrap_or_default(),
        wake_id: row.get(14)?,
        holder: row.get(15)?,
        lease_expired: row.get(16)?.unwrap_or(false),
        attempts: row.get(17)?.unwrap_or_default(),
    })
}

/// The subscription `id` (tombstones included), locked `FOR UPDATE` when
/// `lock`: every change of one subscription's state is serialised on it.
pub fn find(client: &mut SpiClient<'_>, id: &str, lock: bool) -> DsResult<Option<SubscriptionRow>> {
    let table = if lock {
        update(
            client,
            &format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM ds.subscriptions \
                 WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE"
            ),
            Some(1),
            &[id.into()],
        )?
    } else {
        select(
            client,
            &format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM ds.subscriptions WHERE id OPERATOR(pg_catalog.=) $1"
            ),
            Some(1),
            &[id.into()],
        )?
    };
    let Some(row) = table.into_iter().next() else { return Ok(None) };
    Ok(Some(subscription_row(&row)?))
}

/// The lowercase hex SHA-256 of `text` (Postgres' built-in `sha256`).
pub fn sha256_hex(client: &SpiClient<'_>, text: &str) -> DsResult<String> {
    Ok(select(
        client,
        "SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to($1, 'UTF8')), 'hex')",
        Some(1),
        &[text.into()],
    )?
    .first()
    .get_one::<String>()?
    .unwrap_or_default())
}

/// Creates `id`, or revives its tombstone (keeping `generation`, so tokens
/// of its earlier life stay fenced). Returns false if a live subscription
/// holds the id (created concurrently): the caller compares with it.
pub fn create(
    client: &mut SpiClient<'_>,
    id: &str,
    owner: Oid,
    config: &Config,
    hash: &str,
) -> DsResult<bool> {
    let table = update(
        client,
        "INSERT INTO ds.subscriptions AS s (id, owner_role, type, pattern, webhook_url, \
             wake_stream, lease_ttl_ms, description, config_hash) \
         VALUES ($1, $2::pg_catalog.regrole, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET owner_role = excluded.owner_role, type = excluded.type, \
             pattern = excluded.pattern, webhook_url = excluded.webhook_url, \
             wake_stream = excluded.wake_stream, lease_ttl_ms = excluded.lease_ttl_ms, \
             description = excluded.description, config_hash = excluded.config_hash, \
             created_at = pg_catalog.now(), deleted_at = NULL, status = 'active', \
             wake_id = NULL, wake_snapshot = NULL, token_hash = NULL, callback_token = NULL, \
             holder = NULL, lease_expires_at = NULL, delivery_due_at = NULL, attempts = 0, \
             last_error = NULL \
         WHERE s.deleted_at IS NOT NULL \
         RETURNING 1",
        None,
        &[
            id.into(),
            owner.into(),
            config.kind.as_str().into(),
            config.pattern.as_deref().into(),
            config.webhook_url.as_deref().into(),
            config.wake_stream.as_deref().into(),
            (config.lease_ttl_ms as i32).into(),
            config.description.as_deref().into(),
            hash.into(),
        ],
    )?;
    Ok(!table.is_empty())
}

/// Tombstones `id`: no wake, token, holder, lease or delivery, no links.
pub fn tombstone(client: &mut SpiClient<'_>, id: &str) -> DsResult<()> {
    update(
        client,
        "UPDATE ds.subscriptions SET deleted_at = pg_catalog.now(), wake_id = NULL, \
             wake_snapshot = NULL, token_hash = NULL, callback_token = NULL, holder = NULL, \
             lease_expires_at = NULL, delivery_due_at = NULL \
         WHERE id OPERATOR(pg_catalog.=) $1 AND deleted_at IS NULL",
        None,
        &[id.into()],
    )?;
    update(
        client,
        "DELETE FROM ds.subscription_links WHERE subscription_id OPERATOR(pg_catalog.=) $1",
        None,
        &[id.into()],
    )?;
    Ok(())
}

/// The links of `id` with their streams' tails now (0 for a path with no
/// live stream), sorted by path (byte order).
pub fn links(client: &SpiClient<'_>, id: &str) -> DsResult<Vec<LinkInfo>> {
    let table = select(
        client,
        "SELECT l.path, l.explicit, l.acked_pos, coalesce(s.tail_pos, 0) \
         FROM ds.subscription_links l \
         LEFT JOIN ds.streams s ON s.path OPERATOR(pg_catalog.=) l.path AND NOT s.soft_deleted \
         WHERE l.subscription_id OPERATOR(pg_catalog.=) $1 \
         ORDER BY l.path COLLATE \"C\"",
        None,
        &[id.into()],
    )?;
    let mut out = Vec::new();
    for row in table {
        out.push(LinkInfo {
            path: row.get(1)?.unwrap_or_default(),
            explicit: row.get(2)?.unwrap_or(false),
            acked: Offset::from_i64(row.get(3)?.unwrap_or_default()),
            tail: Offset::from_i64(row.get(4)?.unwrap_or_default()),
        });
    }
    Ok(out)
}

/// Paths of live streams that start with `prefix` (candidates for a
/// pattern whose literal prefix it is; the caller matches the pattern).
pub fn stream_paths_with_prefix(client: &SpiClient<'_>, prefix: &str) -> DsResult<Vec<String>> {
    let table = select(
        client,
        "SELECT path FROM ds.streams \
         WHERE path IS NOT NULL AND NOT soft_deleted AND pg_catalog.starts_with(path, $1)",
        None,
        &[prefix.into()],
    )?;
    let mut out = Vec::new();
    for row in table {
        if let Some(p) = row.get::<String>(1)? {
            out.push(p);
        }
    }
    Ok(out)
}

/// Links `paths` to `id` at their streams' tails now (0 for a path with no
/// live stream), as `explicit` or `glob` links; an existing link gains the
/// flag and keeps its acknowledged position.
pub fn link_at_tails(
    client: &mut SpiClient<'_>,
    id: &str,
    paths: Vec<String>,
    explicit: bool,
) -> DsResult<()> {
    if paths.is_empty() {
        return Ok(());
    }
    update(
        client,
        "INSERT INTO ds.subscription_links AS l (subscription_id, path, explicit, glob, acked_pos) \
         SELECT $1, p, $3, NOT $3, \
                coalesce((SELECT s.tail_pos FROM ds.streams s \
                          WHERE s.path OPERATOR(pg_catalog.=) p AND NOT s.soft_deleted), 0) \
         FROM pg_catalog.unnest($2::text[]) p \
         ON CONFLICT (subscription_id, path) DO UPDATE \
         SET explicit = l.explicit OR excluded.explicit, glob = l.glob OR excluded.glob",
        None,
        &[id.into(), paths.into(), explicit.into()],
    )?;
    Ok(())
}

/// Removes the explicit flag of a link; the link goes when no flag is left.
pub fn unlink_explicit(client: &mut SpiClient<'_>, id: &str, path: &str) -> DsResult<()> {
    update(
        client,
        "DELETE FROM ds.subscription_links \
         WHERE subscription_id OPERATOR(pg_catalog.=) $1 AND path OPERATOR(pg_catalog.=) $2 \
           AND NOT glob",
        None,
        &[id.into(), path.into()],
    )?;
    update(
        client,
        "UPDATE ds.subscription_links SET explicit = false \
         WHERE subscription_id OPERATOR(pg_catalog.=) $1 AND path OPERATOR(pg_catalog.=) $2",
        None,
        &[id.into(), path.into()],
    )?;
    Ok(())
}

/// Live subscriptions with a pattern: `(id, pattern, wake_stream)`.
pub fn pattern_subscriptions(
    client: &SpiClient<'_>,
) -> DsResult<Vec<(String, String, Option<String>)>> {
    let table = select(
        client,
        "SELECT id, pattern, wake_stream FROM ds.subscriptions \
         WHERE deleted_at IS NULL AND pattern IS NOT NULL",
        None,
        &[],
    )?;
    let mut out = Vec::new();
    for row in table {
        if let (Some(id), Some(pattern)) = (row.get::<String>(1)?, row.get::<String>(2)?) {
            out.push((id, pattern, row.get::<String>(3)?));
        }
    }
    Ok(out)
}

/// Links a new stream at `path` to subscriptions `ids` (glob) at `pos`.
pub fn link_new_stream(
    client: &mut SpiClient<'_>,
    path: &str,
    pos: i64,
    ids: Vec<String>,
) -> DsResult<()> {
    update(
        client,
        "INSERT INTO ds.subscription_links AS l (subscription_id, path, explicit, glob, acked_pos) \
         SELECT i, $1, false, true, $2 FROM pg_catalog.unnest($3::text[]) i \
         ON CONFLICT (subscription_id, path) DO UPDATE SET glob = true",
        None,
        &[path.into(), pos.into(), ids.into()],
    )?;
    Ok(())
}

/// Drops every link to `path` (its stream is deleted or expired).
pub fn unlink_path(client: &mut SpiClient<'_>, path: &str) -> DsResult<()> {
    update(
        client,
        "DELETE FROM ds.subscription_links WHERE path OPERATOR(pg_catalog.=) $1",
        None,
        &[path.into()],
    )?;
    Ok(())
}

/// Moves acknowledged positions forward (never back).
pub fn advance_acks(
    client: &mut SpiClient<'_>,
    id: &str,
    paths: Vec<String>,
    positions: Vec<i64>,
) -> DsResult<()> {
    update(
        client,
        "UPDATE ds.subscription_links l SET acked_pos = greatest(l.acked_pos, a.pos) \
         FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::bigint[])) AS a(path, pos) \
         WHERE l.subscription_id OPERATOR(pg_catalog.=) $1 AND l.path OPERATOR(pg_catalog.=) a.path",
        None,
        &[id.into(), paths.into(), positions.into()],
    )?;
    Ok(())
}

/// Acknowledges the current wake's snapshot (a webhook answered `done`):
/// every link up to its tail in the snapshot, never backwards and never
/// past its stream's tail now (a stream re-created meanwhile is shorter).
pub fn ack_snapshot(client: &mut SpiClient<'_>, id: &str) -> DsResult<()> {
    update(
        client,
        "UPDATE ds.subscription_links l \
         SET acked_pos = greatest(l.acked_pos, \
                 least(snap.value::text::bigint, coalesce(st.tail_pos, 0))) \
         FROM ds.subscriptions sub \
         CROSS JOIN LATERAL pg_catalog.jsonb_each(sub.wake_snapshot) snap \
         LEFT JOIN ds.streams st ON st.path OPERATOR(pg_catalog.=) snap.key AND NOT st.soft_deleted \
         WHERE sub.id OPERATOR(pg_catalog.=) $1 AND l.subscription_id OPERATOR(pg_catalog.=) $1 \
           AND l.path OPERATOR(pg_catalog.=) snap.key",
        None,
        &[id.into()],
    )?;
    Ok(())
}

/// A fresh wake token: `dst_` and 64 hex digits from two random UUIDs.
pub fn new_token(client: &SpiClient<'_>) -> DsResult<String> {
    Ok(select(
        client,
        "SELECT 'dst_' OPERATOR(pg_catalog.||) \
                pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', '') \
                OPERATOR(pg_catalog.||) \
                pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', '')",
        Some(1),
        &[],
    )?
    .first()
    .get_one::<String>()?
    .unwrap_or_default())
}

/// Whether `token` is the current wake's token of `id`.
pub fn token_matches(client: &SpiClient<'_>, id: &str, token: &str) -> DsResult<bool> {
    Ok(select(
        client,
        "SELECT token_hash OPERATOR(pg_catalog.=) pg_catalog.sha256(pg_catalog.convert_to($2, 'UTF8')) \
         FROM ds.subscriptions WHERE id OPERATOR(pg_catalog.=) $1",
        Some(1),
        &[id.into(), token.into()],
    )?
    .first()
    .get_one::<bool>()?
    .unwrap_or(false))
}

/// Starts a wake of `id`: next generation, new wake id, snapshot of every
/// link's tail. A webhook wake gets its token now and is due for delivery
/// (no lease until a delivery succeeds). Returns `(generation, wake_id)`.
pub fn start_wake(
    client: &mut SpiClient<'_>,
    id: &str,
    webhook_token: Option<&str>,
) -> DsResult<(i64, String)> {
    let row = update(
        client,
        "UPDATE ds.subscriptions sub SET generation = sub.generation OPERATOR(pg_catalog.+) 1, \
             wake_id = 'w_' OPERATOR(pg_catalog.||) \
                 pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''), \
             wake_snapshot = (SELECT coalesce(pg_catalog.jsonb_object_agg(l.path, coalesce(s.tail_pos, 0)), '{}') \
                 FROM ds.subscription_links l \
                 LEFT JOIN ds.streams s ON s.path OPERATOR(pg_catalog.=) l.path AND NOT s.soft_deleted \
                 WHERE l.subscription_id OPERATOR(pg_catalog.=) $1), \
             token_hash = pg_catalog.sha256(pg_catalog.convert_to($2, 'UTF8')), \
             callback_token = $2, holder = NULL, lease_expires_at = NULL, \
             delivery_due_at = CASE WHEN $2 IS NULL THEN NULL ELSE pg_catalog.now() END, \
             attempts = 0 \
         WHERE id OPERATOR(pg_catalog.=) $1 RETURNING generation, wake_id",
        Some(1),
        &[id.into(), webhook_token.into()],
    )?;
    let row = row.first();
    Ok((row.get::<i64>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default()))
}

/// Ends the current wake of `id`: no wake, token, holder, lease or delivery.
pub fn end_wake(client: &mut SpiClient<'_>, id: &str) -> DsResult<()> {
    update(
        client,
        "UPDATE ds.subscriptions SET wake_id = NULL, wake_snapshot = NULL, token_hash = NULL, \
             callback_token = NULL, holder = NULL, lease_expires_at = NULL, delivery_due_at = NULL \
         WHERE id OPERATOR(pg_catalog.=) $1",
        None,
        &[id.into()],
    )?;
    Ok(())
}

/// Gives the wake of `id` to `holder` with a new token and a lease.
pub fn hold(client: &mut SpiClient<'_>, id: &str, holder: &str, token: &str) -> DsResult<()> {
    update(
        client,
        "UPDATE ds.subscriptions SET holder = $2, \
             token_hash = pg_catalog.sha256(pg_catalog.convert_to($3, 'UTF8')), \
             lease_expires_at = pg_catalog.now() OPERATOR(pg_catalog.+) \
                 (lease_ttl_ms OPERATOR(pg_catalog.*) interval '1 millisecond') \
         WHERE id OPERATOR(pg_catalog.=) $1",
        None,
        &[id.into(), holder.into(), token.into()],
    )?;
    Ok(())
}

/// Extends the lease of `id` (an ack or callback arrived); a callback also
/// proves the delivery arrived, so no delivery is due any more.
pub fn extend_lease(client: &mut SpiClient<'_>, id: &str) -> DsResult<()> {
    update(
        client,
        "UPDATE ds.subscriptions SET delivery_due_at = NULL, \
             lease_expires_at = pg_catalog.now() OPERATOR(pg_catalog.+) \
                 (lease_ttl_ms OPERATOR(pg_catalog.*) interval '1 millisecond') \
         WHERE id OPERATOR(pg_catalog.=) $1",
        None,
        &[id.into()],
    )?;
    Ok(())
}

/// Marks `id` failed with `error` (kept short), or active again.
pub fn set_status(client: &mut SpiClient<'_>, id: &str, error: Option<&str>) -> DsResult<()> {
    let error = error.map(|e| e.chars().take(1000).collect::<String>());
    update(
        client,
        "UPDATE ds.subscriptions \
         SET status = CASE WHEN $2 IS NULL THEN 'active' ELSE 'failed' END, \
             last_error = coalesce($2, last_error) \
         WHERE id OPERATOR(pg_catalog.=) $1",
        None,
        &[id.into(), error.into()],
    )?;
    Ok(())
}

/// Whether a link of `id` has a live stream past its acknowledged position.
const PENDING: &str = "EXISTS (SELECT FROM ds.subscription_links l \
     JOIN ds.streams st ON st.path OPERATOR(pg_catalog.=) l.path AND NOT st.soft_deleted \
     WHERE l.subscription_id OPERATOR(pg_catalog.=) sub.id \
       AND st.tail_pos OPERATOR(pg_catalog.>) l.acked_pos)";

/// Clears the wakes of up to `limit` live subscriptions whose lease ran
/// out, skipping rows other transactions hold. Returns how many.
pub fn expire_leases(client: &mut SpiClient<'_>, limit: i32) -> DsResult<usize> {
    Ok(update(
        client,
        "UPDATE ds.subscriptions SET wake_id = NULL, wake_snapshot = NULL, token_hash = NULL, \
             callback_token = NULL, holder = NULL, lease_expires_at = NULL, delivery_due_at = NULL \
         WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY( \
             SELECT id FROM ds.subscriptions \
             WHERE deleted_at IS NULL AND lease_expires_at OPERATOR(pg_catalog.<) pg_catalog.now() \
             ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)) \
         RETURNING 1",
        None,
        &[limit.into()],
    )?
    .len())
}

/// Up to `limit` live subscriptions with no wake and pending work, locked
/// (`SKIP LOCKED`): the tick wakes them.
pub fn idle_with_pending(client: &mut SpiClient<'_>, limit: i32) -> DsResult<Vec<String>> {
    let table = update(
        client,
        &format!(
            "SELECT id FROM ds.subscriptions sub \
             WHERE deleted_at IS NULL AND wake_id IS NULL AND holder IS NULL AND {PENDING} \
             ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        ),
        None,
        &[limit.into()],
    )?;
    let mut out = Vec::new();
    for row in table {
        if let Some(id) = row.get::<String>(1)? {
            out.push(id);
        }
    }
    Ok(out)
}

/// A webhook wake claimed for delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub wake_id: String,
    pub generation: i64,
    pub url: String,
    pub callback_token: String,
    pub attempts: i32,
    /// Path → tail position in the wake's snapshot.
    pub snapshot: Vec<(String, i64)>,
}

/// Claims up to `limit` webhook wakes due for delivery (`SKIP LOCKED`) and
/// makes them due again `in_flight_ms` later, in case the sender dies.
pub fn claim_deliveries(
    client: &mut SpiClient<'_>,
    limit: i32,
    in_flight_ms: i32,
) -> DsResult<Vec<Delivery>> {
    let table = update(
        client,
        "UPDATE ds.subscriptions SET delivery_due_at = pg_catalog.now() OPERATOR(pg_catalog.+) \
             ($2 OPERATOR(pg_catalog.*) interval '1 millisecond') \
         WHERE id OPERATOR(pg_catalog.=) ANY (ARRAY( \
             SELECT id FROM ds.subscriptions \
             WHERE deleted_at IS NULL AND type OPERATOR(pg_catalog.=) 'webhook' \
               AND wake_id IS NOT NULL \
               AND delivery_due_at OPERATOR(pg_catalog.<=) pg_catalog.now() \
             ORDER BY delivery_due_at LIMIT $1 FOR UPDATE SKIP LOCKED)) \
         RETURNING id, wake_id, generation, webhook_url, callback_token, attempts, \
             (SELECT coalesce(pg_catalog.array_agg(k ORDER BY k COLLATE \"C\"), '{}') \
              FROM pg_catalog.jsonb_object_keys(wake_snapshot) k), \
             (SELECT coalesce(pg_catalog.array_agg((wake_snapshot OPERATOR(pg_catalog.->>) k)::bigint \
                      ORDER BY k COLLATE \"C\"), '{}') \
              FROM pg_catalog.jsonb_object_keys(wake_snapshot) k)",
        None,
        &[limit.into(), in_flight_ms.into()],
    )?;
    let mut out = Vec::new();
    for row in table {
        let paths: Vec<String> = row.get(7)?.unwrap_or_default();
        let tails: Vec<i64> = row.get(8)?.unwrap_or_default();
        out.push(Delivery {
            id: row.get(1)?.unwrap_or_default(),
            wake_id: row.get(2)?.unwrap_or_default(),
            generation: row.get(3)?.unwrap_or_default(),
            url: row.get(4)?.unwrap_or_default(),
            callback_token: row.get(5)?.unwrap_or_default(),
            attempts: row.get(6)?.unwrap_or_default(),
            snapshot: paths.into_iter().zip(tails).collect(),
        });
    }
    Ok(out)
}

/// The delivery of the current wake succeeded: nothing due, active, the
/// lease starts.
pub fn delivered(client: &mut SpiClient<'_>, id: &str) -> DsResult<()> {
    update(
        client,
        "UPDATE ds.subscriptions SET delivery_due_at = NULL, status = 'active', attempts = 0, \
             last_error = NULL, lease_expires_at = pg_catalog.now() OPERATOR(pg_catalog.+) \
                 (lease_ttl_ms OPERATOR(pg_catalog.*) interval '1 millisecond') \
         WHERE id OPERATOR(pg_catalog.=) $1",
        None,
        &[id.into()],
    )?;
    Ok(())
}

/// A delivery failed: counted, `failed`, due again after `delay_ms`.
pub fn delivery_failed(
    client: &mut SpiClient<'_>,
    id: &str,
    error: &str,
    delay_ms: i64,
) -> DsResult<()> {
    let error: String = error.chars().take(1000).collect();
    update(
        client,
        "UPDATE ds.subscriptions SET attempts = attempts OPERATOR(pg_catalog.+) 1, \
             status = 'failed', last_error = $2, \
             delivery_due_at = pg_catalog.now() OPERATOR(pg_catalog.+) \
                 ($3 OPERATOR(pg_catalog.*) interval '1 millisecond') \
         WHERE id OPERATOR(pg_catalog.=) $1",
        None,
        &[id.into(), error.into(), delay_ms.into()],
    )?;
    Ok(())
}

/// A uniformly random number in [0, 1) (Postgres' `random()`).
pub fn random(client: &SpiClient<'_>) -> DsResult<f64> {
    Ok(select(client, "SELECT pg_catalog.random()", Some(1), &[])?
        .first()
        .get_one::<f64>()?
        .unwrap_or(0.5))
}

/// The active signing key: `(kid, private_key)`.
pub fn active_signing_key(client: &SpiClient<'_>) -> DsResult<Option<(String, Vec<u8>)>> {
    let table = select(
        client,
        "SELECT kid, private_key FROM ds.signing_keys WHERE retired_at IS NULL",
        Some(1),
        &[],
    )?;
    let Some(row) = table.into_iter().next() else { return Ok(None) };
    Ok(Some((row.get(1)?.unwrap_or_default(), row.get(2)?.unwrap_or_default())))
}

/// Inserts a key unless one is active (a concurrent insert waits for the
/// other and then does nothing).
pub fn insert_signing_key(
    client: &mut SpiClient<'_>,
    kid: &str,
    public_key: &[u8],
    private_key: &[u8],
) -> DsResult<()> {
    update(
        client,
        "INSERT INTO ds.signing_keys (kid, public_key, private_key) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
        None,
        &[kid.into(), public_key.into(), private_key.into()],
    )?;
    Ok(())
}

/// Retires the active key.
pub fn retire_signing_key(client: &mut SpiClient<'_>) -> DsResult<()> {
    update(
        client,
        "UPDATE ds.signing_keys SET retired_at = pg_catalog.now() WHERE retired_at IS NULL",
        None,
        &[],
    )?;
    Ok(())
}

/// Keys receivers may still see signatures of: `(kid, x)` with `x` the
/// public key in unpadded base64url, newest first. Retired keys stay 15
/// minutes: sidecars cache a key for at most 60 s and receivers accept
/// signatures up to 5 minutes old.
pub fn published_keys(client: &SpiClient<'_>) -> DsResult<Vec<(String, String)>> {
    let table = select(
        client,
        "SELECT kid, pg_catalog.rtrim(pg_catalog.translate( \
                    pg_catalog.encode(public_key, 'base64'), E'+/\\n', '-_'), '=') \
         FROM ds.signing_keys \
         WHERE retired_at IS NULL \
            OR retired_at OPERATOR(pg_catalog.>) (pg_catalog.now() OPERATOR(pg_catalog.-) interval '15 minutes') \
         ORDER BY created_at DESC, kid",
        None,
        &[],
    )?;
    let mut out = Vec::new();
    for row in table {
        out.push((row.get(1)?.unwrap_or_default(), row.get(2)?.unwrap_or_default()));
    }
    Ok(out)
}
