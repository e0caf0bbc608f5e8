#!/usr/bin/env bash
# Webhook subscriptions: append-to-webhook latency and deliveries/s, ours
# (release sidecar + a fresh cluster, fsync and synchronous_commit on) against
# the Node reference server @durable-streams/server 0.3.7 started with
# webhooks on (in-memory), in the same run, targets alternating in each round.
# ds-loadgen is the receiver (127.0.0.1, answers {"done": true}: the
# synchronous auto-ack) and the writer: one stream with 1 webhook
# subscription, APPENDS_1 sequential appends; then with 1,000 subscriptions,
# APPENDS_1000 appends, each timed until all 1,000 webhooks arrived.
# Each of our runs starts its own sidecar on the one cluster.
# Writes results/webhooks.md (medians over ROUNDS, ours / node ratios).
# About 5 minutes.
#   bash benches/webhooks.sh
# Environment: ROUNDS (3), APPENDS_1 (300), APPENDS_1000 (10), SUBSCRIPTIONS (1000),
#   GAP_MS (20: idle time before each append), SIDECAR_ARGS (extra sidecar flags),
#   SIDECAR (the sidecar binary), BASELINE_SIDECAR (another build: adds target ours-base),
#   SKIP_BUILD (0), DS_BENCH_PORT (24490; uses 5 ports from there),
#   PG_CONFIG (the Postgres whose binaries are used; the extension is installed there).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

BENCH="$ROOT/benches"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/bench-target}"
ROUNDS="${ROUNDS:-3}"
APPENDS_1="${APPENDS_1:-300}"
APPENDS_1000="${APPENDS_1000:-10}"
SUBSCRIPTIONS="${SUBSCRIPTIONS:-1000}"
GAP_MS="${GAP_MS:-20}"
BASE_PORT="${DS_BENCH_PORT:-24490}"
PG_PORT=$BASE_PORT
SIDECAR_PORT=$((BASE_PORT + 1))
NODE_PORT=$((BASE_PORT + 2))
RECEIVER_OURS=$((BASE_PORT + 3))
RECEIVER_NODE=$((BASE_PORT + 4))
DB=bench
WORK="$(mktemp -d /tmp/ds-bench-webhooks.XXXXXX)"
chmod 755 "$WORK"
RESULTS="$WORK/results.jsonl"
LOADGEN="$CARGO_TARGET_DIR/release/ds-loadgen"
SIDECAR="${SIDECAR:-$CARGO_TARGET_DIR/release/ds-sidecar}"
# Another sidecar build to compare with (target ours-base, same cluster, same run).
BASELINE_SIDECAR="${BASELINE_SIDECAR:-}"
TARGETS="ours${BASELINE_SIDECAR:+ ours-base} node"
PIDS=()
SIDECAR_PID=""

# sidecar_start BINARY: a sidecar for one run (two on one database would
# share the deliveries, so an A/B starts each build for its own runs only).
sidecar_start() {
    # shellcheck disable=SC2086 # SIDECAR_ARGS is a list of flags
    "$1" --database-url "postgresql://postgres@127.0.0.1:$PG_PORT/$DB" \
        --listen "127.0.0.1:$SIDECAR_PORT" --metrics-listen off ${SIDECAR_ARGS:-} \
        >>"$WORK/sidecar.log" 2>&1 &
    SIDECAR_PID=$!
    wait_for_http "http://127.0.0.1:$SIDECAR_PORT/health"
}
sidecar_stop() {
    [ -n "$SIDECAR_PID" ] || return 0
    kill "$SIDECAR_PID" 2>/dev/null || true
    wait "$SIDECAR_PID" 2>/dev/null || true
    SIDECAR_PID=""
}

cleanup() {
    local pid
    sidecar_stop
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    cluster_stop "$WORK/pg" || true
    if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

cd "$ROOT"
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
[ -x "$LOADGEN" ] && [ -x "$SIDECAR" ] || { echo "build first (SKIP_BUILD=0)" >&2; exit 1; }
for p in $PG_PORT $SIDECAR_PORT $NODE_PORT $RECEIVER_OURS $RECEIVER_NODE; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; set DS_BENCH_PORT" >&2
        exit 1
    fi
done

# Node first (see run.sh: our ports lie in the ephemeral range).
node "$BENCH/node/start.mjs" "$NODE_PORT" --webhooks >"$WORK/node.log" 2>&1 &
NODE_PID=$!
PIDS+=("$NODE_PID")
DS_TUNE_MALLOC=on cluster_start "$WORK/pg" "$PG_PORT" "$DB"
ensure_database "$PG_PORT" "$DB"
for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$NODE_PORT/" 2>/dev/null)" != 000 ] && break
    sleep 0.1
done

# hooks TARGET SUBSCRIPTIONS APPENDS: one run; a failure becomes an error line.
hooks() {
    local target="$1" subs="$2" appends="$3" port pid receiver out
    case "$target" in
        ours) sidecar_start "$SIDECAR" ;;
        ours-base) sidecar_start "$BASELINE_SIDECAR" ;;
    esac
    case "$target" in
        ours*) port=$SIDECAR_PORT pid=$SIDECAR_PID receiver=$RECEIVER_OURS ;;
        node) port=$NODE_PORT pid=$NODE_PID receiver=$RECEIVER_NODE ;;
    esac
    log "webhook ${subs}sub on $target ($appends appends; load $(cut -d' ' -f1 /proc/loadavg))"
    if out=$("$LOADGEN" --base "http://127.0.0.1:$port" --target "$target" --server-pid "$pid" \
        --max-seconds 300 webhook --subscriptions "$subs" --rounds "$appends" \
        --receiver "127.0.0.1:$receiver" --gap-ms "$GAP_MS" 2>"$WORK/loadgen.err"); then
        printf '%s\n' "$out" | tee -a "$RESULTS" | cut -c1-240 >&2
    else
        local err
        err=$(tail -c 300 "$WORK/loadgen.err" | tr -d '"\\\n')
        printf '{"scenario":"webhook","target":"%s","variant":"%ssub","error":"%s"}\n' \
            "$target" "$subs" "$err" | tee -a "$RESULTS" >&2
    fi
    [[ "$target" != ours* ]] || sidecar_stop
}

for round in $(seq 1 "$ROUNDS"); do
    log "round $round/$ROUNDS"
    for t in $TARGETS; do hooks "$t" 1 "$APPENDS_1"; done
    for t in $TARGETS; do hooks "$t" "$SUBSCRIPTIONS" "$APPENDS_1000"; done
done

LOAD="$(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
python3 "$BENCH/report.py" webhooks "$RESULTS" "$BENCH/results/webhooks.md" "$REV" "$ROUNDS" \
    "$APPENDS_1" "$APPENDS_1000" "$GAP_MS" "$LOAD" "${SIDECAR_ARGS:-}"
cp "$RESULTS" "$BENCH/results/webhooks.jsonl"
