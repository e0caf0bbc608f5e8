-- The README's "Security" SQL, run as printed (keep the two in sync), then
-- the same rules from every side.

-- Two tenants. Roles need USAGE on the schema and EXECUTE on what they call;
-- path grants then decide which streams they reach.
CREATE ROLE tenant_a NOLOGIN;
CREATE ROLE tenant_b NOLOGIN;
GRANT USAGE ON SCHEMA ds TO tenant_a, tenant_b;
GRANT EXECUTE ON FUNCTION ds.create(text, text, bigint, timestamptz, boolean, bytea),
                          ds.append(text, text), ds.read(text, text, bigint),
                          ds.head(text), ds.delete(text), ds.list_grants() TO tenant_a, tenant_b;
GRANT SELECT ON ds.grants TO tenant_a, tenant_b;
SELECT ds.grant('tenant_a', 'tenant-a/**', 'read, append, create, delete');
SELECT ds.grant('tenant_b', 'tenant-b/**', 'all');
SELECT ds.set_quota('tenant_a', max_bytes => 1073741824, max_streams => 1000);

SET ROLE tenant_a;
SELECT created FROM ds.create('tenant-a/orders', 'text/plain');
SELECT ds.append('tenant-a/orders', E'order 1\n');
SELECT ds.create('tenant-b/payroll', 'text/plain');
RESET ROLE;

SELECT grantee, pattern, privileges FROM ds.grants ORDER BY grantee;
SELECT ds.revoke('tenant_a', 'tenant-a/**', 'delete');
SELECT role, max_bytes, max_streams, bytes, streams FROM ds.quota_usage();

-- The sidecar's login role acts as the tenants (SET ROLE per request).
CREATE ROLE ds_sidecar LOGIN;
GRANT USAGE ON SCHEMA ds TO ds_sidecar;
GRANT EXECUTE ON FUNCTION ds.create(text, text, bigint, timestamptz, boolean, bytea),
                          ds.fork(text, text, text, bigint, text, bigint, timestamptz, boolean, bytea),
                          ds.try_append(text, bytea, text, text, text, bigint, bigint, boolean),
                          ds.try_append_batch(text[], bytea[], text[], text[], text[], bigint[],
                                              bigint[], boolean[], boolean, text[]),
                          ds.read_chunk(text, text, bigint), ds.head(text), ds.delete(text),
                          ds.notify_channel() TO ds_sidecar;
GRANT tenant_a, tenant_b TO ds_sidecar;

-- Beyond the README: what each side sees.
SET ROLE tenant_b;
SELECT * FROM ds.read('tenant-a/orders');
SELECT * FROM ds.head('tenant-a/nothing-here');
SELECT ds.delete('tenant-a/orders');
SELECT created FROM ds.create('tenant-b/payroll', 'text/plain');
SELECT ds.notify_channel();
SELECT * FROM ds.path_grants;
SET ds.path_checks = off;
RESET ROLE;
SET ROLE tenant_a;
SELECT start_offset, convert_from(data, 'UTF8') FROM ds.read('tenant-a/orders');
SELECT ds.delete('tenant-a/orders');
SELECT grantee, pattern FROM ds.grants;
RESET ROLE;
-- Patterns and privilege lists are checked.
SELECT ds.grant('tenant_a', 'tenant-a/room-*', 'read');
SELECT ds.grant('tenant_a', 'tenant-a/*', 'read, write');
SELECT ds.grant('tenant_a', 'tenant-a/*', '');
SELECT ds.grant('no_such_role', 'tenant-a/*', 'read');
SELECT ds.revoke('tenant_a', 'tenant-a/**/room-*');
SELECT ds.revoke('tenant_a', 'tenant-a/**', 'read, nothing');
SELECT ds.revoke('no_such_role', 'tenant-a/**');
SELECT ds.set_quota('tenant_a', -1, NULL);
SELECT ds.set_quota('no_such_role', 1, 1);
SELECT ds.set_stream_quota('tenant-a/orders', -1);
SELECT ds.set_stream_quota('tenant-a/missing', 1);
SELECT attempt($$SELECT ds.set_quota(NULL, 1, 1)$$);
SELECT attempt($$SELECT ds.set_stream_quota(NULL, 1)$$);
-- Off, path checks leave EXECUTE alone to decide (superusers only).
SET ds.path_checks = off;
SET ROLE tenant_b;
SELECT start_offset, convert_from(data, 'UTF8') FROM ds.read('tenant-a/orders');
RESET ROLE;
RESET ds.path_checks;

-- Maintenance functions: stats shows tenant_b only its own streams.
GRANT EXECUTE ON FUNCTION ds.rotate(text), ds.stats(), ds.worker_stats() TO tenant_b;
SET ROLE tenant_b;
SELECT path FROM ds.stats();
SELECT * FROM ds.rotate('tenant-b/payroll');
SELECT * FROM ds.rotate('tenant-a/orders');
RESET ROLE;

-- Clean up the cluster-wide roles.
SELECT ds.delete('tenant-a/orders');
SELECT ds.delete('tenant-b/payroll');
SELECT ds.revoke('tenant_a', 'tenant-a/**');
SELECT ds.revoke('tenant_b', 'tenant-b/**');
SELECT ds.set_quota('tenant_a', NULL, NULL);
DROP OWNED BY tenant_a, tenant_b, ds_sidecar;
DROP ROLE tenant_a, tenant_b, ds_sidecar;
