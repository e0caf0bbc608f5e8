#!/usr/bin/env bash
# The extra latency of reading from a hot standby: a primary and a streaming
# hot standby of it (pg_basebackup -R), two sidecars on the primary's
# database, one reading from the primary ("primary") and one reading from the
# standby (`--read-database-url`, "standby"). One writer appends through the
# primary's sidecar every INTERVAL_MS; SSE readers on both sidecars follow the
# same stream in the same run, and each receipt is timed against its append's
# send time. Writes results/standby.md (medians over ROUNDS of p50 and p99,
# and standby / primary ratios). About a minute.
#   bash benches/standby.sh
# Environment: ROUNDS (3), SECONDS_PER_ROUND (10), INTERVAL_MS (10), READERS (4 per
#   sidecar), SKIP_BUILD (0), DS_BENCH_PORT (24460; uses 4 ports from there),
#   PG_CONFIG (the Postgres whose binaries are used; the extension is installed there).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

BENCH="$ROOT/benches"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/bench-target}"
ROUNDS="${ROUNDS:-3}"
SECONDS_PER_ROUND="${SECONDS_PER_ROUND:-10}"
INTERVAL_MS="${INTERVAL_MS:-10}"
READERS="${READERS:-4}"
BASE_PORT="${DS_BENCH_PORT:-24460}"
PRIMARY_PORT=$BASE_PORT
STANDBY_PORT=$((BASE_PORT + 1))
SIDECAR_PRIMARY=$((BASE_PORT + 2))
SIDECAR_STANDBY=$((BASE_PORT + 3))
DB=bench
WORK="$(mktemp -d /tmp/ds-bench-standby.XXXXXX)"
chmod 755 "$WORK"
RESULTS="$WORK/results.jsonl"
LOADGEN="$CARGO_TARGET_DIR/release/ds-loadgen"
SIDECAR="$CARGO_TARGET_DIR/release/ds-sidecar"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    cluster_stop "$WORK/standby" || true
    cluster_stop "$WORK/primary" || true
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
fi
[ -x "$LOADGEN" ] && [ -x "$SIDECAR" ] || { echo "build first (SKIP_BUILD=0)" >&2; exit 1; }
for p in $PRIMARY_PORT $STANDBY_PORT $SIDECAR_PRIMARY $SIDECAR_STANDBY; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; set DS_BENCH_PORT" >&2
        exit 1
    fi
done

# The primary, then a standby streaming from it (same settings; cluster_start
# only adds port, socket directory and worker database to the copied config).
DS_TUNE_MALLOC=on cluster_start "$WORK/primary" "$PRIMARY_PORT" "$DB"
ensure_database "$PRIMARY_PORT" "$DB"
pg_owned_dir "$WORK/standby"
log "pg_basebackup -> $WORK/standby/data"
as_pg "$(pg_bindir)/pg_basebackup" -D "$WORK/standby/data" -h 127.0.0.1 -p "$PRIMARY_PORT" \
    -U postgres -X stream -c fast -R
echo "primary_conninfo = 'host=127.0.0.1 port=$PRIMARY_PORT user=postgres application_name=bench_standby'" \
    >>"$WORK/standby/data/postgresql.auto.conf"
DS_TUNE_MALLOC=on cluster_start "$WORK/standby" "$STANDBY_PORT" "$DB"
for _ in $(seq 1 300); do
    streaming=$(psql_at "$PRIMARY_PORT" postgres -tAc \
        "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bench_standby' AND state = 'streaming'")
    [ "$streaming" = 1 ] && break
    sleep 0.1
done
[ "$streaming" = 1 ] || { echo "the standby never started streaming" >&2; exit 1; }

PRIMARY_URL="postgresql://postgres@127.0.0.1:$PRIMARY_PORT/$DB"
STANDBY_URL="postgresql://postgres@127.0.0.1:$STANDBY_PORT/$DB"
"$SIDECAR" --database-url "$PRIMARY_URL" --listen "127.0.0.1:$SIDECAR_PRIMARY" \
    --metrics-listen off >"$WORK/sidecar-primary.log" 2>&1 &
SIDECAR_PRIMARY_PID=$!
PIDS+=("$SIDECAR_PRIMARY_PID")
"$SIDECAR" --database-url "$PRIMARY_URL" --read-database-url "$STANDBY_URL" \
    --listen "127.0.0.1:$SIDECAR_STANDBY" --metrics-listen off >"$WORK/sidecar-standby.log" 2>&1 &
PIDS+=($!)
wait_for_http "http://127.0.0.1:$SIDECAR_PRIMARY/health"
wait_for_http "http://127.0.0.1:$SIDECAR_STANDBY/health"

for round in $(seq 1 "$ROUNDS"); do
    log "round $round/$ROUNDS: append every ${INTERVAL_MS} ms for ${SECONDS_PER_ROUND} s, $READERS SSE readers per sidecar"
    "$LOADGEN" --base "http://127.0.0.1:$SIDECAR_PRIMARY" --target standby --max-seconds 60 \
        latency --interval-ms "$INTERVAL_MS" --seconds "$SECONDS_PER_ROUND" \
        --long-poll-readers 0 --sse-readers "$READERS" \
        --replica-base "http://127.0.0.1:$SIDECAR_STANDBY" | tee -a "$RESULTS" | cut -c1-200 >&2
done

LOAD="$(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
python3 - "$RESULTS" "$BENCH/results/standby.md" "$REV" "$ROUNDS" "$SECONDS_PER_ROUND" \
    "$INTERVAL_MS" "$READERS" "$LOAD" <<'PY'
import json, statistics, sys, datetime
src, out, rev, rounds, secs, interval, readers, load = sys.argv[1:]
rows = [json.loads(l) for l in open(src) if l.strip()]
by = {}
for r in rows:
    by.setdefault(r["variant"], []).append(r)
def med(mode, key):
    vals = [r[key] for r in by.get(mode, []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None
def per(mode, key):
    return " ".join(f"{r[key]:.2f}" if r.get(key) is not None else "-" for r in by.get(mode, []))
lines = [
    f"## Append to SSE receipt: reader on the primary vs on a hot standby ({datetime.date.today()})",
    "",
    "| reader's sidecar reads from | p50 ms per round | median p50 ms | p99 ms per round | median p99 ms | delivered / expected |",
    "|---|---|---|---|---|---|",
]
for mode, label in [("sse", "primary"), ("sse-replica", "standby (`--read-database-url`)")]:
    d = sum(r.get("delivered", 0) for r in by.get(mode, []))
    e = sum(r.get("expected", 0) for r in by.get(mode, []))
    p50, p99 = med(mode, "p50_ms"), med(mode, "p99_ms")
    lines.append(f"| {label} | {per(mode, 'p50_ms')} | {p50:.2f} | {per(mode, 'p99_ms')} | {p99:.2f} | {d} / {e} |")
r50 = med("sse-replica", "p50_ms") / med("sse", "p50_ms")
r99 = med("sse-replica", "p99_ms") / med("sse", "p99_ms")
lines += [
    "",
    f"Standby / primary: p50 {r50:.2f}x, p99 {r99:.2f}x (medians over {rounds} rounds); extra "
    f"median latency {med('sse-replica', 'p50_ms') - med('sse', 'p50_ms'):.2f} ms at p50, "
    f"{med('sse-replica', 'p99_ms') - med('sse', 'p99_ms'):.2f} ms at p99. Load average at the "
    f"end: {load} (absolute numbers move with it; compare the ratios).",
    "",
    f"Command: `bash benches/standby.sh` (ROUNDS={rounds}, SECONDS_PER_ROUND={secs}, "
    f"INTERVAL_MS={interval}, READERS={readers}; release build of {rev}). One writer appends "
    "100-byte bodies through the primary's sidecar; both sidecars LISTEN on the primary; the "
    "standby's sidecar delivers a wake-up after reading the primary's WAL position and waits "
    "until the standby has replayed it (polled every 2 ms while anyone waits).",
    "",
]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
PY
