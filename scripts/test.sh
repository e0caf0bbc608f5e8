#!/usr/bin/env bash
# `make test`: every check the project has, against a fresh cluster that is
# torn down at the end. Fails on the first failing step.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

"$ROOT/scripts/setup.sh"
cd "$ROOT"
# The e2e fan-out test holds 1,000 SSE connections in the test and in the sidecar.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    log "warning: only $(ulimit -n) open files allowed; the 1,000-client e2e test needs about 1,100 per process"
fi

# Each stage's header; the previous stage's time is printed first, so a run
# shows how long every part of `make test` took.
TEST_STARTED=$(date +%s)
stage_started=""
stage() {
    local now
    now=$(date +%s)
    [ -z "$stage_started" ] || log "  (took $((now - stage_started)) s)"
    stage_started=$now
    log "$*"
}

stage "rustfmt"
cargo fmt --all -- --check
stage "clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p durable_streams --all-targets --features pg_test -- -D warnings

stage "README SQL is run by the goldens"
python3 "$ROOT/scripts/check-readme-sql.py"

stage "unit tests (core, sidecar) and the fuzz corpus + regressions replay (ds-fuzz, stable)"
cargo test -q -p ds-core -p ds-sidecar -p ds-fuzz

stage "cargo pgrx test (in-backend #[pg_test])"
PGRX_TEST_DIR="$(mktemp -d /tmp/ds-pgrx-test.XXXXXX)"
pg_owned_dir "$PGRX_TEST_DIR"
# pgrx-tests re-installs the extension with this manifest (see Cargo.toml).
export PGRX_MANIFEST_PATH="$ROOT/Cargo.toml"
# It copies the library over the installed one in place, which would crash a
# running `make run` cluster that has it mapped: detach that file first.
detach_installed_library
if [ "$(id -u)" = 0 ]; then
    cargo pgrx test pg15 -p durable_streams --runas postgres --pgdata "$PGRX_TEST_DIR/data"
else
    cargo pgrx test pg15 -p durable_streams --pgdata "$PGRX_TEST_DIR/data"
fi
rm -rf "$PGRX_TEST_DIR"

install_extension

# A fresh cluster of our own, on a port nobody else uses, removed at exit.
PORT="${DS_TEST_PORT:-54371}"
TEST_DIR="$(mktemp -d /tmp/ds-test-cluster.XXXXXX)"
cleanup() {
    local status=$?
    [ -z "${SIDECAR_PID:-}" ] || kill "$SIDECAR_PID" 2>/dev/null || true
    cluster_stop "$TEST_DIR" || true
    if [ "$status" != 0 ] && [ -f "$TEST_DIR/server.log" ]; then
        # The cluster goes with TEST_DIR: show what its server saw first.
        log "the test cluster's server log (crashes and restarts, then its last lines)"
        grep -E "terminated by signal|PANIC|all server processes terminated" "$TEST_DIR/server.log" || true
        tail -60 "$TEST_DIR/server.log" || true
    fi
    rm -rf "$TEST_DIR"
}
trap cleanup EXIT
cluster_start "$TEST_DIR" "$PORT" ds_it

stage "pg_regress goldens (tests/pg_regress)"
psql_at "$PORT" postgres -qc "DROP DATABASE IF EXISTS ds_regress"
ensure_database "$PORT" ds_regress
REGRESS_OUT="$ROOT/tests/pg_regress"
tests=$(cd tests/pg_regress/sql && ls *.sql | sed 's/\.sql$//' | sort)
# shellcheck disable=SC2086
"$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress" \
    --use-existing --host=127.0.0.1 --port="$PORT" --user=postgres --dbname=ds_regress \
    --inputdir="$REGRESS_OUT" --outputdir="$REGRESS_OUT" $tests || {
    cat "$REGRESS_OUT/regression.diffs" 2>/dev/null | head -200
    exit 1
}

stage "isolation specs (tests/isolation: pinned lock interleavings, a cluster of their own)"
DS_TEST_PORT="$PORT" bash "$ROOT/scripts/isolation-test.sh"

stage "integration tests (pgrx-tests/, tokio-postgres against the cluster)"
ensure_database "$PORT" ds_it
DS_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/ds_it" \
    DS_TEST_SERVER_DIR="$TEST_DIR" \
    cargo test -q -p ds-it -- --test-threads=1

cargo build -q -p ds-sidecar
CONFORMANCE_DB="postgresql://postgres@127.0.0.1:$PORT/ds_it"
# run_conformance LABEL [sidecar flags...]: a sidecar with those flags, the
# official suite (checked against expected-failures.txt) and the official
# TypeScript client's smoke test against it (DS_TOKEN, if set, is sent by
# both), then the sidecar is stopped. The suite checks a CORS preflight from
# https://example.com, so that origin is allowed.
run_conformance() {
    local label="$1"
    shift
    SIDECAR_PORT="$(free_port)"
    SIDECAR_LOG="$TEST_DIR/sidecar-$label.log"
    ./target/debug/ds-sidecar --database-url "$CONFORMANCE_DB" \
        --listen "127.0.0.1:$SIDECAR_PORT" --long-poll-timeout-ms 3000 \
        --cors-origins https://example.com --metrics-listen off "$@" >"$SIDECAR_LOG" 2>&1 &
    SIDECAR_PID=$!
    wait_for_http "http://127.0.0.1:$SIDECAR_PORT/health"
    (
        cd tests/conformance
        [ -d node_modules/@durable-streams/server-conformance-tests ] || npm ci --no-audit --no-fund --loglevel=error
        DS_BASE_URL="http://127.0.0.1:$SIDECAR_PORT" DS_LONG_POLL_TIMEOUT_MS=3000 \
            npx vitest run --reporter=json --outputFile="$TEST_DIR/conformance-$label.json" >"$TEST_DIR/conformance-$label.out" 2>&1 || true
        [ -s "$TEST_DIR/conformance-$label.json" ] || { tail -50 "$TEST_DIR/conformance-$label.out"; exit 1; }
        node check-results.mjs "$TEST_DIR/conformance-$label.json"
        echo "official TypeScript client (@durable-streams/client) smoke test ($label)"
        DS_BASE_URL="http://127.0.0.1:$SIDECAR_PORT" npx vitest run --config vitest.client.config.mjs
    ) || { tail -30 "$SIDECAR_LOG"; exit 1; }
    kill "$SIDECAR_PID"
    wait "$SIDECAR_PID" || true
    SIDECAR_PID=
}

stage "conformance suite (@durable-streams/server-conformance-tests, tests/conformance), --auth none"
run_conformance anonymous

stage "conformance suite again with --auth jwt: every request carries a token of a granted role"
# A role the sidecar (superuser here) acts as, allowed every ds.* function
# and, with path grants, every path.
psql_at "$PORT" ds_it -q <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ds_conformance') THEN
    CREATE ROLE ds_conformance NOLOGIN;
  END IF;
END $$;
GRANT USAGE ON SCHEMA ds TO ds_conformance;
SELECT format('GRANT EXECUTE ON FUNCTION %s TO ds_conformance',
              string_agg(p.oid::regprocedure::text, ', '))
FROM pg_proc p WHERE p.pronamespace = 'ds'::regnamespace \gexec
SELECT 'SELECT ds.grant(''ds_conformance'', ''**'', ''all'')'
WHERE EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'grant' AND pronamespace = 'ds'::regnamespace) \gexec
SQL
DS_JWT_SECRET="$(head -c 32 /dev/urandom | base64)"
export DS_JWT_SECRET
DS_TOKEN="$(./target/debug/ds-token --role ds_conformance --sub conformance --expires-in 3600)"
export DS_TOKEN
run_conformance jwt --auth jwt
unset DS_TOKEN DS_JWT_SECRET

stage "State Protocol end to end (tests/state: the official @durable-streams/state client on a ds.capture'd table)"
state_started=$(date +%s)
SIDECAR_PORT="$(free_port)"
./target/debug/ds-sidecar --database-url "$CONFORMANCE_DB" --listen "127.0.0.1:$SIDECAR_PORT" \
    --long-poll-timeout-ms 3000 --metrics-listen off >"$TEST_DIR/sidecar-state.log" 2>&1 &
SIDECAR_PID=$!
wait_for_http "http://127.0.0.1:$SIDECAR_PORT/health"
(
    cd tests/state
    [ -d node_modules/@durable-streams/state ] || npm ci --no-audit --no-fund --loglevel=error
    DS_BASE_URL="http://127.0.0.1:$SIDECAR_PORT" DS_TEST_DATABASE_URL="$CONFORMANCE_DB" \
        timeout 300 node --test --test-concurrency=1
) || { tail -30 "$TEST_DIR/sidecar-state.log"; exit 1; }
kill "$SIDECAR_PID"
wait "$SIDECAR_PID" || true
SIDECAR_PID=
log "State Protocol end to end took $(($(date +%s) - state_started)) s"

stage "end-to-end fault tests (tests/e2e: sidecar + cluster)"
DS_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:$PORT/ds_it" \
    DS_SIDECAR_BIN="$ROOT/target/debug/ds-sidecar" \
    cargo test -q -p ds-e2e -- --test-threads=1

stage "upgrade test: the previous release upgraded in place (scripts/upgrade-test.sh)"
bash "$ROOT/scripts/upgrade-test.sh"

stage "backup tests: pg_dump/pg_restore and point-in-time recovery (scripts/backup-test.sh)"
bash "$ROOT/scripts/backup-test.sh"

stage "all tests passed (in $(($(date +%s) - TEST_STARTED)) s)"
