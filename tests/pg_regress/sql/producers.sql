-- Idempotent producers (§5.2.1): fencing by epoch, deduplication by seq,
-- closing by a producer, and no producer state inherited by forks.
-- Paths under producers/.
SELECT created FROM ds.create('producers/s', 'text/plain');
CREATE FUNCTION produce(body text, id text, epoch bigint, seq bigint, close boolean DEFAULT false)
RETURNS TABLE (outcome text, next_offset text, producer_epoch bigint, producer_seq bigint,
               expected_seq bigint, received_seq bigint, closed boolean)
LANGUAGE sql AS $$
    SELECT outcome, next_offset, producer_epoch, producer_seq, expected_seq, received_seq, closed
    FROM ds.try_append('producers/s', convert_to(body, 'UTF8'), producer_id => id,
                       producer_epoch => epoch, producer_seq => seq, close => close)
$$;
SELECT * FROM produce('a;', 'p', 0, 0);   -- new producer: seq 0
SELECT * FROM produce('a;', 'p', 0, 0);   -- retry: duplicate, nothing appended
SELECT * FROM produce('b;', 'p', 0, 1);
SELECT * FROM produce('d;', 'p', 0, 3);   -- gap: expected 2
SELECT * FROM produce('x;', 'q', 0, 1);   -- a new producer must start at 0
SELECT * FROM produce('c;', 'p', 1, 1);   -- a new epoch must start at seq 0
SELECT * FROM produce('c;', 'p', 1, 0);   -- new epoch
SELECT * FROM produce('z;', 'p', 0, 2);   -- the old epoch is fenced: 403
SELECT * FROM produce('b;', 'p', 1, 0);   -- duplicate in the new epoch
-- Producer arguments come all three or none.
SELECT outcome, sqlstate FROM ds.try_append('producers/s', 'x', producer_id => 'p');
SELECT outcome, sqlstate FROM ds.try_append('producers/s', 'x', producer_id => '',
                                            producer_epoch => 0, producer_seq => 0);
SELECT outcome, sqlstate FROM ds.try_append('producers/s', 'x', producer_id => 'p',
                                            producer_epoch => -1, producer_seq => 0);
SELECT producer_id, epoch, last_seq FROM ds.producers p JOIN ds.streams s USING (stream_id)
 WHERE s.path = 'producers/s' ORDER BY producer_id;

-- A fork has no producer state: the same claims start afresh there.
SELECT created FROM ds.fork('producers/fork', 'producers/s');
SELECT outcome, producer_epoch, producer_seq, expected_seq
  FROM ds.try_append('producers/fork', 'f;', producer_id => 'p', producer_epoch => 1, producer_seq => 1);
SELECT outcome, producer_epoch, producer_seq
  FROM ds.try_append('producers/fork', 'f;', producer_id => 'p', producer_epoch => 0, producer_seq => 0);

-- Closing with a final append: its retry is a duplicate; anyone else's
-- append is refused; a close-only request is idempotent.
SELECT * FROM produce('end;', 'p', 1, 1, true);
SELECT * FROM produce('end;', 'p', 1, 1, true);
SELECT * FROM produce('more;', 'p', 1, 2);
SELECT * FROM produce('more;', 'q', 0, 0);
SELECT outcome, closed FROM ds.try_append('producers/s', '', close => true);
SELECT convert_from(body, 'UTF8'), closed FROM ds.read_chunk('producers/s');

SELECT ds.delete('producers/fork');
SELECT ds.delete('producers/s');
DROP FUNCTION produce(text, text, bigint, bigint, boolean);
