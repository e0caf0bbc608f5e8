-- Change capture (ds.capture): a table's changes as State Protocol messages.
-- Here no sequencer serves the database, so the trigger's lock-free append
-- falls back to the locking one and offsets are deterministic.
-- `captured` shows a stream's messages without the varying txid/timestamp.
CREATE FUNCTION captured(p text) RETURNS SETOF jsonb LANGUAGE sql AS $$
    SELECT CASE WHEN m ? 'type'
                THEN (m - 'headers') || jsonb_build_object('op', m #> '{headers,operation}')
                ELSE m END
    FROM ds.read(p) r, jsonb_array_elements(('[' || convert_from(r.data, 'UTF8') || ']')::jsonb) m
$$;


-- The README's "Tables as streams" SQL, as printed.
CREATE TABLE orders (id bigint PRIMARY KEY, customer text NOT NULL, total numeric,
                     placed_at timestamptz DEFAULT '2026-01-01 12:00+00');
INSERT INTO orders (id, customer, total) VALUES (1, 'ada', 12.50);
SELECT ds.capture('orders', 'shop/orders');                 -- the offset after the snapshot
INSERT INTO orders (id, customer, total) VALUES (2, 'bob', 99.00);
UPDATE orders SET total = 13.00 WHERE id = 1;
DELETE FROM orders WHERE id = 2;
SELECT * FROM captured('shop/orders');

CREATE TABLE items (id int PRIMARY KEY, name text, price numeric, tags jsonb,
                    at timestamptz, raw bytea, note text);
INSERT INTO items VALUES
    (1, 'apple', 1.50, '["fruit"]', '2026-01-01 10:00+00', '\x01', NULL),
    (2, 'bread', 12345678901234567890.123456789, NULL, NULL, NULL, 'exact digits');
SELECT ds.capture('items', 'cap/items');
SELECT * FROM captured('cap/items');

-- Insert, update, key change (delete + insert), delete, rollback.
INSERT INTO items (id, name) VALUES (3, 'cheese');
UPDATE items SET price = 2 WHERE id = 1;
UPDATE items SET id = 30 WHERE id = 3;
DELETE FROM items WHERE id = 2;
BEGIN;
INSERT INTO items (id, name) VALUES (4, 'rolled back');
ROLLBACK;
BEGIN;
INSERT INTO items (id, name) VALUES (5, 'kept');
SAVEPOINT s;
INSERT INTO items (id, name) VALUES (6, 'savepoint rolled back');
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT * FROM captured('cap/items') OFFSET 4;

-- Every committed change and nothing else: the messages replayed equal the table.
WITH RECURSIVE msgs AS (
    SELECT row_number() OVER () AS n, m FROM captured('cap/items') m
), state AS (
    SELECT m->>'key' AS key, m->'value' AS value, m->>'op' AS op,
           row_number() OVER (PARTITION BY m->>'key' ORDER BY n DESC) AS latest
    FROM msgs WHERE m ? 'key'
)
SELECT (SELECT jsonb_agg(value ORDER BY key) FROM state WHERE latest = 1 AND op <> 'delete')
       = (SELECT jsonb_agg(to_jsonb(i) ORDER BY i.id::text) FROM items i) AS replay_equals_table;

-- Schema changes: added columns appear, dropped ones disappear.
ALTER TABLE items ADD COLUMN stock int DEFAULT 7;
ALTER TABLE items DROP COLUMN note;
UPDATE items SET name = 'apple 2' WHERE id = 1;
SELECT m->'value' FROM captured('cap/items') m ORDER BY 1 DESC LIMIT 0;
SELECT m->'value', m->'old_value' FROM captured('cap/items') m WHERE m->>'op' = 'update' AND m->'value'->>'name' = 'apple 2';

-- A renamed key column still keys the rows (the primary key is read as it is now).
ALTER TABLE items RENAME COLUMN id TO item_id;
UPDATE items SET price = 3 WHERE item_id = 1;
SELECT m->>'key', m->'value'->'item_id' FROM captured('cap/items') m WHERE m->'value'->>'price' = '3';
ALTER TABLE items RENAME COLUMN item_id TO id;

-- TRUNCATE is a reset.
TRUNCATE items;
SELECT * FROM captured('cap/items') m WHERE m ? 'headers' AND NOT m ? 'type';

-- Options: entity type, columns, row filter, composite key.
CREATE TABLE lines (order_id int, line int, sku text, qty int, secret text,
                    PRIMARY KEY (order_id, line));
INSERT INTO lines VALUES (1, 1, 'a', 1, 's1'), (1, 2, 'b', 0, 's2');
SELECT ds.capture('lines', 'cap/lines', entity_type => 'line', columns => ARRAY['sku', 'qty'],
                  row_filter => 'qty > 0');
INSERT INTO lines VALUES (2, 1, 'c', 5, 's3'), (2, 2, 'd', 0, 's4');
UPDATE lines SET qty = 3 WHERE (order_id, line) = (1, 2);  -- enters the filter: insert
UPDATE lines SET qty = 0 WHERE (order_id, line) = (1, 1);  -- leaves it: delete
SELECT * FROM captured('cap/lines');

-- A key expression for a table without a primary key.
CREATE TABLE events (kind text, seq int, body text);
SELECT attempt($$SELECT ds.capture('events', 'cap/events')$$);
SELECT ds.capture('events', 'cap/events', key_expression => $$kind || ':' || seq$$);
INSERT INTO events VALUES ('click', 1, 'x');
SELECT * FROM captured('cap/events');

-- What is captured where (the tables the caller may read).
SELECT * FROM ds.list_captures();

-- Bad input.
SELECT attempt($$SELECT ds.capture('items', 'cap/items')$$);            -- already captured
SELECT attempt($$SELECT ds.capture('lines', 'cap/other')$$);            -- already captured
CREATE VIEW items_view AS SELECT * FROM items;
SELECT attempt($$SELECT ds.capture('items_view', 'cap/view')$$);
SELECT attempt($$SELECT ds.capture('no_such_table', 'cap/x')$$);
CREATE TABLE t2 (id int PRIMARY KEY);
SELECT attempt($$SELECT ds.capture('t2', 'cap/t2', columns => ARRAY['nope'])$$);
SELECT attempt($$SELECT ds.capture('t2', 'cap/t2', columns => ARRAY[]::text[])$$);
SELECT attempt($$SELECT ds.capture('t2', 'cap/t2', entity_type => '')$$);
SELECT attempt($$SELECT ds.capture('t2', 'cap/t2', key_expression => ' ')$$);
SELECT attempt($$SELECT ds.capture('t2', 'cap/t2', row_filter => 'id >')$$);
SELECT attempt($$SELECT ds.capture('t2', '')$$);
SELECT ds.create('cap/bytes', 'application/octet-stream') IS NOT NULL;
SELECT attempt($$SELECT ds.capture('t2', 'cap/bytes')$$);              -- not a JSON stream
SELECT count(*) FROM ds.captures WHERE tbl = 't2'::regclass;            -- nothing left behind
SELECT attempt($$SELECT ds.capture(NULL, 'cap/t2')$$);
SELECT attempt($$SELECT ds.capture('t2', NULL)$$);

-- A key expression that yields NULL fails the write, loudly.
CREATE TABLE t3 (a int);
SELECT ds.capture('t3', 'cap/t3', key_expression => 'a::text') IS NOT NULL;
SELECT attempt($$INSERT INTO t3 VALUES (NULL)$$);
SELECT attempt($$INSERT INTO t3 VALUES (1)$$);

-- Writes fail while the stream cannot take them, and name the way out.
SELECT ds.close('cap/t3') IS NOT NULL;
SELECT attempt($$INSERT INTO t3 VALUES (2)$$);
SELECT ds.uncapture('t3');
SELECT ds.uncapture('t3');
INSERT INTO t3 VALUES (2);

-- Capturing again into a stream that has messages starts with a reset, so a
-- client drops rows deleted while the table was not captured.
SELECT ds.uncapture('lines');
DELETE FROM lines WHERE order_id = 2;
SELECT ds.capture('lines', 'cap/lines', entity_type => 'line', columns => ARRAY['sku', 'qty'],
                  row_filter => 'qty > 0') IS NOT NULL;
SELECT * FROM captured('cap/lines') OFFSET 6;

-- Privileges: capturing needs TRIGGER and SELECT on the table and path grants.
CREATE ROLE capturer NOLOGIN;
GRANT USAGE ON SCHEMA ds TO capturer;
GRANT EXECUTE ON FUNCTION ds.capture(regclass, text, text, text[], text, text),
                          ds.uncapture(regclass) TO capturer;
CREATE TABLE t4 (id int PRIMARY KEY);
SET ROLE capturer;
SELECT attempt($$SELECT ds.capture('t4', 'cap/t4')$$);
RESET ROLE;
GRANT SELECT, TRIGGER ON t4 TO capturer;
SET ROLE capturer;
SELECT attempt($$SELECT ds.capture('t4', 'cap/t4')$$);
RESET ROLE;
SELECT ds.grant('capturer', 'cap/t4', 'create, append');
SET ROLE capturer;
SELECT attempt($$SELECT ds.capture('t4', 'cap/t4')$$);
-- The filter and key expressions run with the capturer's rights, not the extension's.
SELECT attempt($$SELECT ds.uncapture('t4')$$);
SELECT attempt($$SELECT ds.capture('t4', 'cap/t4', row_filter => $f$(SELECT count(*) FROM ds.streams) >= 0$f$)$$);
RESET ROLE;
-- A writer without any stream privilege still has its changes captured.
CREATE ROLE plain_writer NOLOGIN;
GRANT INSERT ON t4 TO plain_writer;
SELECT ds.capture('t4', 'cap/t4') IS NOT NULL;
GRANT USAGE ON SCHEMA ds TO plain_writer;
GRANT EXECUTE ON FUNCTION ds.list_captures() TO plain_writer;
SET ROLE plain_writer;
INSERT INTO t4 VALUES (1);
SELECT count(*) FROM ds.list_captures();  -- plain_writer may not read t4
RESET ROLE;
SELECT * FROM captured('cap/t4');

-- A dropped table's capture goes with it.
CREATE TABLE t5 (id int PRIMARY KEY);
SELECT ds.capture('t5', 'cap/t5') IS NOT NULL;
DROP TABLE t5;
SELECT count(*) FROM ds.captures c WHERE c.path = 'cap/t5';
-- A table that lost its primary key fails writes until it is captured again.
CREATE TABLE t6 (id int PRIMARY KEY);
SELECT ds.capture('t6', 'cap/t6') IS NOT NULL;
ALTER TABLE t6 DROP CONSTRAINT t6_pkey;
SELECT attempt($$INSERT INTO t6 VALUES (1)$$);
SELECT ds.uncapture('t6');
DROP TABLE t6;

-- Clean up the cluster-wide roles.
SELECT ds.uncapture('t4');
SELECT ds.revoke('capturer', 'cap/t4');
DROP TABLE t4;
DROP OWNED BY capturer, plain_writer;
DROP ROLE capturer, plain_writer;
SELECT ds.uncapture(t) FROM unnest(ARRAY['items', 'lines', 'events', 't2', 'orders']::regclass[]) t;
SELECT count(*) FROM ds.captures;
DROP VIEW items_view;
DROP TABLE items, lines, events, t2, t3, orders;
SELECT ds.delete('shop/orders');
SELECT ds.delete(path) FROM ds.streams WHERE path LIKE 'cap/%';
