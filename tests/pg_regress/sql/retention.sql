-- Retention (README, "Retention"): per-stream policies by bytes and by age,
-- trims at message boundaries, SD410 below the earliest retained offset,
-- forks keeping what they inherited, quotas released. Paths under retention/.

-- The README's example, as printed.
SELECT created FROM ds.create('retention/events', 'application/json');
SELECT ds.append('retention/events', '[{"n":1},{"n":2},{"n":3},{"n":4},{"n":5}]'::text);
-- Keep at least the newest 14 bytes (two messages here); drop data older than 7 days.
SELECT ds.set_retention('retention/events', interval '7 days', 14);
SELECT * FROM ds.retention('retention/events');
-- The maintenance worker applies policies on every pass; ds.trim does it now.
SELECT * FROM ds.trim('retention/events');
SELECT next_offset, earliest_offset FROM ds.head('retention/events');
-- A read from -1 starts at the earliest retained offset.
SELECT start_offset, convert_from(data, 'UTF8') FROM ds.read('retention/events');
-- At the boundary and after it: the retained messages.
SELECT start_offset, convert_from(data, 'UTF8')
  FROM ds.read('retention/events', '0000000000000000_0000000000000021');
SELECT start_offset, convert_from(data, 'UTF8')
  FROM ds.read('retention/events', '0000000000000000_0000000000000028');
-- Before it: SQLSTATE SD410, saying where to read from.
SELECT attempt($$ SELECT * FROM ds.read('retention/events', '0000000000000000_0000000000000014') $$);
SELECT attempt($$ SELECT * FROM ds.read_chunk('retention/events', '0000000000000000_0000000000000000') $$);
-- A trim with nothing to drop changes nothing.
SELECT * FROM ds.trim('retention/events');
-- Back to the server defaults (off unless ds.retention_max_age / _max_bytes are set).
SELECT ds.reset_retention('retention/events');
SELECT max_age, max_bytes, source FROM ds.retention('retention/events');

-- Server defaults apply to streams without a policy of their own.
SET ds.retention_max_bytes = '1kB';
SELECT created FROM ds.create('retention/defaulted', 'text/plain');
SELECT ds.append('retention/defaulted', repeat('x', 600)) FROM generate_series(1, 3);
SELECT max_age, max_bytes, source FROM ds.retention('retention/defaulted');
SELECT segments, rows, bytes, earliest_offset FROM ds.trim('retention/defaulted');
-- A stream's own policy wins, (NULL, NULL) keeping everything.
SELECT ds.set_retention('retention/defaulted', NULL, NULL);
SELECT ds.append('retention/defaulted', repeat('y', 600));
SELECT segments, rows, bytes FROM ds.trim('retention/defaulted');
RESET ds.retention_max_bytes;

-- By age: only rotated segments carry a time (their rotation time); hot
-- rows are never dropped by age. (The test backdates segments.)
SELECT created FROM ds.create('retention/aged', 'text/plain');
SELECT ds.append('retention/aged', 'a' || i || ';') FROM generate_series(1, 8) AS i;
SET ds.hot_tail_bytes = 6;
SET ds.segment_target_bytes = 8;
SELECT * FROM ds.rotate('retention/aged');
RESET ds.hot_tail_bytes;
RESET ds.segment_target_bytes;
SELECT ds.set_retention('retention/aged', interval '1 day', NULL);
SELECT * FROM ds.trim('retention/aged');   -- the segments are new: nothing dropped
UPDATE ds.segments SET created_at = now() - interval '2 days'
 WHERE stream_id = (SELECT stream_id FROM ds.head('retention/aged'))
   AND start_pos < 9;
SELECT * FROM ds.trim('retention/aged');   -- the old leading segment only
SELECT convert_from(body, 'UTF8'), next_offset FROM ds.read_chunk('retention/aged');
SELECT path, hot_rows, segments, segment_bytes FROM ds.stats() WHERE path = 'retention/aged';

-- Forks over a trimmed source: a fork inherits the source's earliest
-- retained offset, keeps what it inherited readable while it lives, and
-- cannot start below what the source retains.
SELECT created FROM ds.create('retention/src', 'text/plain');
SELECT ds.append('retention/src', 'm' || i || ';') FROM generate_series(1, 6) AS i;
SELECT ds.set_retention('retention/src', NULL, 6);
SELECT earliest_offset FROM ds.trim('retention/src');
SELECT attempt($$ SELECT ds.fork('retention/too-early', 'retention/src', '0000000000000000_0000000000000003') $$);
SELECT next_offset FROM ds.fork('retention/fork', 'retention/src', '0000000000000000_0000000000000015');
SELECT earliest_offset FROM ds.head('retention/fork');
SELECT ds.append('retention/src', 'm7;');
SELECT ds.set_retention('retention/src', NULL, 0);
-- The source keeps [12, 15) for the fork: nothing can go.
SELECT earliest_offset FROM ds.trim('retention/src');
SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('retention/fork');
-- The fork's own policy drops what it inherited once it cuts past its fork
-- point; then the source is free to go on.
SELECT ds.append('retention/fork', 'f1;');
SELECT ds.set_retention('retention/fork', NULL, 3);
SELECT earliest_offset FROM ds.trim('retention/fork');
SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('retention/fork');
SELECT earliest_offset FROM ds.trim('retention/src');
-- A fork of a fork pins the first source through the middle one.
SELECT created FROM ds.create('retention/root', 'text/plain');
SELECT ds.append('retention/root', 'r' || i || ';') FROM generate_series(1, 4) AS i;
SELECT next_offset FROM ds.fork('retention/mid', 'retention/root');
SELECT next_offset FROM ds.fork('retention/leaf', 'retention/mid');
SELECT ds.delete('retention/mid');   -- soft-deleted: the leaf still reads through it
SELECT ds.set_retention('retention/root', NULL, 0);
SELECT earliest_offset FROM ds.trim('retention/root');
SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('retention/leaf');
SELECT ds.delete('retention/leaf');
SELECT earliest_offset FROM ds.trim('retention/root');

-- Trimming releases quota: a stream at its quota takes appends again.
SELECT created FROM ds.create('retention/quota', 'text/plain');
SELECT ds.set_stream_quota('retention/quota', 8);
SELECT ds.append('retention/quota', 'abcd');
SELECT ds.append('retention/quota', 'efgh');
SELECT attempt($$ SELECT ds.append('retention/quota', 'ijkl') $$);
SELECT ds.set_retention('retention/quota', NULL, 4);
SELECT bytes FROM ds.trim('retention/quota');
SELECT ds.append('retention/quota', 'ijkl');

-- Bad input: a specific SQLSTATE each.
SELECT attempt($$ SELECT ds.set_retention('retention/events', interval '-1 day', NULL) $$);
SELECT attempt($$ SELECT ds.set_retention('retention/events', interval '10 ms', NULL) $$);
SELECT attempt($$ SELECT ds.set_retention('retention/events', interval '200 years', NULL) $$);
SELECT attempt($$ SELECT ds.set_retention('retention/events', NULL, -1) $$);
SELECT attempt($$ SELECT ds.set_retention('retention/missing', NULL, 1) $$);
SELECT attempt($$ SELECT ds.set_retention('', NULL, 1) $$);
SELECT attempt($$ SELECT ds.trim('retention/missing') $$);
SELECT attempt($$ SELECT ds.retention('retention/missing') $$);
SELECT attempt($$ SELECT ds.reset_retention('retention/missing') $$);
SELECT attempt($$ SELECT ds.set_retention(NULL, NULL, 1) $$);
-- Setting a policy needs the admin privilege on the path; reading it, read.
CREATE ROLE retention_reader NOLOGIN;
GRANT USAGE ON SCHEMA ds TO retention_reader;
GRANT EXECUTE ON FUNCTION ds.set_retention(text, interval, bigint), ds.trim(text),
                          ds.retention(text), ds.reset_retention(text) TO retention_reader;
SELECT ds.grant('retention_reader', 'retention/**', 'read');
SET ROLE retention_reader;
SELECT attempt($$ SELECT ds.set_retention('retention/events', NULL, 1) $$);
SELECT attempt($$ SELECT ds.reset_retention('retention/events') $$);
SELECT attempt($$ SELECT ds.trim('retention/events') $$);
SELECT attempt($$ SELECT ds.set_retention('elsewhere/x', NULL, 1) $$);
SELECT max_age, max_bytes, source FROM ds.retention('retention/events');
RESET ROLE;
SELECT ds.revoke('retention_reader', 'retention/**');
REVOKE ALL ON FUNCTION ds.set_retention(text, interval, bigint), ds.trim(text),
                       ds.retention(text), ds.reset_retention(text) FROM retention_reader;
REVOKE USAGE ON SCHEMA ds FROM retention_reader;
DROP ROLE retention_reader;
-- Deleting a stream deletes its policy.
SELECT ds.delete('retention/events');
SELECT count(*) FROM ds.retention r
 WHERE NOT EXISTS (SELECT FROM ds.streams s WHERE s.stream_id = r.stream_id);
