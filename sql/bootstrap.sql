-- Storage of durable_streams. Every table is keyed by stream_id first, so a
-- distributed Postgres can shard by it. Written only by the extension's own
-- functions (SECURITY DEFINER); PUBLIC has no access.

-- One row per stream. Updated once per appending transaction (tail_pos):
-- no indexed column changes there, and fillfactor leaves room, so the update
-- is HOT and pruned in place.
CREATE TABLE ds.streams (
    stream_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL once an expired stream with live forks gave its path up: it is
    -- then kept only so its forks can read what they inherited.
    path               text UNIQUE,
    content_type       text NOT NULL,
    ttl_seconds        bigint CHECK (ttl_seconds >= 0),
    expires_at         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- Last read or write; a sliding TTL counts from here.
    last_access        timestamptz NOT NULL DEFAULT now(),
    -- Logical position after the last byte: the tail offset.
    tail_pos           bigint NOT NULL DEFAULT 0 CHECK (tail_pos >= 0),
    closed             boolean NOT NULL DEFAULT false,
    -- The producer request that closed the stream, so its retry is a duplicate.
    closed_by_producer text,
    closed_by_epoch    bigint,
    closed_by_seq      bigint,
    -- Last Stream-Seq accepted (compared byte-wise, per stream).
    last_stream_seq    text,
    -- Forks (§4.2): positions below fork_pos are read from fork_source (which
    -- may be a fork itself); the fork's own rows start at fork_pos.
    fork_source        bigint,
    fork_source_path   text,
    fork_offset        bigint,
    fork_sub_offset    bigint,
    fork_pos           bigint,
    -- Live forks whose fork_source is this stream.
    fork_count         integer NOT NULL DEFAULT 0 CHECK (fork_count >= 0),
    -- Deleted while forks still read it: 410 for direct use, path blocked.
    soft_deleted       boolean NOT NULL DEFAULT false,
    -- The role that created the stream: whose storage quota it counts
    -- against (ds.set_quota). NULL for streams the extension itself made.
    -- regrole, not oid, so that a dump carries the role's name and a restore
    -- into another cluster (where roles get new OIDs) still finds it.
    owner_role         pg_catalog.regrole,
    -- Most bytes of its own (beyond what a fork inherits) the stream may
    -- hold (ds.set_stream_quota); NULL: no per-stream limit.
    max_bytes          bigint CHECK (max_bytes >= 0),
    -- Earliest retained position: retention (src/retention.rs) dropped the
    -- data below it; reads from below it fail with SD410 (HTTP 410).
    retained_from      bigint NOT NULL DEFAULT 0 CHECK (retained_from >= 0),
    CHECK (ttl_seconds IS NULL OR expires_at IS NULL),
    CHECK ((fork_source IS NULL) = (fork_pos IS NULL))
) WITH (fillfactor = 50);

-- Hot log: one row per JSON message, or per append of a byte stream.
-- A row covers positions [start_pos, start_pos + octet_length(data)).
-- lz4, not the default pglz: large bodies are compressed on every append and
-- decompressed on every catch-up read, and pglz is several times slower.
CREATE TABLE ds.messages (
    stream_id bigint NOT NULL,
    start_pos bigint NOT NULL,
    data      bytea  COMPRESSION lz4 NOT NULL,
    PRIMARY KEY (stream_id, start_pos)
);

-- Cold log: messages packed by rotation into write-once segments
-- (ds_core::segment framing). A segment covers [start_pos, end_pos) and
-- replaced exactly those hot rows, in the same transaction.
CREATE TABLE ds.segments (
    stream_id     bigint  NOT NULL,
    start_pos     bigint  NOT NULL,
    end_pos       bigint  NOT NULL,
    message_count integer NOT NULL,
    data          bytea   COMPRESSION lz4 NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, start_pos),
    CHECK (end_pos > start_pos)
);

-- Idempotent producer state (§5.2.1), written in the same transaction as the
-- data it guards; kept as long as the stream exists.
CREATE TABLE ds.producers (
    stream_id   bigint NOT NULL,
    producer_id text   NOT NULL,
    epoch       bigint NOT NULL,
    last_seq    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, producer_id)
) WITH (fillfactor = 70);

-- Appends made with ds.enqueue: committed with the writing transaction but
-- not yet given offsets. The sequencer (a background worker) and any
-- locking append to the same stream move them into ds.messages, a
-- transaction's rows together and in their order, transactions in the order
-- of their last write (lsn below).
-- Rows live here for milliseconds; the table is vacuumed eagerly.
CREATE TABLE ds.pending (
    stream_id bigint NOT NULL,
    xid       pg_catalog.xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    -- The writing backend's counter: its order within the transaction.
    seq       bigint NOT NULL,
    -- Where WAL was when the row was written. A transaction is sequenced by
    -- the largest of its rows' (then xid): a write that had to wait for
    -- another transaction's row lock or unique key comes after that
    -- transaction's commit record, so conflicting transactions (a captured
    -- row updated by two) are sequenced in commit order, and one that began
    -- after another committed still comes after it.
    lsn       pg_catalog.pg_lsn NOT NULL DEFAULT pg_catalog.pg_current_wal_insert_lsn(),
    data      bytea  COMPRESSION lz4 NOT NULL,
    PRIMARY KEY (stream_id, xid, seq)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
        autovacuum_vacuum_insert_scale_factor = 0);
-- How the sequencer finds work without reading the rows it already moved:
-- until vacuum removes them they stay in both indexes, ahead of the live
-- rows of their stream in the primary key. It reads from a floor instead
-- (an xid below which nothing committed is left pending, see sequencer.rs).
CREATE INDEX pending_xid ON ds.pending (xid);

-- Access control: per-path grants (ds.grant / ds.revoke, the ds.grants
-- view). `pattern` is a glob over stream paths (ds_core::acl), `privileges`
-- a bit mask of ds_core::acl::Privilege. regrole so that dumps carry role
-- names, not OIDs.
CREATE TABLE ds.path_grants (
    grantee    pg_catalog.regrole NOT NULL,
    pattern    text    NOT NULL,
    privileges integer NOT NULL CHECK (privileges > 0),
    granted_by pg_catalog.regrole,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (grantee, pattern)
);

-- Storage quotas per owner role (ds.set_quota): bytes of all the streams a
-- role created, and how many streams it may hold. NULL: unlimited.
CREATE TABLE ds.role_quotas (
    role        pg_catalog.regrole PRIMARY KEY,
    max_bytes   bigint CHECK (max_bytes >= 0),
    max_streams bigint CHECK (max_streams >= 0)
);
CREATE INDEX streams_owner_role ON ds.streams (owner_role) WHERE owner_role IS NOT NULL;

-- Retention policies of single streams (ds.set_retention); streams without
-- a row follow the server defaults (ds.retention_max_age,
-- ds.retention_max_bytes). NULL: no limit of that kind. Deleted with the
-- stream.
CREATE TABLE ds.retention (
    stream_id       bigint PRIMARY KEY,
    max_age_seconds bigint CHECK (max_age_seconds > 0),
    max_bytes       bigint CHECK (max_bytes >= 0)
);

-- Private settings of this installation. `notify_channel` is the channel
-- the doorbell announces on: a random name, so that only roles allowed to
-- call ds.notify_channel() can LISTEN to paths and tails, and nobody else
-- can NOTIFY the sidecar's waiters. Not dumped: a restore gets a new one.
CREATE TABLE ds.settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO ds.settings
VALUES ('notify_channel',
        'durable_streams_' || pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''));

-- Stream data is user data: include it in pg_dump.
SELECT pg_catalog.pg_extension_config_dump('ds.streams', '');
SELECT pg_catalog.pg_extension_config_dump('ds.streams_stream_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('ds.messages', '');
SELECT pg_catalog.pg_extension_config_dump('ds.producers', '');
SELECT pg_catalog.pg_extension_config_dump('ds.segments', '');
SELECT pg_catalog.pg_extension_config_dump('ds.pending', '');
SELECT pg_catalog.pg_extension_config_dump('ds.path_grants', '');
SELECT pg_catalog.pg_extension_config_dump('ds.role_quotas', '');
SELECT pg_catalog.pg_extension_config_dump('ds.retention', '');

REVOKE ALL ON ds.streams, ds.messages, ds.segments, ds.producers, ds.pending, ds.path_grants,
              ds.role_quotas, ds.retention, ds.settings FROM PUBLIC;

-- Stream registries (ds.create_registry): one row per registered prefix
-- ('' = every stream) and its registry stream, <prefix>__registry__.
CREATE TABLE ds.registries (
    prefix    text PRIMARY KEY,
    stream_id bigint NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('ds.registries', '');
REVOKE ALL ON ds.registries FROM PUBLIC;

-- Subscriptions (issue 11; src/subscriptions/). One row per id; a deleted
-- subscription is a tombstone (deleted_at) so that `generation` survives a
-- re-create of the same id and tokens of its earlier life stay fenced.
-- Pending work is not stored: it is a link whose stream's tail is past
-- acked_pos. owner_role: the acting role at creation (regrole, so dumps
-- carry the name).
CREATE TABLE ds.subscriptions (
    id               text PRIMARY KEY CHECK (octet_length(id) BETWEEN 1 AND 256),
    owner_role       pg_catalog.regrole NOT NULL,
    type             text NOT NULL CHECK (type IN ('webhook', 'pull-wake')),
    pattern          text,
    webhook_url      text,
    wake_stream      text,
    lease_ttl_ms     integer NOT NULL CHECK (lease_ttl_ms BETWEEN 1000 AND 600000),
    description      text,
    -- sha256 (hex) of the normalised configuration: same hash, same subscription.
    config_hash      text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz,
    status           text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'failed')),
    generation       bigint NOT NULL DEFAULT 0,
    -- The wake in flight: its id, the tail of every link when it started
    -- (path -> position), and sha256 of its token.
    wake_id          text,
    wake_snapshot    jsonb,
    token_hash       bytea,
    -- Webhook only: the token the delivery carries, kept while it is in flight.
    callback_token   text,
    holder           text,
    lease_expires_at timestamptz,
    -- Webhook: when the next delivery attempt may start (NULL: none due).
    delivery_due_at  timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    last_error       text,
    CHECK ((type = 'webhook') = (webhook_url IS NOT NULL)),
    CHECK ((type = 'pull-wake') = (wake_stream IS NOT NULL))
);
CREATE INDEX subscriptions_due ON ds.subscriptions (delivery_due_at)
    WHERE delivery_due_at IS NOT NULL AND deleted_at IS NULL;
CREATE INDEX subscriptions_leases ON ds.subscriptions (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL AND deleted_at IS NULL;

-- Which stream paths a subscription watches, and up to where it has
-- acknowledged them. By path: an explicit link may name a stream that does
-- not exist yet (its tail counts as 0). Written by ds.create / ds.fork for
-- glob links, deleted with the stream.
CREATE TABLE ds.subscription_links (
    subscription_id text    NOT NULL,
    path            text    NOT NULL,
    explicit        boolean NOT NULL,
    glob            boolean NOT NULL,
    acked_pos       bigint  NOT NULL DEFAULT 0 CHECK (acked_pos >= 0),
    PRIMARY KEY (subscription_id, path),
    CHECK (explicit OR glob)
);
CREATE INDEX subscription_links_path ON ds.subscription_links (path);

-- Webhook signing keys (Ed25519; generated by the sidecar). At most one
-- active key; retired keys stay published for 15 minutes.
CREATE TABLE ds.signing_keys (
    kid         text PRIMARY KEY,
    public_key  bytea NOT NULL CHECK (octet_length(public_key) = 32),
    private_key bytea NOT NULL CHECK (octet_length(private_key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_active ON ds.signing_keys ((true)) WHERE retired_at IS NULL;

SELECT pg_catalog.pg_extension_config_dump('ds.subscriptions', '');
SELECT pg_catalog.pg_extension_config_dump('ds.subscription_links', '');
SELECT pg_catalog.pg_extension_config_dump('ds.signing_keys', '');
REVOKE ALL ON ds.subscriptions, ds.subscription_links, ds.signing_keys FROM PUBLIC;

-- Tables captured into streams (ds.capture): their triggers ds_capture and
-- ds_capture_truncate append the table's changes to `path` as State
-- Protocol messages. regclass/regrole so that dumps carry names.
CREATE TABLE ds.captures (
    tbl            pg_catalog.regclass PRIMARY KEY,
    path           text NOT NULL,
    entity_type    text NOT NULL CHECK (entity_type <> ''),
    -- Columns in the messages' values; NULL: all (added columns follow).
    columns        text[],
    -- The key: these columns (the primary key's, by name), or the expression.
    key_columns    text[],
    key_expression text,
    row_filter     text,
    -- The role that called ds.capture: expressions run with its rights.
    owner_role     pg_catalog.regrole NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((key_columns IS NULL) <> (key_expression IS NULL))
);
SELECT pg_catalog.pg_extension_config_dump('ds.captures', '');
REVOKE ALL ON ds.captures FROM PUBLIC;

-- A dropped table's capture goes with it (its triggers already did).
CREATE FUNCTION ds.forget_dropped_captures() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM ds.captures c
    WHERE c.tbl::pg_catalog.oid OPERATOR(pg_catalog.=) ANY (ARRAY(
        SELECT d.objid FROM pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
          AND d.objsubid OPERATOR(pg_catalog.=) 0));
END
$$;
CREATE EVENT TRIGGER ds_forget_dropped_captures ON sql_drop
    EXECUTE FUNCTION ds.forget_dropped_captures();
