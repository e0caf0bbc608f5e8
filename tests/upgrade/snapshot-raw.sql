-- Every stored row of the extension's dumped tables (all but
-- ds.streams.last_access, which reads of TTL streams move), the stream id
-- sequence, and which role owns each stream (by name: OIDs differ between
-- clusters). Exact storage layout: segments, hot rows, producer timestamps.
-- Equal before and after a dump/restore, and across an upgrade while the
-- workers wait for ALTER EXTENSION. Run as a superuser.
\set ON_ERROR_STOP 1
SET timezone = 'UTC';

SELECT line FROM (
    SELECT 'stream ' || ROW(stream_id, path, content_type, ttl_seconds, expires_at, created_at,
                            tail_pos, closed, closed_by_producer, closed_by_epoch, closed_by_seq,
                            last_stream_seq, fork_source, fork_source_path, fork_offset,
                            fork_sub_offset, fork_pos, fork_count, soft_deleted, max_bytes)::text
           || ' owner=' || CASE
                WHEN owner_role IS NULL THEN '(none)'
                ELSE coalesce((SELECT quote_ident(rolname) FROM pg_roles
                               WHERE oid = owner_role::oid),
                              '(dangling oid ' || owner_role::oid || ')')
              END AS line
    FROM ds.streams
    UNION ALL
    SELECT 'message ' || ROW(stream_id, start_pos, length(data), md5(data))::text FROM ds.messages
    UNION ALL
    SELECT 'segment ' || ROW(stream_id, start_pos, end_pos, message_count, length(data), md5(data),
                             created_at)::text FROM ds.segments
    UNION ALL
    SELECT 'producer ' || ROW(stream_id, producer_id, epoch, last_seq, updated_at)::text
    FROM ds.producers
    UNION ALL
    SELECT 'path_grant ' || ROW(grantee::text, pattern, privileges, granted_by::text,
                                granted_at)::text FROM ds.path_grants
    UNION ALL
    SELECT 'role_quota ' || ROW(role::text, max_bytes, max_streams)::text FROM ds.role_quotas
    UNION ALL
    SELECT 'stream_id_sequence last_value=' || last_value || ' is_called=' || is_called
    FROM ds.streams_stream_id_seq
) facts
ORDER BY line COLLATE "C";
