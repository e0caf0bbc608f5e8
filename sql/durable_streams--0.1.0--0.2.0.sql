-- durable_streams 0.1.0 -> 0.2.0 (ALTER EXTENSION durable_streams UPDATE).
-- Runs in one transaction with the extension's schema as search_path; every
-- name below is schema-qualified anyway. A fresh CREATE EXTENSION of 0.2.0
-- (sql/bootstrap.sql) and this script must give the same schema:
-- scripts/upgrade-test.sh compares the two.

-- A stream's creating role was a raw oid, which a dump carries as a number:
-- restored into another cluster (roles get new OIDs) it named another role or
-- none, and quotas silently counted against the wrong role. regrole dumps the
-- role's name. oid and regrole are binary compatible: no table rewrite, and
-- the index on the column is kept.
ALTER TABLE ds.streams ALTER COLUMN owner_role TYPE pg_catalog.regrole;

-- Read replicas: a hot standby cannot restart sliding TTLs, so the sidecar
-- forwards the paths its standby reads served to the primary in batches.
CREATE FUNCTION ds."touch"(
	"paths" TEXT[],
	"as_roles" TEXT[] DEFAULT NULL
) RETURNS bigint
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'touch_wrapper';
REVOKE EXECUTE ON FUNCTION ds.touch(text[], text[]) FROM PUBLIC;
