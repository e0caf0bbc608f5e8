-- README, "Tables as streams": a captured table's changes as State Protocol
-- messages (in this database no sequencer runs, so ds.enqueue, which the
-- capture triggers use, appends at once and the reads below see everything).
CREATE TABLE todos (id bigint PRIMARY KEY, title text NOT NULL, done boolean NOT NULL DEFAULT false);
INSERT INTO todos VALUES (1, 'write the README');
-- The offset it returns depends on the txid's digits: not shown.
\o /dev/null
SELECT ds.capture('todos', 'tables/todos');
\o
INSERT INTO todos VALUES (2, 'ship it');
UPDATE todos SET done = true WHERE id = 1;
UPDATE todos SET id = 3 WHERE id = 2;
DELETE FROM todos WHERE id = 1;
TRUNCATE todos;
SELECT m #- '{headers,txid}' #- '{headers,timestamp}' AS message
  FROM ds.read('tables/todos'), LATERAL (SELECT convert_from(data, 'UTF8')::jsonb) AS r(m);
-- Every change message carries the writing transaction's id and the time.
SELECT count(*) AS changes,
       count(*) FILTER (WHERE m #>> '{headers,txid}' ~ '^[0-9]+$'
                          AND (m #>> '{headers,timestamp}')::timestamptz <= now()) AS with_headers
  FROM ds.read('tables/todos'), LATERAL (SELECT convert_from(data, 'UTF8')::jsonb) AS r(m)
 WHERE m -> 'headers' ? 'operation';
SELECT ds.uncapture('todos');
INSERT INTO todos VALUES (4, 'not captured any more');
SELECT count(*) AS messages FROM ds.read('tables/todos');
