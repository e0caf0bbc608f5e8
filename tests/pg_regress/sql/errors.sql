-- Every kind of bad input gets a specific SQLSTATE and a message saying what
-- to fix. `attempt` (0_helpers.sql) runs a statement and shows "SQLSTATE: message".
SELECT attempt($$ SELECT ds.create('') $$);
SELECT attempt($$ SELECT ds.create(E'bad\tpath') $$);
SELECT attempt($$ SELECT ds.create(repeat('p', 1025)) $$);
SELECT attempt($$ SELECT ds.create('e', 'json') $$);
SELECT attempt($$ SELECT ds.create('e', ttl_seconds => -5) $$);
SELECT attempt($$ SELECT ds.create('e', ttl_seconds => 5, expires_at => '2030-01-01Z') $$);
SELECT attempt($$ SELECT ds.create('e', 'application/json', body => '{"unterminated":') $$);
SELECT attempt($$ SELECT ds.create('e', 'text/plain', body => '\xc3'::bytea) $$);
SELECT attempt($$ SELECT ds.create('e', 'application/json') $$);
SELECT attempt($$ SELECT ds.append('e', '[]'::jsonb) $$);
SELECT attempt($$ SELECT ds.append('e', ''::text) $$);
SELECT attempt($$ SELECT ds.append('e', 'not json'::text) $$);
SELECT attempt($$ SELECT * FROM ds.read('e', 'not-an-offset') $$);
SELECT attempt($$ SELECT * FROM ds.read('nope') $$);
SELECT attempt($$ SELECT ds.append('nope', 'x'::text) $$);
SET ds.max_append_bytes = 8;
SELECT attempt($$ SELECT ds.append('e', '"0123456789"'::text) $$);
RESET ds.max_append_bytes;
-- Hardening limits: TTL and expiry bounds, JSON depth, messages per call.
SELECT attempt($$ SELECT ds.create('e', ttl_seconds => 3155760001) $$);
SELECT attempt($$ SELECT ds.create('e', expires_at => 'infinity') $$);
SET ds.json_max_depth = 2;
SELECT attempt($$ SELECT ds.append('e', '[[[1]]]'::text) $$);
SELECT attempt($$ SELECT ds.append('e', '{"a":{"b":1}}'::text) $$);
RESET ds.json_max_depth;
SET ds.max_messages_per_append = 2;
SELECT attempt($$ SELECT ds.append('e', '[1,2,3]'::text) $$);
SELECT attempt($$ SELECT ds.fork('ef', 'e', '0000000000000000_0000000000000000', 3) $$);
RESET ds.max_messages_per_append;
SELECT attempt($$ SELECT ds.create('e', 'text/plain') $$);
-- try_append reports the same conditions as data, never as an error.
SELECT outcome, sqlstate, detail FROM ds.try_append('e', '1', producer_id => 'p');
SELECT outcome, sqlstate, detail FROM ds.try_append('e', '[]', 'application/json');
SELECT outcome, next_offset FROM ds.try_append('e', '1', 'text/plain');
SELECT outcome FROM ds.try_append('nope', '1');
-- Nothing was written by any of the failures above.
SELECT path, content_type, tail_pos FROM ds.streams ORDER BY path;
-- A statement's own errors keep their position and context: nothing of this
-- library sits between Postgres and utility commands (no ProcessUtility hook).
CREATE TABLE bad_type_here (a no_such_type);
