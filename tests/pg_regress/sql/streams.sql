-- Stream lifecycle (§5.1, §5.4, §5.5): create with PUT semantics, head,
-- delete. Paths under streams/.
SELECT * FROM ds.create('streams/bytes');
SELECT * FROM ds.create('streams/text', 'text/plain; charset=utf-8', body => 'hello');
SELECT * FROM ds.create('streams/json', 'application/json', body => '[{"a":1},{"b":2}]');
SELECT * FROM ds.create('streams/empty-json', 'application/json', body => '[]');
SELECT * FROM ds.create('streams/done', 'text/plain', closed => true, body => 'final');
SELECT * FROM ds.create('streams/ttl', 'text/plain', ttl_seconds => 3600);
SELECT * FROM ds.create('streams/until', 'text/plain', expires_at => '2035-01-01 00:00:00Z');
-- Head: everything but the stream id.
SELECT content_type, next_offset, closed, ttl_seconds, expires_at
  FROM ds.head('streams/text');
SELECT content_type, next_offset, closed, ttl_seconds, expires_at
  FROM ds.head('streams/until');
SELECT content_type, next_offset, closed, ttl_seconds FROM ds.head('streams/done');

-- The same configuration again: confirmed, not created, body ignored.
SELECT * FROM ds.create('streams/text', 'text/plain; charset=utf-8', body => 'other');
SELECT * FROM ds.create('streams/ttl', 'text/plain', ttl_seconds => 3600);
SELECT * FROM ds.create('streams/done', 'text/plain', closed => true);
-- Content types compare by essence, case-insensitively.
SELECT created FROM ds.create('streams/text', 'TEXT/PLAIN');
-- Anything else differs: 42710, naming what.
SELECT attempt($$ SELECT ds.create('streams/text', 'application/json') $$);
SELECT attempt($$ SELECT ds.create('streams/ttl', 'text/plain', ttl_seconds => 60) $$);
SELECT attempt($$ SELECT ds.create('streams/ttl', 'text/plain') $$);
SELECT attempt($$ SELECT ds.create('streams/done', 'text/plain') $$);
SELECT attempt($$ SELECT ds.create('streams/bytes', closed => true) $$);
SELECT attempt($$ SELECT ds.create('streams/until', 'text/plain', expires_at => '2036-01-01Z') $$);

-- Delete: gone at once; a second delete and a head say 42704; the path can
-- be used again, for a new stream that starts at offset 0.
SELECT ds.delete('streams/text');
SELECT attempt($$ SELECT ds.delete('streams/text') $$);
SELECT attempt($$ SELECT * FROM ds.head('streams/text') $$);
SELECT * FROM ds.create('streams/text', 'application/json');

SELECT path, content_type, closed FROM ds.streams WHERE path LIKE 'streams/%' ORDER BY path;
SELECT ds.delete(path) FROM ds.streams WHERE path LIKE 'streams/%' ORDER BY path;
