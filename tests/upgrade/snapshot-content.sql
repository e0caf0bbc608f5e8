-- What every stream fill.sql made looks like through the SQL API: head,
-- every row of a full read (offsets + md5), all bytes (md5), the first
-- read_chunk, producer states, grants and quota usage. One line per fact,
-- sorted, so two snapshots compare with diff. Independent of storage layout
-- (rotation, hot rows), so the worker may run meanwhile. Run as a superuser.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
SET timezone = 'UTC';

CREATE FUNCTION pg_temp.ds_content(p text) RETURNS SETOF text LANGUAGE plpgsql AS $f$
DECLARE
    h record;
    r record;
    c record;
    off text := '-1';
    n bigint := 0;
    got int;
    rows_seen text[] := '{}';
    everything bytea := '';
BEGIN
    BEGIN
        SELECT * INTO STRICT h FROM ds.head(p);
    EXCEPTION WHEN OTHERS THEN
        RETURN NEXT format('%s: head raises %s', p, SQLSTATE);
        RETURN;
    END;
    RETURN NEXT format('%s: head id=%s type=%s next=%s closed=%s ttl=%s expires=%s',
                       p, h.stream_id, h.content_type, h.next_offset, h.closed,
                       h.ttl_seconds, h.expires_at);
    -- Page through the whole stream, as a reader would.
    LOOP
        got := 0;
        FOR r IN SELECT * FROM ds.read(p, off, 50) LOOP
            got := got + 1;
            n := n + 1;
            rows_seen := rows_seen || format('%s-%s:%s', r.start_offset, r.next_offset, md5(r.data));
            everything := everything || r.data;
            off := r.next_offset;
        END LOOP;
        EXIT WHEN got = 0 OR off = h.next_offset;
    END LOOP;
    -- No torn tail: a full read ends exactly at the tail ds.head reports.
    RETURN NEXT format('%s: read rows=%s rows_md5=%s bytes=%s data_md5=%s ends_at_tail=%s',
                       p, n, md5(array_to_string(rows_seen, ',')), length(everything),
                       md5(everything), n = 0 OR off = h.next_offset);
    SELECT * INTO STRICT c FROM ds.read_chunk(p, '-1', 4096);
    RETURN NEXT format('%s: chunk md5=%s next=%s up_to_date=%s closed=%s',
                       p, md5(c.body), c.next_offset, c.up_to_date, c.closed);
END
$f$;

SELECT line FROM (
    SELECT pg_temp.ds_content(p) AS line
    FROM unnest(ARRAY[
        'tenant/a', 'tenant/b', 'json/orders', 'json/orders-fork', 'json/orders-sub',
        'json/orders-fork2', 'bytes/blob', 'bytes/blob-sub', 'json/rotated', 'text/log',
        'ttl/sliding', 'ttl/until', 'expired/alone', 'expired/src', 'expired/src-fork',
        'closed/plain', 'closed/producer', 'deleted/src', 'deleted/src-fork', 'deleted/gone',
        'empty/none', 'pitr/before-lsn', 'pitr/after-lsn']) p
    UNION ALL
    SELECT format('producer %s %s epoch=%s last_seq=%s', s.path, p.producer_id, p.epoch, p.last_seq)
    FROM ds.producers p JOIN ds.streams s USING (stream_id)
    WHERE s.path IS NOT NULL
    UNION ALL
    SELECT format('grant %s %s %s by %s', grantee, pattern, privileges, granted_by)
    FROM ds.grants
    UNION ALL
    SELECT format('quota %s max_bytes=%s max_streams=%s bytes=%s streams=%s',
                  role, max_bytes, max_streams, bytes, streams)
    FROM ds.quota_usage()
) facts
ORDER BY line COLLATE "C";
