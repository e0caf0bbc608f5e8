#!/usr/bin/env bash
# What authentication costs over HTTP: the same sidecar twice on one cluster,
# `--auth none` and `--auth jwt` (every request carries a token; it runs as a
# tenant role, SET LOCAL ROLE per request, and the extension checks its path
# grant), under the append scenarios (64 writers on 64 streams and on 1
# stream), small catch-up reads (the cost of SET LOCAL ROLE per request) and
# SSE fan-out. Rounds alternate the two; the table shows medians
# and jwt/none ratios. Results: benches/results/auth.{jsonl,md}.
#   bash benches/auth.sh     # ROUNDS=3 APPEND_SECONDS=5 FANOUT_CLIENTS=1000 FANOUT_SECONDS=10
# Needs an extension with path grants (ds.grant) for the "path checks" half;
# without it the jwt sidecar still runs every request as the tenant role and
# the report says that path checks were off.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

ROUNDS="${ROUNDS:-3}"
APPEND_SECONDS="${APPEND_SECONDS:-5}"
FANOUT_CLIENTS="${FANOUT_CLIENTS:-1000}"
FANOUT_SECONDS="${FANOUT_SECONDS:-10}"
BASE_PORT="${DS_BENCH_PORT:-24460}"
PG_PORT=$BASE_PORT
NONE_PORT=$((BASE_PORT + 1))
JWT_PORT=$((BASE_PORT + 2))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/bench-target}"
LOADGEN="$CARGO_TARGET_DIR/release/ds-loadgen"
SIDECAR="$CARGO_TARGET_DIR/release/ds-sidecar"
TOKEN_TOOL="$CARGO_TARGET_DIR/release/ds-token"
DB=bench
WORK="$(mktemp -d /tmp/ds-bench-auth.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    cluster_stop "$WORK/pg" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cd "$ROOT"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    "$ROOT/scripts/setup.sh"
    install_extension --release
    log "building ds-sidecar, ds-token and ds-loadgen (release, $CARGO_TARGET_DIR)"
    cargo build --release -q -p ds-sidecar -p ds-loadgen
fi
for p in $PG_PORT $NONE_PORT $JWT_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; set DS_BENCH_PORT" >&2
        exit 1
    fi
done

cluster_start "$WORK/pg" "$PG_PORT" "$DB"
ensure_database "$PG_PORT" "$DB"
# The tenant role: every ds.* function, and (with path grants) bench/**.
PATH_CHECKS=$(psql_at "$PG_PORT" "$DB" -tA <<'SQL'
CREATE ROLE bench_tenant NOLOGIN;
GRANT USAGE ON SCHEMA ds TO bench_tenant;
SELECT format('GRANT EXECUTE ON FUNCTION %s TO bench_tenant',
              string_agg(p.oid::regprocedure::text, ', '))
FROM pg_proc p WHERE p.pronamespace = 'ds'::regnamespace \gexec
SELECT 'SELECT ds.grant(''bench_tenant'', ''bench/**'', ''all'')'
WHERE EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'grant' AND pronamespace = 'ds'::regnamespace) \gexec
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'grant'
                         AND pronamespace = 'ds'::regnamespace) THEN 'on' ELSE 'off' END;
SQL
)
PATH_CHECKS=$(printf '%s\n' "$PATH_CHECKS" | tail -1)
log "path checks: $PATH_CHECKS"

URL="postgresql://postgres@127.0.0.1:$PG_PORT/$DB"
COMMON=(--max-sse-clients 12000 --max-long-poll-waiters 12000 --max-waiters-per-stream 12000
    --metrics-listen off)
"$SIDECAR" --database-url "$URL" --listen "127.0.0.1:$NONE_PORT" "${COMMON[@]}" \
    >"$WORK/sidecar-none.log" 2>&1 &
NONE_PID=$!
PIDS+=("$NONE_PID")
DS_JWT_SECRET="$(head -c 32 /dev/urandom | base64)"
export DS_JWT_SECRET
"$SIDECAR" --database-url "$URL" --listen "127.0.0.1:$JWT_PORT" --auth jwt "${COMMON[@]}" \
    >"$WORK/sidecar-jwt.log" 2>&1 &
JWT_PID=$!
PIDS+=("$JWT_PID")
TOKEN="$("$TOKEN_TOOL" --role bench_tenant --sub bench --expires-in 7200)"
unset DS_JWT_SECRET
wait_for_http "http://127.0.0.1:$NONE_PORT/health"
wait_for_http "http://127.0.0.1:$JWT_PORT/health"

RESULTS="$WORK/auth.jsonl"
# lg NAME AUTH ARGS...: one loadgen run against the none or jwt sidecar.
lg() {
    local name="$1" auth="$2" port pid out
    shift 2
    if [ "$auth" = jwt ]; then port=$JWT_PORT pid=$JWT_PID; else port=$NONE_PORT pid=$NONE_PID; fi
    log "$name, --auth $auth"
    if out=$(DS_BENCH_TOKEN="$([ "$auth" = jwt ] && echo "$TOKEN")" "$LOADGEN" \
        --base "http://127.0.0.1:$port" --target "$auth" --server-pid "$pid" --max-seconds 150 \
        "$@" 2>"$WORK/loadgen.err"); then
        printf '%s\n' "$out" | tee -a "$RESULTS" | cut -c1-200 >&2
    else
        echo "loadgen failed: $(tail -c 300 "$WORK/loadgen.err")" >&2
        exit 1
    fi
}
for r in $(seq 1 "$ROUNDS"); do
    for auth in none jwt; do
        lg "append 64w-64s" "$auth" append --writers 64 --streams 64 --seconds "$APPEND_SECONDS"
        lg "append 64w-1s" "$auth" append --writers 64 --streams 1 --seconds "$APPEND_SECONDS"
        lg "read 64r-64s" "$auth" read --readers 64 --streams 64 --seconds "$APPEND_SECONDS"
        lg "fanout ${FANOUT_CLIENTS}c" "$auth" fanout --clients "$FANOUT_CLIENTS" --rate 10 \
            --seconds "$FANOUT_SECONDS"
    done
done

OUT="${BENCH_RESULTS:-$ROOT/benches/results}"
mkdir -p "$OUT"
cp "$RESULTS" "$OUT/auth.jsonl"
python3 - "$RESULTS" "$PATH_CHECKS" "$ROUNDS" "$(git rev-parse --short HEAD)" >"$OUT/auth.md" <<'PY'
import json, statistics, sys
path, checks, rounds, rev = sys.argv[1:]
rows = [json.loads(l) for l in open(path) if l.strip()]
def med(scenario, variant, target, key):
    xs = [r[key] for r in rows if r.get("scenario") == scenario and r.get("variant") == variant
          and r.get("target") == target and key in r and not r.get("errors")]
    return statistics.median(xs) if xs else None
print(f"# Authentication cost (benches/auth.sh, revision {rev})\n")
print(f"Medians of {rounds} rounds; `jwt` runs every request as a tenant role "
      f"(SET LOCAL ROLE per request, appends via `as_roles`); path checks: {checks}.\n")
print("| scenario | metric | --auth none | --auth jwt | jwt / none |")
print("|---|---|---:|---:|---:|")
seen = []
for r in rows:
    k = (r.get("scenario"), r.get("variant"))
    if k not in seen:
        seen.append(k)
for scenario, variant in seen:
    keys = [("throughput", "appends/s" if scenario == "append" else "reads/s"),
            ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")]
    if scenario == "fanout":
        keys = [("p50_ms", "delivery p50 ms"), ("p99_ms", "delivery p99 ms")]
    for key, label in keys:
        a, b = med(scenario, variant, "none", key), med(scenario, variant, "jwt", key)
        ratio = f"{b / a:.2f}" if a and b else "-"
        print(f"| {scenario} {variant} | {label} | {a} | {b} | {ratio} |")
PY
log "wrote $OUT/auth.md"
cat "$OUT/auth.md"
