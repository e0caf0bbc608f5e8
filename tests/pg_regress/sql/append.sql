-- Appending (§5.2, §5.3, §9.1): the ds.append overloads, ds.try_append's
-- outcomes, Stream-Seq, closing, and ds.try_append_batch. Paths under append/.
SELECT created FROM ds.create('append/bytes');
SELECT created FROM ds.create('append/text', 'text/plain');
SELECT created FROM ds.create('append/json', 'application/json');

-- The overloads: bytea and text on any stream; jsonb on JSON streams only.
SELECT ds.append('append/bytes', '\x000102'::bytea);
SELECT ds.append('append/bytes', 'abc'::text);
SELECT attempt($$ SELECT ds.append('append/bytes', '{"a":1}'::jsonb) $$);
SELECT ds.append('append/text', 'line;'::text);
SELECT attempt($$ SELECT ds.append('append/text', '\xff'::bytea) $$);
-- JSON: one message per value; a top-level array is flattened once.
SELECT ds.append('append/json', '{"a":1}'::jsonb);
SELECT ds.append('append/json', '[1, [2, 3], {"b": [4]}]'::text);
SELECT ds.append('append/json', convert_to('"s"', 'UTF8'));
SELECT attempt($$ SELECT ds.append('append/json', '[]'::jsonb) $$);
SELECT attempt($$ SELECT ds.append('append/json', 'nope'::text) $$);
SELECT start_offset, next_offset, convert_from(data, 'UTF8') FROM ds.read('append/json');

-- try_append: every outcome as data.
SELECT outcome, next_offset, closed, sqlstate FROM ds.try_append('append/text', 'a;');
SELECT outcome, next_offset, closed FROM ds.try_append('append/text', 'b;', 'text/plain');
SELECT outcome, next_offset, closed FROM ds.try_append('append/text', 'c;', 'application/json');
SELECT outcome, next_offset, closed FROM ds.try_append('append/missing', 'x');
SELECT outcome, sqlstate FROM ds.try_append('append/text', '');
SELECT outcome, sqlstate FROM ds.try_append('append/json', 'nope');

-- Stream-Seq: strictly increasing, byte-wise ("10" < "9").
SELECT outcome, next_offset FROM ds.try_append('append/bytes', 'x', stream_seq => '10');
SELECT outcome, next_offset FROM ds.try_append('append/bytes', 'x', stream_seq => '9');
SELECT outcome, next_offset FROM ds.try_append('append/bytes', 'x', stream_seq => '9');
SELECT outcome, next_offset FROM ds.try_append('append/bytes', 'x', stream_seq => '10');
SELECT outcome, next_offset FROM ds.try_append('append/bytes', 'x');

-- Close: with a final append, then close-only is idempotent; a body is
-- refused with the final offset (precedence: closed before content type).
SELECT outcome, next_offset, closed FROM ds.try_append('append/text', 'end;', close => true);
-- (A content type is not checked on a close-only request: empty body.)
SELECT outcome, next_offset, closed FROM ds.try_append('append/text', '', 'application/json', close => true);
SELECT outcome, next_offset, closed FROM ds.try_append('append/text', 'more;', 'application/json');
SELECT ds.close('append/text');
SELECT attempt($$ SELECT ds.append('append/text', 'more;'::text) $$);
SELECT attempt($$ SELECT ds.close('append/missing') $$);

-- A batch: in array order, each request its own outcome.
SELECT * FROM ds.try_append_batch(
    ARRAY['append/bytes', 'append/json', 'append/text', 'append/missing', 'append/bytes'],
    ARRAY['y', '[5,6]', 'z', 'w', '']::bytea[],
    ARRAY[NULL, 'application/json', NULL, NULL, NULL]::text[],
    ARRAY[NULL, NULL, NULL, NULL, NULL]::text[],
    ARRAY[NULL, NULL, NULL, NULL, NULL]::text[],
    ARRAY[NULL, NULL, NULL, NULL, NULL]::bigint[],
    ARRAY[NULL, NULL, NULL, NULL, NULL]::bigint[],
    ARRAY[false, false, false, false, true]);
SELECT attempt($$ SELECT * FROM ds.try_append_batch(ARRAY['append/bytes'], ARRAY[]::bytea[],
    ARRAY[]::text[], ARRAY[]::text[], ARRAY[]::text[], ARRAY[]::bigint[], ARRAY[]::bigint[],
    ARRAY[]::boolean[]) $$);
SELECT path, content_type, closed, tail_pos FROM ds.streams WHERE path LIKE 'append/%' ORDER BY path;

-- Appends are transactional.
SELECT created FROM ds.create('append/tx', 'text/plain');
BEGIN;
SELECT ds.append('append/tx', 'rolled back;');
ROLLBACK;
BEGIN;
SELECT ds.append('append/tx', 'one;');
SAVEPOINT s;
SELECT ds.append('append/tx', 'undone;');
ROLLBACK TO SAVEPOINT s;
SELECT ds.append('append/tx', 'two;');
COMMIT;
SELECT start_offset, convert_from(data, 'UTF8') FROM ds.read('append/tx');

SELECT ds.delete(path) FROM ds.streams WHERE path LIKE 'append/%' ORDER BY path;

-- A jsonb body is stored as Postgres prints it (jsonb's key order, every
-- digit), compacted; nested too deep, it is refused by name (22P02).
SELECT ds.create('jsonb/digits', 'application/json') IS NOT NULL;
SELECT ds.append('jsonb/digits', '{"n": 12345678901234567890123, "f": 0.1000000000000000055511151231257827, "bb": 1}'::jsonb) IS NOT NULL;
SELECT convert_from(data, 'UTF8') FROM ds.read('jsonb/digits');
SELECT attempt($$SELECT ds.append('jsonb/digits', (repeat('[', 200) || repeat(']', 200))::jsonb)$$);
SELECT ds.delete('jsonb/digits');
