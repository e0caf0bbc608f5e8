-- durable_streams 0.1.0 -> 0.2.0 (ALTER EXTENSION durable_streams UPDATE).
-- Runs in one transaction with the extension's schema as search_path; every
-- name below is schema-qualified anyway. A fresh CREATE EXTENSION of 0.2.0
-- (sql/bootstrap.sql) and this script must give the same schema:
-- scripts/upgrade-test.sh compares the two.

-- A stream's creating role was a raw oid, which a dump carries as a number:
-- restored into another cluster (roles get new OIDs) it named another role or
-- none, and quotas silently counted against the wrong role. regrole dumps the
-- role's name. oid and regrole are binary compatible: no table rewrite, and
-- the index on the column is kept.
ALTER TABLE ds.streams ALTER COLUMN owner_role TYPE pg_catalog.regrole;

-- Read replicas: a hot standby cannot restart sliding TTLs, so the sidecar
-- forwards the paths its standby reads served to the primary in batches.
CREATE FUNCTION ds."touch"(
	"paths" TEXT[],
	"as_roles" TEXT[] DEFAULT NULL
) RETURNS bigint
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'touch_wrapper';
REVOKE EXECUTE ON FUNCTION ds.touch(text[], text[]) FROM PUBLIC;

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
SELECT pg_catalog.pg_extension_config_dump('ds.pending', '');
REVOKE ALL ON ds.pending FROM PUBLIC;

-- Hot streams: ds.enqueue appends without locking the stream; the sequencer
-- worker gives the appends offsets after commit.
CREATE FUNCTION ds."enqueue"(
	"path" TEXT,
	"data" bytea
) RETURNS VOID
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'enqueue_bytea_wrapper';
CREATE FUNCTION ds."enqueue"(
	"path" TEXT,
	"data" jsonb
) RETURNS VOID
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'enqueue_jsonb_wrapper';
CREATE FUNCTION ds."enqueue"(
	"path" TEXT,
	"data" TEXT
) RETURNS VOID
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'enqueue_text_wrapper';
REVOKE EXECUTE ON FUNCTION ds.enqueue(text, bytea), ds.enqueue(text, jsonb),
    ds.enqueue(text, text) FROM PUBLIC;

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

-- Subscriptions (src/subscriptions/): what the sidecar and SQL consumers
-- call, and the raising wrappers.
CREATE FUNCTION ds."subscription_add_signing_key"(
	"kid" TEXT,
	"public_key" bytea,
	"private_key" bytea
) RETURNS TABLE (
	"kid" TEXT,
	"private_key" bytea
)
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscription_add_signing_key_wrapper';
CREATE FUNCTION ds."subscription_deliveries"(
	"max" INT,
	"in_flight_ms" INT
) RETURNS TABLE (
	"subscription_id" TEXT,
	"wake_id" TEXT,
	"generation" bigint,
	"url" TEXT,
	"streams" jsonb,
	"callback_token" TEXT,
	"attempts" INT
)
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscription_deliveries_wrapper';
CREATE FUNCTION ds."subscription_delivery_result"(
	"id" TEXT,
	"wake_id" TEXT,
	"generation" bigint,
	"outcome" TEXT,
	"error" TEXT DEFAULT NULL
) RETURNS bool
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscription_delivery_result_wrapper';
CREATE FUNCTION ds."subscription_jwks"() RETURNS jsonb
STRICT STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscription_jwks_wrapper';
CREATE FUNCTION ds."subscription_rotate_signing_key"() RETURNS VOID
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscription_rotate_signing_key_wrapper';
CREATE FUNCTION ds."subscription_signing_key"() RETURNS TABLE (
	"kid" TEXT,
	"private_key" bytea
)
STRICT STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscription_signing_key_wrapper';
CREATE FUNCTION ds."subscription_tick"(
	"max_subscriptions" INT
) RETURNS INT
STRICT SECURITY DEFINER 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscription_tick_wrapper';
CREATE FUNCTION ds."try_subscription_ack"(
	"id" TEXT,
	"token" TEXT,
	"request" jsonb
) RETURNS jsonb
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_subscription_ack_wrapper';
CREATE FUNCTION ds."try_subscription_add_streams"(
	"id" TEXT,
	"paths" TEXT[]
) RETURNS jsonb
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_subscription_add_streams_wrapper';
CREATE FUNCTION ds."try_subscription_callback"(
	"id" TEXT,
	"token" TEXT,
	"request" jsonb
) RETURNS jsonb
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_subscription_callback_wrapper';
CREATE FUNCTION ds."try_subscription_claim"(
	"id" TEXT,
	"worker" TEXT
) RETURNS jsonb
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_subscription_claim_wrapper';
CREATE FUNCTION ds."try_subscription_delete"(
	"id" TEXT
) RETURNS jsonb
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_subscription_delete_wrapper';
CREATE FUNCTION ds."try_subscription_get"(
	"id" TEXT
) RETURNS jsonb
STRICT STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_subscription_get_wrapper';
CREATE FUNCTION ds."try_subscription_put"(
	"id" TEXT,
	"config" jsonb
) RETURNS jsonb
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_subscription_put_wrapper';
CREATE FUNCTION ds."try_subscription_release"(
	"id" TEXT,
	"token" TEXT,
	"request" jsonb
) RETURNS jsonb
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_subscription_release_wrapper';
CREATE FUNCTION ds."try_subscription_remove_stream"(
	"id" TEXT,
	"path" TEXT
) RETURNS jsonb
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'try_subscription_remove_stream_wrapper';
-- Raises the error object a ds.try_subscription_* function returned, with
-- the SQLSTATE of its code (ds_core::subscription::ErrorCode::sqlstate);
-- returns any other result unchanged.
CREATE FUNCTION ds.subscription_checked(result jsonb) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp AS $$
DECLARE
    code text := result OPERATOR(pg_catalog.#>>) '{error,code}';
BEGIN
    IF code IS NULL THEN
        RETURN result;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = CASE code
            WHEN 'INVALID_REQUEST' THEN 'SD001'
            WHEN 'WEBHOOK_URL_REJECTED' THEN 'SD002'
            WHEN 'SUBSCRIPTION_NOT_FOUND' THEN 'SD003'
            WHEN 'SUBSCRIPTION_ALREADY_EXISTS' THEN 'SD004'
            WHEN 'TOKEN_INVALID' THEN 'SD005'
            WHEN 'FENCED' THEN 'SD006'
            WHEN 'ALREADY_CLAIMED' THEN 'SD007'
            WHEN 'NO_PENDING_WORK' THEN 'SD008'
            WHEN 'INVALID_OFFSET' THEN 'SD009'
            WHEN 'FORBIDDEN' THEN '42501'
            ELSE 'XX000' END,
        MESSAGE = code OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||)
                  coalesce(result OPERATOR(pg_catalog.#>>) '{error,message}', ''),
        DETAIL = (result OPERATOR(pg_catalog.->) 'error')::text;
END
$$;

CREATE FUNCTION ds.subscription_put(id text, config jsonb) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_put(id, config)) $$;
CREATE FUNCTION ds.subscription_get(id text) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_get(id)) $$;
CREATE FUNCTION ds.subscription_delete(id text) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_delete(id)) $$;
CREATE FUNCTION ds.subscription_add_streams(id text, paths text[]) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_add_streams(id, paths)) $$;
CREATE FUNCTION ds.subscription_remove_stream(id text, path text) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_remove_stream(id, path)) $$;
CREATE FUNCTION ds.subscription_claim(id text, worker text) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_claim(id, worker)) $$;
CREATE FUNCTION ds.subscription_ack(id text, token text, request jsonb) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_ack(id, token, request)) $$;
CREATE FUNCTION ds.subscription_callback(id text, token text, request jsonb) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_callback(id, token, request)) $$;
CREATE FUNCTION ds.subscription_release(id text, token text, request jsonb) RETURNS jsonb
LANGUAGE sql SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
AS $$ SELECT ds.subscription_checked(ds.try_subscription_release(id, token, request)) $$;
DO $revoke$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    FOR f IN SELECT p.oid::pg_catalog.regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace OPERATOR(pg_catalog.=) 'ds'::pg_catalog.regnamespace
               AND (p.proname OPERATOR(pg_catalog.~~) 'subscription%'
                    OR p.proname OPERATOR(pg_catalog.~~) 'try_subscription%')
    LOOP
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$revoke$;

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

-- Change capture (src/capture.rs).
CREATE FUNCTION ds."capture"(
	"tbl" regclass,
	"path" TEXT,
	"entity_type" TEXT DEFAULT NULL,
	"columns" TEXT[] DEFAULT NULL,
	"row_filter" TEXT DEFAULT NULL,
	"key_expression" TEXT DEFAULT NULL
) RETURNS TEXT
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'capture_wrapper';
CREATE FUNCTION ds."uncapture"(
	"tbl" regclass
) RETURNS bool
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'uncapture_wrapper';
CREATE FUNCTION ds."capture_trigger"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'capture_trigger_wrapper';
CREATE FUNCTION ds."list_captures"() RETURNS TABLE (
	"tbl" TEXT,
	"path" TEXT,
	"entity_type" TEXT,
	"columns" TEXT[],
	"key_expression" TEXT,
	"row_filter" TEXT,
	"owner_role" TEXT
)
STABLE STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'list_captures_wrapper';
REVOKE EXECUTE ON FUNCTION ds.list_captures() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION ds.capture(regclass, text, text, text[], text, text),
    ds.uncapture(regclass), ds.capture_trigger(), ds.forget_dropped_captures() FROM PUBLIC;

-- Stream registries (ds.create_registry): one row per registered prefix
-- ('' = every stream) and its registry stream, <prefix>__registry__.
CREATE TABLE ds.registries (
    prefix    text PRIMARY KEY,
    stream_id bigint NOT NULL
);
SELECT pg_catalog.pg_extension_config_dump('ds.registries', '');
REVOKE ALL ON ds.registries FROM PUBLIC;

CREATE FUNCTION ds."create_registry"(
	"prefix" TEXT
) RETURNS TABLE (
	"path" TEXT,
	"created" bool,
	"listed" bigint
)
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_registry_wrapper';
CREATE FUNCTION ds."drop_registry"(
	"prefix" TEXT
) RETURNS bool
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'drop_registry_wrapper';
REVOKE EXECUTE ON FUNCTION ds.create_registry(text), ds.drop_registry(text) FROM PUBLIC;

-- Retention (issue 13): the earliest retained position of each stream,
-- per-stream policies, ds.head's earliest_offset, and the functions that
-- set and apply policies.
ALTER TABLE ds.streams
    ADD COLUMN retained_from bigint NOT NULL DEFAULT 0 CHECK (retained_from >= 0);
CREATE TABLE ds.retention (
    stream_id       bigint PRIMARY KEY,
    max_age_seconds bigint CHECK (max_age_seconds > 0),
    max_bytes       bigint CHECK (max_bytes >= 0)
);
SELECT pg_catalog.pg_extension_config_dump('ds.retention', '');
REVOKE ALL ON ds.retention FROM PUBLIC;

-- Functions whose result gains columns are re-created (a function's result
-- type cannot change in place), keeping the EXECUTE grants roles had:
-- ds.head gains earliest_offset, ds.worker_stats the retention counters
-- (streams_trimmed, bytes_trimmed). In one block: a table made here would
-- become a member of the extension.
DO $recreate$
DECLARE
    f record;
    regrant text[];
    g text;
BEGIN
    FOR f IN SELECT * FROM (VALUES
        ('ds.head(text)', $create$
    CREATE FUNCTION ds."head"(
    	"path" TEXT
    ) RETURNS TABLE (
    	"stream_id" bigint,
    	"content_type" TEXT,
    	"next_offset" TEXT,
    	"closed" bool,
    	"ttl_seconds" bigint,
    	"expires_at" timestamp with time zone,
    	"earliest_offset" TEXT
    )
    STRICT STABLE SECURITY DEFINER
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'head_wrapper'$create$),
        ('ds.worker_stats()', $create$
    CREATE FUNCTION ds."worker_stats"() RETURNS TABLE (
    	"running" bool,
    	"database_oid" bigint,
    	"passes" bigint,
    	"last_pass" timestamp with time zone,
    	"segments_written" bigint,
    	"streams_expired" bigint,
    	"errors" bigint,
    	"streams_trimmed" bigint,
    	"bytes_trimmed" bigint
    )
    STRICT SECURITY DEFINER
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'worker_stats_wrapper'$create$)) AS t(signature, create_statement)
    LOOP
        SELECT coalesce(pg_catalog.array_agg(pg_catalog.format(
                   'GRANT EXECUTE ON FUNCTION %s TO %s%s', f.signature,
                   CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                        ELSE pg_catalog.quote_ident(a.grantee::pg_catalog.regrole::pg_catalog.text) END,
                   CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)), '{}')
          INTO regrant
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.oid OPERATOR(pg_catalog.=) f.signature::pg_catalog.regprocedure
           AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
           AND a.grantee OPERATOR(pg_catalog.<>) p.proowner;
        EXECUTE pg_catalog.format('DROP FUNCTION %s', f.signature);
        EXECUTE f.create_statement;
        EXECUTE pg_catalog.format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f.signature);
        FOREACH g IN ARRAY regrant LOOP
            EXECUTE g;
        END LOOP;
    END LOOP;
END
$recreate$;

CREATE FUNCTION ds."set_retention"(
	"path" TEXT,
	"max_age" interval,
	"max_bytes" bigint
) RETURNS VOID
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_retention_wrapper';
CREATE FUNCTION ds."reset_retention"(
	"path" TEXT
) RETURNS VOID
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'reset_retention_wrapper';
CREATE FUNCTION ds."retention"(
	"path" TEXT
) RETURNS TABLE (
	"max_age" interval,
	"max_bytes" bigint,
	"source" TEXT,
	"earliest_offset" TEXT
)
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'retention_wrapper';
CREATE FUNCTION ds."trim"(
	"path" TEXT
) RETURNS TABLE (
	"segments" bigint,
	"rows" bigint,
	"bytes" bigint,
	"earliest_offset" TEXT
)
STRICT SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'trim_wrapper';
REVOKE EXECUTE ON FUNCTION ds.set_retention(text, interval, bigint), ds.reset_retention(text),
    ds.retention(text), ds.trim(text) FROM PUBLIC;

-- Generic plans for every statement the SQL and PL/pgSQL functions of ds
-- run, as the C functions get for their kept plans (storage.rs,
-- GenericPlans): short keyed statements, which the default plan_cache_mode
-- would re-plan at every call when they take arrays. Set per function, so
-- the caller's own queries keep their setting. The C functions have no such
-- clause: its GUC nest level cost about 6% of an append.
DO $plan_cache$
DECLARE
    f pg_catalog.regprocedure;
BEGIN
    FOR f IN SELECT p.oid::pg_catalog.regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace OPERATOR(pg_catalog.=) 'ds'::pg_catalog.regnamespace
               AND p.prosecdef
               AND p.prolang OPERATOR(pg_catalog.<>) (SELECT l.oid FROM pg_catalog.pg_language l
                                                    WHERE l.lanname OPERATOR(pg_catalog.=) 'c')
             ORDER BY 1
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan', f);
    END LOOP;
END
$plan_cache$;

