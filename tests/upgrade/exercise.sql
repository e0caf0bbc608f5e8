-- Uses streams fill.sql made, after an upgrade or a restore: every feature
-- still works on old data. Raises (and stops psql) on the first surprise.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

CREATE FUNCTION pg_temp.pos(o text) RETURNS bigint LANGUAGE sql
    AS $$ SELECT split_part(o, '_', 2)::bigint $$;
CREATE FUNCTION pg_temp.check(ok boolean, what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'exercise failed: %', what;
    END IF;
END $$;
CREATE FUNCTION pg_temp.all_data(p text) RETURNS bytea LANGUAGE plpgsql AS $$
DECLARE off text := '-1'; acc bytea := ''; r record; got int;
BEGIN
    LOOP
        got := 0;
        FOR r IN SELECT * FROM ds.read(p, off, 50) LOOP
            got := got + 1; acc := acc || r.data; off := r.next_offset;
        END LOOP;
        EXIT WHEN got = 0;
    END LOOP;
    RETURN acc;
END $$;

-- An append continues the old offsets ({"after":"upgrade"} is 19 bytes).
SELECT pg_temp.check(
    pg_temp.pos(ds.append('json/orders', '{"after": "upgrade"}'::jsonb))
        = pg_temp.pos(h.next_offset) + 19,
    'an append to json/orders continues at its old tail')
FROM ds.head('json/orders') h;

-- A producer continues its sequence; a replay is a duplicate; a gap and an
-- old epoch are refused.
SELECT pg_temp.check(outcome = 'ok', 'p1 seq 10 after the old seq 9: ' || outcome)
FROM ds.try_append('text/log', convert_to(E'p1 10\n', 'UTF8'),
                   producer_id => 'p1', producer_epoch => 0, producer_seq => 10);
SELECT pg_temp.check(outcome = 'duplicate', 'replay of p1 seq 10: ' || outcome)
FROM ds.try_append('text/log', convert_to(E'p1 10\n', 'UTF8'),
                   producer_id => 'p1', producer_epoch => 0, producer_seq => 10);
SELECT pg_temp.check(outcome = 'duplicate', 'replay of p1 seq 4 (before the upgrade): ' || outcome)
FROM ds.try_append('text/log', convert_to(E'p1 4\n', 'UTF8'),
                   producer_id => 'p1', producer_epoch => 0, producer_seq => 4);
SELECT pg_temp.check(outcome = 'seq_gap', 'p1 seq 12: ' || outcome)
FROM ds.try_append('text/log', convert_to(E'p1 12\n', 'UTF8'),
                   producer_id => 'p1', producer_epoch => 0, producer_seq => 12);
SELECT pg_temp.check(outcome = 'stale_epoch', 'p2 epoch 2 after epoch 3: ' || outcome)
FROM ds.try_append('text/log', convert_to(E'p2\n', 'UTF8'),
                   producer_id => 'p2', producer_epoch => 2, producer_seq => 0);
SELECT pg_temp.check(outcome = 'stream_seq_conflict', 'Stream-Seq 000009 after 000010: ' || outcome)
FROM ds.try_append('text/log', convert_to(E'seq\n', 'UTF8'), stream_seq => '000009');

-- Closed streams stay closed; the closing producer's retry is a duplicate.
SELECT pg_temp.check(outcome = 'duplicate', 'retry of the closing request: ' || outcome)
FROM ds.try_append('closed/producer', convert_to('{"bye": 1}', 'UTF8'),
                   producer_id => 'closer', producer_epoch => 1, producer_seq => 0, close => true);
SELECT pg_temp.check(outcome = 'stream_closed', 'append to closed/plain: ' || outcome)
FROM ds.try_append('closed/plain', convert_to(E'more\n', 'UTF8'));

-- A new fork of an old stream reads the source's bytes up to the fork point.
SELECT created FROM ds.fork('json/orders-late-fork', 'json/orders',
    fork_offset => (SELECT max(next_offset) FROM ds.read('json/orders', '-1', 30)));
SELECT pg_temp.check(
    pg_temp.all_data('json/orders-late-fork')
        = (SELECT string_agg(data, ''::bytea ORDER BY start_offset)
           FROM ds.read('json/orders', '-1', 30)),
    'a fork of json/orders reads its first 30 messages');
SELECT ds.append('json/orders-late-fork', '{"late": true}'::jsonb);

-- Rotation of old data (hot rows and segments written by the old release)
-- changes no byte.
CREATE TEMP TABLE before_rotation AS
    SELECT p, pg_temp.all_data(p) AS data
    FROM unnest(ARRAY['json/orders', 'bytes/blob', 'bytes/blob-sub', 'text/log']) p;
SET ds.segment_target_bytes = 256;
SET ds.hot_tail_bytes = 0;
SELECT count(*) FROM before_rotation, ds.rotate(p);
RESET ds.segment_target_bytes;
RESET ds.hot_tail_bytes;
SELECT pg_temp.check(pg_temp.all_data(p) = data, 'rotation kept the bytes of ' || p)
FROM before_rotation;
SELECT pg_temp.check(segments > 0, 'segments of ' || path)
FROM ds.stats() WHERE path IN ('json/orders', 'bytes/blob');

-- Quotas still count against the role that created the streams: a new
-- stream of the tenant adds to its usage, and gets a fresh id.
CREATE TEMP TABLE usage_before AS SELECT * FROM ds.quota_usage() WHERE role = 'ds_fill_tenant';
SELECT pg_temp.check(streams = 2 AND bytes > 0, format('usage of ds_fill_tenant: %s', u))
FROM usage_before u;
SET ROLE ds_fill_tenant;
SELECT created FROM ds.create('tenant/c', 'text/plain');
SELECT ds.append('tenant/c', E'12345');
RESET ROLE;
SELECT pg_temp.check(u.streams = b.streams + 1 AND u.bytes = b.bytes + 5,
                     format('usage after a new stream: %s, before: %s', u, b))
FROM ds.quota_usage() u, usage_before b WHERE u.role = 'ds_fill_tenant';
SELECT pg_temp.check(h.stream_id > (SELECT max(stream_id) FROM ds.streams WHERE path <> 'tenant/c'),
                     'tenant/c has a fresh stream id')
FROM ds.head('tenant/c') h;
SELECT pg_temp.check(outcome = 'quota_exceeded', 'an append over the stream quota: ' || outcome)
FROM ds.try_append('tenant/a', convert_to(repeat('q', 60000), 'UTF8'));

-- Deletes: a plain stream, and the last fork of a soft-deleted source, which
-- takes the source with it.
SELECT ds.delete('tenant/b');
SELECT pg_temp.check(NOT EXISTS (SELECT FROM ds.streams WHERE path = 'tenant/b'), 'tenant/b deleted');
SELECT ds.delete('deleted/src-fork');
SELECT pg_temp.check(NOT EXISTS (SELECT FROM ds.streams WHERE path IN ('deleted/src', 'deleted/src-fork')),
                     'deleting the last fork removed the soft-deleted source');

-- Retention on old data: streams made before it existed take a policy and a
-- trim; a read below the earliest offset is SD410; forks made then still
-- hold their source's data.
SELECT ds.set_retention('json/rotated', NULL, 0);
-- (ds.trim or the worker, whichever comes first.)
SELECT pg_temp.check(t.earliest_offset = h.next_offset,
                     format('json/rotated trimmed to its tail: %s', t))
FROM ds.trim('json/rotated') t, ds.head('json/rotated') h;
SELECT pg_temp.check(count(*) = 0, 'json/rotated reads nothing from -1')
FROM ds.read('json/rotated');
DO $$
BEGIN
    PERFORM * FROM ds.read('json/rotated', '0000000000000000_0000000000000000');
    RAISE EXCEPTION 'exercise failed: a read below the earliest offset of json/rotated worked';
EXCEPTION WHEN SQLSTATE 'SD410' THEN NULL;
END $$;
SELECT ds.set_retention('json/orders', NULL, 0);
SELECT pg_temp.check(earliest_offset = '0000000000000000_0000000000000000',
                     'json/orders keeps what its forks read: ' || earliest_offset)
FROM ds.trim('json/orders');
SELECT ds.reset_retention('json/orders');
