-- Stream registries (README "Stream registries", run as printed; keep the
-- two in sync), then the rules from every side. This database has no
-- sequencer (the cluster's workers serve another one), so registry appends
-- are locking appends here and readable at once; ds-it covers the lock-free
-- path.

-- The README.
SET ds.registry = on;
SELECT * FROM ds.create_registry('acme/');
SELECT created FROM ds.create('acme/orders', 'application/json', ttl_seconds => 3600);
SELECT created FROM ds.fork('acme/orders-copy', 'acme/orders');
SELECT ds.delete('acme/orders-copy');
SELECT convert_from(data, 'UTF8')::jsonb ->> 'key' AS path,
       convert_from(data, 'UTF8')::jsonb -> 'headers' ->> 'operation' AS operation
FROM ds.read('acme/__registry__');

-- Whole messages, without what changes from run to run.
CREATE FUNCTION registry_entries(registry text) RETURNS TABLE (entry jsonb) LANGUAGE sql AS $$
    SELECT (m - 'headers')
           || jsonb_build_object('operation', m -> 'headers' ->> 'operation',
                                 'txid_is_text', jsonb_typeof(m -> 'headers' -> 'txid') = 'string',
                                 'timestamp_is_now', (m -> 'headers' ->> 'timestamp')::timestamptz
                                                     BETWEEN now() - interval '1 hour' AND now())
           || CASE WHEN m ? 'value' THEN jsonb_build_object('value', (m -> 'value') - 'created_at')
                   ELSE '{}' END
    FROM (SELECT convert_from(data, 'UTF8')::jsonb AS m FROM ds.read(registry)) r
$$;
SELECT * FROM registry_entries('acme/__registry__');

-- A registry lists what exists when it is made; nested prefixes both get a change.
SELECT created FROM ds.create('acme/eu/a', 'text/plain', expires_at => '2100-01-01T00:00:00Z');
SELECT * FROM ds.create_registry('acme/eu/');
SELECT * FROM ds.create_registry('acme/eu/');
SELECT created FROM ds.create('acme/eu/b');
SELECT * FROM registry_entries('acme/eu/__registry__');
SELECT entry ->> 'key' AS key, entry ->> 'operation' AS op FROM registry_entries('acme/__registry__');

-- Unchanged and rolled-back creations leave nothing.
SELECT created FROM ds.create('acme/eu/b');
BEGIN;
SELECT created FROM ds.create('acme/eu/rolled-back');
ROLLBACK;
SELECT count(*) FROM ds.read('acme/eu/__registry__');

-- Soft delete (a fork still reads the source) is a delete; its cleanup adds nothing.
SELECT created FROM ds.create('acme/src', 'text/plain');
SELECT created FROM ds.fork('acme/eu/fork', 'acme/src');
SELECT ds.delete('acme/src');
SELECT ds.delete('acme/eu/fork');
SELECT entry ->> 'key' AS key, entry ->> 'operation' AS op FROM registry_entries('acme/__registry__');

-- Off: nothing recorded.
SET ds.registry = off;
SELECT created FROM ds.create('acme/unrecorded');
SET ds.registry = on;
SELECT count(*) FROM registry_entries('acme/__registry__') WHERE entry ->> 'key' = 'acme/unrecorded';

-- Registry paths are reserved, superusers included.
SELECT attempt($$SELECT ds.append('acme/__registry__', '{"type":"stream","key":"x"}'::jsonb)$$);
SELECT outcome, sqlstate, detail FROM ds.try_append('acme/__registry__', '{"forged":true}');
SELECT attempt($$SELECT ds.enqueue('acme/__registry__', '{"forged":true}'::jsonb)$$);
SELECT attempt($$SELECT ds.close('acme/__registry__')$$);
SELECT attempt($$SELECT ds.delete('acme/__registry__')$$);
SELECT attempt($$SELECT ds.create('elsewhere/__registry__', 'application/json')$$);
SELECT attempt($$SELECT ds.fork('acme/x/__registry__', 'acme/orders')$$);
SELECT count(*) FROM ds.read('acme/__registry__');
-- Reading and forking a registry are allowed.
SELECT created FROM ds.fork('acme-copy-of-registry', 'acme/__registry__');
SELECT ds.delete('acme-copy-of-registry');

-- Bad prefixes.
SELECT attempt($$SELECT ds.create_registry('acme')$$);
SELECT attempt($$SELECT ds.create_registry('/')$$);
SELECT attempt($$SELECT ds.create_registry('a//')$$);
SELECT attempt($$SELECT ds.create_registry('a*/')$$);
SELECT attempt($$SELECT ds.create_registry('a/b/c/d/e/')$$);
SELECT attempt($$SELECT ds.create_registry('__registry__/')$$);
SELECT attempt($$SELECT ds.drop_registry('acme')$$);
SELECT attempt($$SET ds.registry = maybe$$);

-- Tenants: a registry per prefix, read with ordinary grants.
CREATE ROLE reg_tenant NOLOGIN;
CREATE ROLE reg_admin NOLOGIN;
GRANT USAGE ON SCHEMA ds TO reg_tenant, reg_admin;
GRANT EXECUTE ON FUNCTION ds.create(text, text, bigint, timestamptz, boolean, bytea),
                          ds.read(text, text, bigint), ds.create_registry(text),
                          ds.drop_registry(text) TO reg_tenant, reg_admin;
SELECT ds.grant('reg_tenant', 'acme/eu/*', 'read, create');
SELECT ds.grant('reg_admin', 'acme/eu/**', 'all');
SET ROLE reg_tenant;
SELECT created FROM ds.create('acme/eu/by-tenant');
SELECT count(*) FROM ds.read('acme/eu/__registry__');
SELECT attempt($$SELECT * FROM ds.read('acme/__registry__')$$);
SELECT attempt($$SELECT * FROM ds.create_registry('acme/eu/')$$);
SELECT attempt($$SET ds.registry = off$$);
RESET ROLE;
SET ROLE reg_admin;
SELECT attempt($$SELECT * FROM ds.create_registry('acme/')$$);
SELECT ds.drop_registry('acme/eu/');
SELECT * FROM ds.create_registry('acme/eu/');
RESET ROLE;
SELECT entry ->> 'key' AS key, entry ->> 'operation' AS op FROM registry_entries('acme/eu/__registry__');
SELECT prefix, s.path, s.owner_role, s.content_type
FROM ds.registries r JOIN ds.streams s USING (stream_id) ORDER BY prefix;

-- Dropping: the registry goes, and its path can be a registry again.
SELECT ds.drop_registry('acme/eu/');
SELECT ds.drop_registry('acme/eu/');
SELECT attempt($$SELECT * FROM ds.head('acme/eu/__registry__')$$);
SELECT ds.drop_registry('acme/');
SELECT prefix FROM ds.registries;
DROP FUNCTION registry_entries(text);
SELECT ds.delete(p) FROM unnest(ARRAY['acme/orders', 'acme/eu/a', 'acme/eu/b', 'acme/eu/by-tenant',
                                      'acme/unrecorded']) AS p;
SELECT ds.revoke('reg_tenant', 'acme/eu/*');
SELECT ds.revoke('reg_admin', 'acme/eu/**');
DROP OWNED BY reg_tenant, reg_admin;
DROP ROLE reg_tenant, reg_admin;
RESET ds.registry;
