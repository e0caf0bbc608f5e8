#!/usr/bin/env bash
# Isolation specs (run by `make test`): the lock interleavings we rely on,
# pinned with Postgres' isolationtester (tests/isolation/specs, expected
# output in tests/isolation/expected; a blocked step shows `<waiting ...>`).
#
# The specs run on a cluster of their own whose background workers serve
# the specs' database (`ds.database`): `ds.enqueue` takes its lock-free path
# (and the path lock the specs pin) only where the sequencer serves.
#
# Usage: bash scripts/isolation-test.sh [spec ...]
#        (PG_CONFIG, DS_ISOLATION_PORT optional; default: every spec;
#        DS_ISOLATION_RESULTS=DIR keeps the actual outputs of a failed run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

PORT="${DS_ISOLATION_PORT:-$((${DS_TEST_PORT:-54371} + 2))}"
DB=ds_isolation
SPECS="$ROOT/tests/isolation"
CLUSTER="$(mktemp -d /tmp/ds-isolation.XXXXXX)"
OUT="$(mktemp -d /tmp/ds-isolation-out.XXXXXX)"
pg_owned_dir "$OUT"
cleanup() {
    cluster_stop "$CLUSTER" || true
    rm -rf "$CLUSTER" "$OUT"
}
trap cleanup EXIT

cluster_start "$CLUSTER" "$PORT" "$DB"
ensure_database "$PORT" "$DB"
# The workers connect to a database that did not exist when the cluster
# started only at their restart (a few seconds): until the sequencer serves
# it, ds.enqueue falls back to the locking append, which the specs must not
# see.
for _ in $(seq 1 300); do
    psql_at "$PORT" "$DB" -Atc "SELECT count(*) FROM pg_stat_activity
        WHERE datname = '$DB' AND backend_type LIKE 'durable_streams %'" | grep -qx 3 && break
    sleep 0.1
done
psql_at "$PORT" "$DB" -Atc "SELECT count(*) FROM pg_stat_activity
    WHERE datname = '$DB' AND backend_type = 'durable_streams sequencer'" | grep -qx 1 ||
    { echo "the durable_streams workers did not start in $DB" >&2; exit 1; }
# Roles are cluster-wide: the grant spec's role is made here, once.
psql_at "$PORT" "$DB" -q <<'SQL'
CREATE ROLE iso_writer NOLOGIN;
GRANT USAGE ON SCHEMA ds TO iso_writer;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ds TO iso_writer;
SQL

if [ "$#" -gt 0 ]; then
    specs="$*"
else
    specs="$(cd "$SPECS/specs" && ls *.spec | sed 's/\.spec$//' | sort)"
fi
log "isolation specs: $(echo $specs | wc -w) on 127.0.0.1:$PORT/$DB"
# shellcheck disable=SC2086
as_pg "$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/isolation/pg_isolation_regress" \
    --use-existing --host=127.0.0.1 --port="$PORT" --user=postgres --dbname="$DB" \
    --inputdir="$SPECS" --outputdir="$OUT" $specs || {
    cat "$OUT/regression.diffs" 2>/dev/null | head -300
    if [ -n "${DS_ISOLATION_RESULTS:-}" ]; then
        mkdir -p "$DS_ISOLATION_RESULTS"
        cp "$OUT"/results/*.out "$DS_ISOLATION_RESULTS/"
        log "actual outputs copied to $DS_ISOLATION_RESULTS (review, then move to tests/isolation/expected)"
    fi
    exit 1
}
