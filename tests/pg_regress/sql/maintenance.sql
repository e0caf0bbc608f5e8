-- Maintenance (SQL side of the worker): ds.rotate packs the hot log into
-- segments without changing a byte or offset read back; ds.stats shows it;
-- ds.touch restarts sliding TTLs; quotas refuse what would exceed them.
-- Paths under maintenance/.
SELECT created FROM ds.create('maintenance/log', 'text/plain', ttl_seconds => 3600);
SELECT ds.append('maintenance/log', 'm' || i || ';') FROM generate_series(1, 8) AS i;
SELECT path, next_offset, hot_rows, hot_bytes, segments, segment_bytes, fork_count, soft_deleted
  FROM ds.stats() WHERE path LIKE 'maintenance/%';
-- Keep 6 bytes hot, pack the rest into segments of about 8 bytes.
SET ds.hot_tail_bytes = 6;
SET ds.segment_target_bytes = 8;
SELECT * FROM ds.rotate('maintenance/log');
SELECT * FROM ds.rotate('maintenance/log');   -- nothing left to pack
RESET ds.hot_tail_bytes;
RESET ds.segment_target_bytes;
SELECT path, next_offset, hot_rows, hot_bytes, segments, segment_bytes
  FROM ds.stats() WHERE path LIKE 'maintenance/%';
SELECT start_offset, next_offset, convert_from(data, 'UTF8') FROM ds.read('maintenance/log');
SELECT start_offset, convert_from(data, 'UTF8')
  FROM ds.read('maintenance/log', '0000000000000000_0000000000000010');
SELECT convert_from(body, 'UTF8'), next_offset FROM ds.read_chunk('maintenance/log', '-1', 5);
-- A fork reads packed source data the same way.
SELECT next_offset FROM ds.fork('maintenance/fork', 'maintenance/log', '0000000000000000_0000000000000009', 2);
SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('maintenance/fork');
SELECT * FROM ds.rotate('maintenance/missing');

-- ds.touch: streams with a TTL, skipping the missing and those without.
SELECT created FROM ds.create('maintenance/no-ttl', 'text/plain');
SELECT ds.touch(ARRAY['maintenance/log', 'maintenance/no-ttl', 'maintenance/missing']);
SELECT ds.touch(NULL);

-- A stream quota: the append that would pass it is refused, as data.
SELECT ds.set_stream_quota('maintenance/no-ttl', 10);
SELECT outcome, next_offset, sqlstate FROM ds.try_append('maintenance/no-ttl', '0123456789');
SELECT outcome, next_offset, sqlstate FROM ds.try_append('maintenance/no-ttl', 'x');
SELECT ds.set_stream_quota('maintenance/no-ttl', NULL);
SELECT outcome, next_offset FROM ds.try_append('maintenance/no-ttl', 'x');

SELECT ds.delete('maintenance/fork');
SELECT ds.delete('maintenance/log');
SELECT ds.delete('maintenance/no-ttl');
