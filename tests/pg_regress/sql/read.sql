-- Reading (§5.6, §8): ds.read rows and ds.read_chunk bodies from -1, now,
-- an offset handed out, inside a byte chunk, past the tail (clamped);
-- paging with max_rows / max_bytes; up_to_date and closed. Paths under read/.
SELECT created FROM ds.create('read/text', 'text/plain');
SELECT ds.append('read/text', 'alpha;'::text);
SELECT ds.append('read/text', 'beta;'::text);
SELECT ds.append('read/text', 'gamma;'::text);
SELECT created FROM ds.create('read/json', 'application/json', body => '[{"n":1},{"n":2},{"n":3}]');

SELECT start_offset, next_offset, convert_from(data, 'UTF8') FROM ds.read('read/text');
SELECT start_offset, next_offset, convert_from(data, 'UTF8') FROM ds.read('read/text', '-1', 2);
SELECT start_offset, next_offset, convert_from(data, 'UTF8')
  FROM ds.read('read/text', '0000000000000000_0000000000000006');
-- Inside a chunk of a byte stream: from that byte on.
SELECT start_offset, next_offset, convert_from(data, 'UTF8')
  FROM ds.read('read/text', '0000000000000000_0000000000000008');
SELECT count(*) FROM ds.read('read/text', 'now');
SELECT count(*) FROM ds.read('read/text', '0000000000000000_0000000000009999');

-- One body: the bytes back to back; JSON as one array.
SELECT convert_from(body, 'UTF8'), next_offset, up_to_date, closed, content_type
  FROM ds.read_chunk('read/text');
SELECT convert_from(body, 'UTF8'), next_offset, up_to_date FROM ds.read_chunk('read/text', '-1', 7);
SELECT convert_from(body, 'UTF8'), next_offset, up_to_date
  FROM ds.read_chunk('read/text', '0000000000000000_0000000000000011', 1);
SELECT convert_from(body, 'UTF8'), next_offset, up_to_date, closed FROM ds.read_chunk('read/text', 'now');
SELECT convert_from(body, 'UTF8'), next_offset, up_to_date FROM ds.read_chunk('read/json');
SELECT convert_from(body, 'UTF8'), next_offset, up_to_date FROM ds.read_chunk('read/json', '-1', 1);
SELECT convert_from(body, 'UTF8'), next_offset, up_to_date FROM ds.read_chunk('read/json', 'now');
SELECT start_offset, next_offset, convert_from(data, 'UTF8')
  FROM ds.read('read/json', '0000000000000000_0000000000000007');

-- closed only in a body that reaches the tail of a closed stream.
SELECT ds.close('read/text');
SELECT convert_from(body, 'UTF8'), up_to_date, closed FROM ds.read_chunk('read/text', '-1', 7);
SELECT convert_from(body, 'UTF8'), up_to_date, closed FROM ds.read_chunk('read/text', '-1');
SELECT octet_length(body), up_to_date, closed FROM ds.read_chunk('read/text', 'now');

SELECT ds.delete(path) FROM ds.streams WHERE path LIKE 'read/%' ORDER BY path;
