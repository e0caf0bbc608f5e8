#!/usr/bin/env bash
# HTTP benchmarks: ds-sidecar + Postgres ("ours") against the upstream Rust
# server durable-streams 0.1.5 ("upstream-rust", durable: group-commit
# fdatasync) and the Node reference server @durable-streams/server 0.3.7,
# in-memory ("node-mem") and file-backed ("node-file"), plus ds.append vs
# INSERT over SQL (pgbench).
# Everything on loopback; results in benches/results/latest.{json,md}.
# See benches/README.md.
#   bash benches/run.sh
# Environment: REPEATS (5), APPEND_SECONDS (5), LATENCY_SECONDS (5),
#   FANOUT_SECONDS (10), FANOUT_10K (1: also 10,000 SSE clients), WAKE_WAITERS (10000),
#   CATCHUP_MIB (64), SQL_SECONDS (5), SQL_REPEATS (2),
#   TARGETS ("ours upstream-rust node-mem node-file"),
#   SCENARIOS ("append latency catchup producer wake fanout sql": which parts run),
#   SKIP_BUILD (0), SIDECAR (the sidecar binary, for A/B of two builds),
#   DS_BENCH_PORT (24450; uses 5 ports from there).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

BENCH="$ROOT/benches"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/bench-target}"
REPEATS="${REPEATS:-5}"
APPEND_SECONDS="${APPEND_SECONDS:-5}"
LATENCY_SECONDS="${LATENCY_SECONDS:-5}"
FANOUT_SECONDS="${FANOUT_SECONDS:-10}"
FANOUT_10K="${FANOUT_10K:-1}"
WAKE_WAITERS="${WAKE_WAITERS:-10000}"
CATCHUP_MIB="${CATCHUP_MIB:-64}"
SQL_SECONDS="${SQL_SECONDS:-5}"
SQL_REPEATS="${SQL_REPEATS:-2}"
TARGETS="${TARGETS:-ours upstream-rust node-mem node-file}"
SCENARIOS="${SCENARIOS:-append latency catchup producer wake fanout sql}"
BASE_PORT="${DS_BENCH_PORT:-24450}"
PG_PORT=$BASE_PORT
SIDECAR_PORT=$((BASE_PORT + 1))
NODE_MEM_PORT=$((BASE_PORT + 2))
NODE_FILE_PORT=$((BASE_PORT + 3))
RUST_PORT=$((BASE_PORT + 4))
DB=bench
WORK="$(mktemp -d /tmp/ds-bench.XXXXXX)"
chmod 755 "$WORK" # the cluster (user postgres) lives inside
RESULTS="$WORK/results.jsonl"
LOADGEN="$CARGO_TARGET_DIR/release/ds-loadgen"
SIDECAR="${SIDECAR:-$CARGO_TARGET_DIR/release/ds-sidecar}"
# The upstream Rust server, installed from crates.io once per target dir.
RUST_VERSION=0.1.5
RUST_ROOT="$CARGO_TARGET_DIR/upstream-rust-$RUST_VERSION"
RUST_SERVER="$RUST_ROOT/bin/durable-streams-server"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    cluster_stop "$WORK/pg" || true
    if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT
# targeted NAME: whether TARGETS names it.
targeted() { [[ " $TARGETS " == *" $1 "* ]]; }

started=$(date +%s)
cd "$ROOT"
# What "ours" is: the revision built (plus "+dirty" for uncommitted changes to it).
REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -z "$(git -C "$ROOT" status --porcelain -- src sidecar core sql 2>/dev/null)" ] || REV="$REV+dirty"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    install_extension --release
    log "building ds-sidecar and ds-loadgen (release, $CARGO_TARGET_DIR)"
    cargo build --release -q -p ds-sidecar -p ds-loadgen
    if [ ! -d "$BENCH/node/node_modules" ]; then
        log "npm ci (benches/node)"
        (cd "$BENCH/node" && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
if [ ! -x "$RUST_SERVER" ] && targeted upstream-rust; then
    log "cargo install durable-streams $RUST_VERSION (upstream Rust server, into $RUST_ROOT)"
    CARGO_TARGET_DIR="$RUST_ROOT/target" cargo install -q durable-streams --version "$RUST_VERSION" \
        --locked --root "$RUST_ROOT"
    rm -rf "$RUST_ROOT/target"
fi
[ -x "$LOADGEN" ] && [ -x "$SIDECAR" ] || { echo "build first (SKIP_BUILD=0)" >&2; exit 1; }

# Ports must be free: we never take over someone else's server.
for p in $PG_PORT $SIDECAR_PORT $NODE_MEM_PORT $NODE_FILE_PORT $RUST_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; set DS_BENCH_PORT" >&2
        exit 1
    fi
done

# Answers at all (any HTTP status), within 30 s.
wait_for_listen() {
    local i
    for i in $(seq 1 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$1" 2>/dev/null)" != 000 ] && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    return 1
}

# Node first: our ports lie in the ephemeral range, and the cluster's and
# sidecar's client connections could otherwise take one of them.
if targeted node-mem; then
    node "$BENCH/node/start.mjs" "$NODE_MEM_PORT" >"$WORK/node-mem.log" 2>&1 &
    NODE_MEM_PID=$!
    PIDS+=("$NODE_MEM_PID")
fi
if targeted node-file; then
    mkdir -p "$WORK/node-file"
    node "$BENCH/node/start.mjs" "$NODE_FILE_PORT" "$WORK/node-file" >"$WORK/node-file.log" 2>&1 &
    NODE_FILE_PID=$!
    PIDS+=("$NODE_FILE_PID")
fi
# Durable (the default --durability wal: an append is acknowledged after its
# group commit's fdatasync), one WAL shard per core, as installed; the
# long-poll timeout of the sidecar's default (30 s), so the 10,000 long-polls
# of the wake-up scenario are still waiting when its append comes.
if targeted upstream-rust; then
    mkdir -p "$WORK/upstream-rust"
    "$RUST_SERVER" --port "$RUST_PORT" --data-dir "$WORK/upstream-rust" \
        --long-poll-timeout-ms 30000 >"$WORK/upstream-rust.log" 2>&1 &
    RUST_PID=$!
    PIDS+=("$RUST_PID")
fi
DS_TUNE_MALLOC=on cluster_start "$WORK/pg" "$PG_PORT" "$DB"
ensure_database "$PG_PORT" "$DB"
# The per-stream and global waiter limits default to exactly 10,000; the
# 10,000-client scenarios need a little headroom for their own writer.
"$SIDECAR" --database-url "postgresql://postgres@127.0.0.1:$PG_PORT/$DB" \
    --listen "127.0.0.1:$SIDECAR_PORT" --max-sse-clients 12000 \
    --max-long-poll-waiters 12000 --max-waiters-per-stream 12000 --metrics-listen off \
    >"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!
PIDS+=("$SIDECAR_PID")
wait_for_http "http://127.0.0.1:$SIDECAR_PORT/health"
! targeted node-mem || wait_for_listen "http://127.0.0.1:$NODE_MEM_PORT/"
! targeted node-file || wait_for_listen "http://127.0.0.1:$NODE_FILE_PORT/"
! targeted upstream-rust || wait_for_listen "http://127.0.0.1:$RUST_PORT/health"

base_of() {
    case "$1" in
        ours) echo "http://127.0.0.1:$SIDECAR_PORT" ;;
        node-mem) echo "http://127.0.0.1:$NODE_MEM_PORT" ;;
        node-file) echo "http://127.0.0.1:$NODE_FILE_PORT" ;;
        upstream-rust) echo "http://127.0.0.1:$RUST_PORT" ;;
    esac
}
# The upstream Rust server serves a stream at any path, not under /v1/stream/.
prefix_of() {
    case "$1" in
        upstream-rust) echo / ;;
        *) echo /v1/stream/ ;;
    esac
}
pid_of() {
    case "$1" in
        ours) echo "$SIDECAR_PID" ;;
        node-mem) echo "$NODE_MEM_PID" ;;
        node-file) echo "$NODE_FILE_PID" ;;
        upstream-rust) echo "$RUST_PID" ;;
    esac
}

# lg NAME TARGET ARGS...: one loadgen run; a failure becomes an error line.
lg() {
    local name="$1" target="$2" out
    shift 2
    log "$name on $target"
    if out=$("$LOADGEN" --base "$(base_of "$target")" --stream-prefix "$(prefix_of "$target")" --target "$target" --server-pid "$(pid_of "$target")" \
        --max-seconds 150 "$@" 2>"$WORK/loadgen.err"); then
        printf '%s\n' "$out" | tee -a "$RESULTS" | cut -c1-240 >&2
    else
        local err
        err=$(tail -c 300 "$WORK/loadgen.err" | tr -d '"\\\n')
        printf '{"scenario":"%s","target":"%s","variant":"%s","error":"%s"}\n' \
            "${name%% *}" "$target" "${name#* }" "$err" | tee -a "$RESULTS" >&2
    fi
}

# each REPS NAME ARGS...: REPS rounds, targets alternating within a round.
each() {
    local reps="$1" name="$2" r t
    shift 2
    for r in $(seq 1 "$reps"); do
        for t in $TARGETS; do lg "$name" "$t" "$@"; done
    done
}

# wanted PART: whether SCENARIOS names it.
wanted() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# Most important first: appends, latency, catch-up; then producers, wake-up, fan-out.
if wanted append; then
    each "$REPEATS" "append 64w-64s" append --writers 64 --streams 64 --seconds "$APPEND_SECONDS"
    each "$REPEATS" "append 64w-1s" append --writers 64 --streams 1 --seconds "$APPEND_SECONDS"
fi
if wanted latency; then
    each "$REPEATS" "latency 10ms" latency --interval-ms 10 --seconds "$LATENCY_SECONDS" \
        --long-poll-readers 1 --sse-readers 1
fi
wanted catchup && each 1 "catchup ${CATCHUP_MIB}MiB" catchup --mib "$CATCHUP_MIB" --reads 3
if wanted producer; then
    each "$REPEATS" "append_producer 64w-64s" append --producer --writers 64 --streams 64 --seconds "$APPEND_SECONDS"
    each "$REPEATS" "append_producer 64w-1s" append --producer --writers 64 --streams 1 --seconds "$APPEND_SECONDS"
fi
wanted wake && each 1 "wake ${WAKE_WAITERS}w" wake --waiters "$WAKE_WAITERS"
if wanted fanout; then
    each 1 "fanout 1000c" fanout --clients 1000 --rate 10 --seconds "$FANOUT_SECONDS"
    if [ "$FANOUT_10K" = 1 ]; then
        each 1 "fanout 10000c" fanout --clients 10000 --rate 10 --seconds "$FANOUT_SECONDS"
    fi
fi
wanted sql || SQL_REPEATS=0

# SQL: ds.append vs a plain INSERT of the same 100 bytes, same cluster.
log "SQL comparison (pgbench, $SQL_SECONDS s per run)"
HEX=$(printf '61%.0s' $(seq 1 100)) # 100 bytes of 'a'
psql_at "$PG_PORT" "$DB" -q >/dev/null <<SQL
CREATE TABLE bench_raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, data bytea NOT NULL);
SELECT count(*) FROM generate_series(0, 63) g, LATERAL ds.create('bench/sql/own-' || g, 'application/octet-stream') c;
SELECT ds.create('bench/sql/one', 'application/octet-stream');
SQL
mkdir -p "$WORK/sql"
echo "SELECT ds.append('bench/sql/own-' || :client_id::text, '\\x$HEX'::bytea);" >"$WORK/sql/append-own.sql"
echo "SELECT ds.append('bench/sql/one', '\\x$HEX'::bytea);" >"$WORK/sql/append-one.sql"
echo "INSERT INTO bench_raw (data) VALUES ('\\x$HEX'::bytea);" >"$WORK/sql/insert.sql"
for r in $(seq 1 "$SQL_REPEATS"); do
    for c in 1 64; do
        for kind in append-own append-one insert; do
            d="$WORK/sql/$kind-$c-$r"
            mkdir -p "$d"
            log "pgbench $kind, $c clients"
            (cd "$d" && "$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared \
                -c "$c" -j "$((c < 2 ? 1 : 2))" -T "$SQL_SECONDS" -l -f "$WORK/sql/$kind.sql" "$DB" \
                >"$d/out.txt" 2>&1) || true
            python3 "$BENCH/report.py" pgbench "$kind" "$c" "$d/out.txt" "$d" | tee -a "$RESULTS" >&2
        done
    done
done

mem_kb=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
python3 - "$WORK/machine.json" <<PY
import json, sys
json.dump({
    "nproc": $(nproc),
    "cpu": """$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')""",
    "memory_gib": round($mem_kb / 1048576, 1),
    "kernel": "$(uname -r)",
    "postgres": """$("$(pg_bindir)/postgres" --version)""",
    "node": "$(node --version)",
    "revision": "$REV",
    "run_seconds": $(( $(date +%s) - started )),
    "date": "$(date -u +%FT%TZ)",
}, open(sys.argv[1], "w"))
PY
mkdir -p "$BENCH/results"
python3 "$BENCH/report.py" report "$RESULTS" "$WORK/machine.json" \
    "$BENCH/results/latest.json" "$BENCH/results/latest.md"
cp "$RESULTS" "$BENCH/results/latest.jsonl"
log "wrote benches/results/latest.md ($(( $(date +%s) - started )) s)"
cat "$BENCH/results/latest.md"
