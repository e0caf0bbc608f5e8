-- Forks (§4.2): fork point from offset and sub-offset, inheritance of
-- content type and TTL, idempotency, soft delete of a source with forks and
-- the cascade that removes it with its last fork. Paths under forks/.
SELECT created FROM ds.create('forks/src', 'text/plain', ttl_seconds => 600);
SELECT ds.append('forks/src', 'aaaa'::text);
SELECT ds.append('forks/src', 'bbbb'::text);
SELECT created FROM ds.create('forks/json', 'application/json', body => '[1,2,3]');

-- At the tail (default), at an offset, and a sub-offset of bytes past it.
SELECT * FROM ds.fork('forks/at-tail', 'forks/src');
SELECT * FROM ds.fork('forks/at-4', 'forks/src', '0000000000000000_0000000000000004');
SELECT * FROM ds.fork('forks/at-4+2', 'forks/src', '0000000000000000_0000000000000004', 2);
SELECT content_type, next_offset, ttl_seconds FROM ds.head('forks/at-4+2');
SELECT start_offset, next_offset, convert_from(data, 'UTF8') FROM ds.read('forks/at-4+2');
-- The fork's own appends follow the inherited bytes; the source is untouched.
SELECT ds.append('forks/at-4+2', 'cc'::text);
SELECT convert_from(body, 'UTF8'), next_offset FROM ds.read_chunk('forks/at-4+2');
SELECT convert_from(body, 'UTF8'), next_offset FROM ds.read_chunk('forks/src');
-- JSON: the sub-offset counts messages.
SELECT * FROM ds.fork('forks/json-1+1', 'forks/json', '0000000000000000_0000000000000001', 1);
SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('forks/json-1+1');
-- Exactly up to the next boundary is fine; past it, or past the tail, is not.
SELECT next_offset FROM ds.fork('forks/at-0+4', 'forks/src', '0000000000000000_0000000000000000', 4);
SELECT attempt($$ SELECT ds.fork('forks/bad', 'forks/src', '0000000000000000_0000000000000000', 5) $$);
SELECT attempt($$ SELECT ds.fork('forks/bad', 'forks/json', NULL, 1) $$);
SELECT attempt($$ SELECT ds.fork('forks/bad', 'forks/src', '0000000000000000_0000000000000099') $$);
SELECT attempt($$ SELECT ds.fork('forks/bad', 'forks/src', fork_sub_offset => -1) $$);
SELECT attempt($$ SELECT ds.fork('forks/bad', 'forks/src', content_type => 'application/json') $$);
SELECT attempt($$ SELECT ds.fork('forks/bad', 'forks/missing') $$);
-- Idempotent: same source, offset and sub-offset; anything else conflicts.
SELECT created FROM ds.fork('forks/at-4', 'forks/src', '0000000000000000_0000000000000004');
SELECT created FROM ds.fork('forks/at-4', 'forks/src');
SELECT attempt($$ SELECT ds.fork('forks/at-4', 'forks/src', '0000000000000000_0000000000000000') $$);
SELECT attempt($$ SELECT ds.fork('forks/at-4', 'forks/json') $$);
SELECT attempt($$ SELECT ds.create('forks/at-4', 'text/plain', ttl_seconds => 600) $$);
-- Its own TTL instead of the source's; a closed source forks open.
SELECT ds.close('forks/src');
SELECT created, closed FROM ds.fork('forks/own-ttl', 'forks/src', ttl_seconds => 5);
SELECT next_offset, closed, ttl_seconds FROM ds.head('forks/own-ttl');

-- Soft delete: the source is gone for direct use (55006), its path blocked
-- (42710), but its forks read on. A fork of a fork reads through both.
SELECT next_offset FROM ds.fork('forks/grandchild', 'forks/at-4+2');
SELECT ds.delete('forks/src');
SELECT attempt($$ SELECT * FROM ds.head('forks/src') $$);
SELECT attempt($$ SELECT * FROM ds.read('forks/src') $$);
SELECT attempt($$ SELECT ds.delete('forks/src') $$);
SELECT outcome FROM ds.try_append('forks/src', 'x');
SELECT attempt($$ SELECT ds.create('forks/src', 'text/plain', ttl_seconds => 600) $$);
SELECT attempt($$ SELECT ds.fork('forks/bad', 'forks/src') $$);
SELECT convert_from(body, 'UTF8'), next_offset FROM ds.read_chunk('forks/grandchild');
SELECT path, fork_count, soft_deleted FROM ds.streams WHERE path LIKE 'forks/%' ORDER BY path;
-- The cascade: deleting the last fork removes the soft-deleted source.
SELECT ds.delete(path) FROM ds.streams
 WHERE path LIKE 'forks/%' AND path NOT IN ('forks/src', 'forks/at-4+2') ORDER BY path;
SELECT path, fork_count, soft_deleted FROM ds.streams WHERE path LIKE 'forks/%' ORDER BY path;
SELECT ds.delete('forks/at-4+2');
SELECT path FROM ds.streams WHERE path LIKE 'forks/%';
SELECT created, next_offset FROM ds.create('forks/src', 'text/plain');
SELECT ds.delete('forks/src');
