-- The README's SQL examples, run as printed (keep the two in sync).
-- A JSON stream: each message is kept; a top-level array is flattened once.
SELECT * FROM ds.create('orders', 'application/json');
SELECT ds.append('orders', '{"id": 1, "status": "created"}'::jsonb);
SELECT ds.append('orders', '[{"id": 2}, {"id": 3}]'::jsonb);
SELECT start_offset, next_offset, convert_from(data, 'UTF8') AS message FROM ds.read('orders');
SELECT convert_from(body, 'UTF8') AS body, next_offset, up_to_date, closed
  FROM ds.read_chunk('orders');

-- Transactional outbox: the append commits (or rolls back) with your rows.
CREATE TABLE shop_orders (id bigint PRIMARY KEY, status text);
BEGIN;
INSERT INTO shop_orders VALUES (4, 'created');
SELECT ds.append('orders', jsonb_build_object('id', 4, 'status', 'created'));
COMMIT;
SELECT convert_from(data, 'UTF8') AS message FROM ds.read('orders', '0000000000000000_0000000000000043');

-- A hot stream that many transactions write at once: ds.enqueue takes no
-- stream lock and returns no offset; the appends get offsets right after
-- commit (see "Hot streams: ds.enqueue").
BEGIN;
INSERT INTO shop_orders VALUES (5, 'created');
SELECT ds.enqueue('orders', jsonb_build_object('id', 5, 'status', 'created'));
COMMIT;

-- A text stream, read from an offset returned earlier.
SELECT * FROM ds.create('logs', 'text/plain', ttl_seconds => 86400);
SELECT ds.append('logs', E'line 1\n');
SELECT ds.append('logs', E'line 2\n');
SELECT start_offset, convert_from(data, 'UTF8') AS line
  FROM ds.read('logs', '0000000000000000_0000000000000007');

-- Idempotent producer: a retried request is recognised, not appended twice.
SELECT outcome, next_offset, producer_epoch, producer_seq
  FROM ds.try_append('logs', convert_to(E'line 3\n', 'UTF8'),
                     producer_id => 'importer', producer_epoch => 0, producer_seq => 0);
SELECT outcome, next_offset, producer_epoch, producer_seq
  FROM ds.try_append('logs', convert_to(E'line 3\n', 'UTF8'),
                     producer_id => 'importer', producer_epoch => 0, producer_seq => 0);

-- Close, inspect, and the error an append to a closed stream raises.
SELECT ds.close('logs');
SELECT content_type, next_offset, closed, ttl_seconds FROM ds.head('logs');
SELECT ds.append('logs', E'too late\n');

-- Creating again with the same settings is a no-op; different settings conflict.
SELECT created FROM ds.create('orders', 'application/json');
SELECT created FROM ds.create('orders', 'text/plain');

SELECT ds.delete('logs');
SELECT * FROM ds.head('logs');
