-- Helpers the other goldens share (pg_regress runs this file first: the
-- files run in name order, in one database).
-- `attempt` runs a statement and shows "SQLSTATE: message", or "ok".
CREATE OR REPLACE FUNCTION attempt(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE q;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
