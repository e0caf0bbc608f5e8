-- Fills a database with streams of every kind, through the SQL API of the
-- release being tested (every release since 0.1.0 has these functions).
-- Run as a superuser by scripts/upgrade-test.sh and scripts/backup-test.sh;
-- snapshot-content.sql lists the paths made here. Streams with a TTL of 1 s
-- expire at the end (the caller keeps the maintenance worker idle first, so
-- their rows stay until a later pass).
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

-- Roles are cluster-wide: made once, reused by every database of the cluster.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ds_fill_tenant') THEN
        CREATE ROLE ds_fill_tenant NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ds_fill_reader') THEN
        CREATE ROLE ds_fill_reader NOLOGIN;
    END IF;
END $$;
GRANT USAGE ON SCHEMA ds TO ds_fill_tenant, ds_fill_reader;
GRANT EXECUTE ON FUNCTION ds.create(text, text, bigint, timestamptz, boolean, bytea),
                          ds.append(text, text), ds.append(text, bytea),
                          ds.read(text, text, bigint), ds.head(text) TO ds_fill_tenant;
GRANT EXECUTE ON FUNCTION ds.read(text, text, bigint), ds.head(text) TO ds_fill_reader;

-- Path grants and quotas.
SELECT ds.grant('ds_fill_tenant', 'tenant/**', 'read, append, create');
SELECT ds.grant('ds_fill_reader', 'tenant/*', 'read');
SELECT ds.grant('ds_fill_reader', 'json/**', 'read');
SELECT ds.set_quota('ds_fill_tenant', max_bytes => 100000, max_streams => 10);

-- Streams created by the tenant count against its quota.
SET ROLE ds_fill_tenant;
SELECT created FROM ds.create('tenant/a', 'text/plain');
SELECT ds.append('tenant/a', format(E'tenant line %s\n', i)) FROM generate_series(1, 30) i;
SELECT created FROM ds.create('tenant/b', 'application/octet-stream');
SELECT ds.append('tenant/b', decode(repeat(md5(i::text), 4), 'hex')) FROM generate_series(1, 10) i;
RESET ROLE;
SELECT ds.set_stream_quota('tenant/a', 50000);

-- JSON: an initial body, then single messages and flattened arrays.
SELECT created FROM ds.create('json/orders', 'application/json', body => '[{"init": true}]');
SELECT ds.append('json/orders', jsonb_build_object('id', i, 'note', repeat('n', i % 17)))
FROM generate_series(1, 40) i;
SELECT ds.append('json/orders', '[{"batch": 1}, {"batch": 2}, "three", 4, null]'::jsonb);

-- Forks: at an offset, with a JSON sub-offset (messages), a fork of a fork.
SELECT created FROM ds.fork('json/orders-fork', 'json/orders',
    fork_offset => (SELECT max(next_offset) FROM ds.read('json/orders', '-1', 20)));
SELECT ds.append('json/orders-fork', jsonb_build_object('fork', i)) FROM generate_series(1, 5) i;
SELECT created FROM ds.fork('json/orders-sub', 'json/orders',
    fork_offset => (SELECT max(next_offset) FROM ds.read('json/orders', '-1', 10)),
    fork_sub_offset => 3);
SELECT ds.append('json/orders-sub', '{"sub": true}'::jsonb);
SELECT created FROM ds.fork('json/orders-fork2', 'json/orders-fork');
SELECT ds.append('json/orders-fork2', '{"depth": 2}'::jsonb);

-- Bytes (every byte value), partly rotated into segments, then a fork at a
-- byte sub-offset that reaches into a segment.
SELECT created FROM ds.create('bytes/blob', 'application/octet-stream');
SELECT ds.append('bytes/blob', decode(md5(i::text) || '00ff' || lpad(to_hex(i), 2, '0'), 'hex'))
FROM generate_series(0, 255) i;
SET ds.segment_target_bytes = 256;
SET ds.hot_tail_bytes = 0;
SELECT segments > 0 AS rotated FROM ds.rotate('bytes/blob');
RESET ds.segment_target_bytes;
RESET ds.hot_tail_bytes;
SELECT ds.append('bytes/blob', decode(repeat('ab', 100 + i), 'hex')) FROM generate_series(1, 5) i;
SELECT created FROM ds.fork('bytes/blob-sub', 'bytes/blob',
    fork_offset => (SELECT max(next_offset) FROM ds.read('bytes/blob', '-1', 5)),
    fork_sub_offset => 7);
SELECT ds.append('bytes/blob-sub', '\xdeadbeef'::bytea);

-- JSON fully rotated, then a hot tail.
SELECT created FROM ds.create('json/rotated', 'application/json');
SELECT ds.append('json/rotated', jsonb_build_object('n', i, 'text', repeat('r', 30)))
FROM generate_series(1, 200) i;
SET ds.segment_target_bytes = 1024;
SET ds.hot_tail_bytes = 0;
SELECT segments > 0 AS rotated FROM ds.rotate('json/rotated');
RESET ds.segment_target_bytes;
RESET ds.hot_tail_bytes;
SELECT ds.append('json/rotated', jsonb_build_object('n', i)) FROM generate_series(201, 205) i;

-- Idempotent producers and Stream-Seq.
SELECT created FROM ds.create('text/log', 'text/plain');
SELECT outcome FROM generate_series(0, 9) i,
    LATERAL ds.try_append('text/log', convert_to(format(E'p1 %s\n', i), 'UTF8'),
                          producer_id => 'p1', producer_epoch => 0, producer_seq => i);
SELECT outcome FROM generate_series(0, 4) i,
    LATERAL ds.try_append('text/log', convert_to(format(E'p2 %s\n', i), 'UTF8'),
                          producer_id => 'p2', producer_epoch => 3, producer_seq => i);
SELECT outcome FROM ds.try_append('text/log', convert_to(E'seq\n', 'UTF8'), stream_seq => '000010');

-- TTL and expiry: a sliding TTL, a fixed expiry, and streams that expire
-- now: one alone, one whose fork (given its own expiry) outlives it.
SELECT created FROM ds.create('ttl/sliding', 'text/plain', ttl_seconds => 864000);
SELECT ds.append('ttl/sliding', E'sliding\n');
SELECT created FROM ds.create('ttl/until', 'text/plain', expires_at => '2090-01-01 00:00:00Z');
SELECT ds.append('ttl/until', E'until 2090\n');
SELECT created FROM ds.create('expired/alone', 'text/plain', ttl_seconds => 1);
SELECT ds.append('expired/alone', E'soon gone\n');
SELECT created FROM ds.create('expired/src', 'text/plain', ttl_seconds => 1);
SELECT ds.append('expired/src', format(E'source %s\n', i)) FROM generate_series(1, 5) i;
SELECT created FROM ds.fork('expired/src-fork', 'expired/src',
    expires_at => '2090-01-01 00:00:00Z');
SELECT ds.append('expired/src-fork', E'fork of an expiring source\n');

-- Closed streams: plainly, and by a producer (whose retry is a duplicate).
SELECT created FROM ds.create('closed/plain', 'text/plain');
SELECT ds.append('closed/plain', E'last words\n');
SELECT ds.close('closed/plain');
SELECT created FROM ds.create('closed/producer', 'application/json');
SELECT outcome FROM ds.try_append('closed/producer', convert_to('{"bye": 1}', 'UTF8'),
    producer_id => 'closer', producer_epoch => 1, producer_seq => 0, close => true);

-- Deleted: a source soft-deleted while its fork reads it, and one gone.
SELECT created FROM ds.create('deleted/src', 'text/plain');
SELECT ds.append('deleted/src', format(E'kept for the fork %s\n', i)) FROM generate_series(1, 4) i;
SELECT created FROM ds.fork('deleted/src-fork', 'deleted/src');
SELECT ds.append('deleted/src-fork', E'fork line\n');
SELECT ds.delete('deleted/src');
SELECT created FROM ds.create('deleted/gone', 'text/plain');
SELECT ds.append('deleted/gone', E'x\n');
SELECT ds.delete('deleted/gone');

-- An empty stream.
SELECT created FROM ds.create('empty/none', 'application/octet-stream');

-- Let the 1-second TTLs run out.
SELECT pg_sleep(1.5);
