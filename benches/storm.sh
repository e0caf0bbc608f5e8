#!/usr/bin/env bash
# Wake storms: WAITERS SSE clients spread over STREAMS streams while WRITERS
# append to random streams, all writers on the same tick (a burst every
# INTERVAL_MS, so the sidecar's group commit makes batches over up to WRITERS
# streams). Measures delivery latency (p50/p99, every message delivered?),
# ds.read_chunk calls per delivery (pg_stat_user_functions: how many reads a
# wake-up costs; "*" makes every waiter of every stream re-read) and the CPU
# seconds of the sidecar and of Postgres during the run. With BASELINE_DIR
# (a directory holding an older build's ds-sidecar and durable_streams.so of
# the same extension version), "before" and "after" alternate in each round
# on the same cluster. Writes results/storm.md.
#   bash benches/storm.sh
#   BASELINE_DIR=/tmp/old bash benches/storm.sh   # old build: see benches/README.md
# Environment: ROUNDS (3), WAITERS (10000), STREAMS (1000), WRITER_COUNTS ("64 256"),
#   INTERVAL_MS (100), SECONDS_PER_RUN (10), SKIP_BUILD (0), DS_BENCH_PORT (24470; 2 ports).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

BENCH="$ROOT/benches"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/bench-target}"
ROUNDS="${ROUNDS:-3}"
WAITERS="${WAITERS:-10000}"
STREAMS="${STREAMS:-1000}"
WRITER_COUNTS="${WRITER_COUNTS:-64 256}"
INTERVAL_MS="${INTERVAL_MS:-100}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
PG_PORT="${DS_BENCH_PORT:-24470}"
SIDECAR_PORT=$((PG_PORT + 1))
DB=bench
WORK="$(mktemp -d /tmp/ds-bench-storm.XXXXXX)"
chmod 755 "$WORK"
RESULTS="$WORK/results.jsonl"
LOADGEN="$CARGO_TARGET_DIR/release/ds-loadgen"
LIBDIR="$("$PG_CONFIG" --pkglibdir)"
SIDECAR_PID=

cleanup() {
    [ -z "$SIDECAR_PID" ] || { kill "$SIDECAR_PID" 2>/dev/null; wait "$SIDECAR_PID" 2>/dev/null; }
    cluster_stop "$WORK/pg" || true
    # Leave this tree's library installed.
    [ ! -f "$WORK/after/durable_streams.so" ] || put_library "$WORK/after/durable_streams.so"
    if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
put_library() {
    install -m 0755 "$1" "$LIBDIR/durable_streams.so.new.$$"
    mv -f "$LIBDIR/durable_streams.so.new.$$" "$LIBDIR/durable_streams.so"
}
trap cleanup EXIT

cd "$ROOT"
REV="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -z "$(git status --porcelain -- src sidecar core sql 2>/dev/null)" ] || REV="$REV+dirty"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    install_extension --release
    log "building ds-sidecar and ds-loadgen (release, $CARGO_TARGET_DIR)"
    cargo build --release -q -p ds-sidecar -p ds-loadgen
fi
mkdir -p "$WORK/after"
cp "$CARGO_TARGET_DIR/release/ds-sidecar" "$LIBDIR/durable_streams.so" "$WORK/after/"
BUILDS="after"
if [ -n "${BASELINE_DIR:-}" ]; then
    [ -x "$BASELINE_DIR/ds-sidecar" ] && [ -f "$BASELINE_DIR/durable_streams.so" ] ||
        { echo "BASELINE_DIR needs ds-sidecar and durable_streams.so" >&2; exit 1; }
    BUILDS="before after"
fi
for p in $PG_PORT $SIDECAR_PORT; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "port $p is in use; set DS_BENCH_PORT" >&2
        exit 1
    fi
done

DS_TUNE_MALLOC=on cluster_start "$WORK/pg" "$PG_PORT" "$DB"
ensure_database "$PG_PORT" "$DB"
# ds.read_chunk is a C function: counted only with track_functions = all.
psql_at "$PG_PORT" postgres -qc "ALTER SYSTEM SET track_functions = 'all'" >/dev/null

dir_of() { if [ "$1" = before ]; then echo "$BASELINE_DIR"; else echo "$WORK/after"; fi; }
# CPU seconds (user + system) of the sidecar plus every Postgres process.
cpu_seconds() {
    python3 - "$SIDECAR_PID" "$WORK/pg/data/postmaster.pid" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
postmaster = open(sys.argv[2]).readline().strip()
pids = {sys.argv[1], postmaster}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            if open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == postmaster:
                pids.add(p)
        except OSError:
            pass
total = 0
for p in pids:
    try:
        f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12])
    except OSError:
        pass
print(total / tick)
PY
}
read_chunk_calls() {
    psql_at "$PG_PORT" "$DB" -tAc "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions \
        WHERE schemaname = 'ds' AND funcname = 'read_chunk'"
}

# run BUILD WRITERS: one storm against a restarted cluster and a fresh sidecar of BUILD.
run() {
    local build="$1" writers="$2" dir out reads0 reads1 cpu0 cpu1
    dir="$(dir_of "$build")"
    put_library "$dir/durable_streams.so"
    as_pg "$(pg_bindir)/pg_ctl" -D "$WORK/pg/data" -w -l "$WORK/pg/server.log" restart >/dev/null
    "$dir/ds-sidecar" --database-url "postgresql://postgres@127.0.0.1:$PG_PORT/$DB" \
        --listen "127.0.0.1:$SIDECAR_PORT" --max-sse-clients $((WAITERS + 1000)) \
        --max-waiters-per-stream $((WAITERS + 1000)) --metrics-listen off \
        >>"$WORK/sidecar-$build.log" 2>&1 &
    SIDECAR_PID=$!
    wait_for_http "http://127.0.0.1:$SIDECAR_PORT/health"
    sleep 11 # idle backends flush their function statistics within 10 s
    reads0=$(read_chunk_calls)
    cpu0=$(cpu_seconds)
    log "storm: $build, $writers writers ($(uptime | sed 's/.*load/load/'))"
    if out=$("$LOADGEN" --base "http://127.0.0.1:$SIDECAR_PORT" --target "$build" \
        --server-pid "$SIDECAR_PID" --max-seconds 300 storm --waiters "$WAITERS" \
        --streams "$STREAMS" --writers "$writers" --interval-ms "$INTERVAL_MS" \
        --seconds "$SECONDS_PER_RUN" 2>"$WORK/loadgen.err"); then
        cpu1=$(cpu_seconds)
        kill "$SIDECAR_PID"
        wait "$SIDECAR_PID" 2>/dev/null || true
        SIDECAR_PID=
        sleep 11
        reads1=$(read_chunk_calls)
        python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(read_chunk_calls=int(sys.argv[2]), server_cpu_s=round(float(sys.argv[4])-float(sys.argv[3]),2)); print(json.dumps(d))' \
            "$out" "$((reads1 - reads0))" "$cpu0" "$cpu1" | tee -a "$RESULTS" | cut -c1-300 >&2
    else
        tail -5 "$WORK/loadgen.err" >&2
        kill "$SIDECAR_PID"
        wait "$SIDECAR_PID" 2>/dev/null || true
        SIDECAR_PID=
    fi
}

for r in $(seq 1 "$ROUNDS"); do
    for writers in $WRITER_COUNTS; do
        for build in $BUILDS; do run "$build" "$writers"; done
    done
done

python3 - "$RESULTS" "$BENCH/results/storm.md" "$REV" "$(nproc)" <<'PY'
import json, statistics, sys
from collections import defaultdict
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cells = defaultdict(list)
for r in rows:
    cells[(r["writers"], r["target"])].append(r)
def med(rs, f):
    v = [f(r) for r in rs if f(r) is not None]
    return round(statistics.median(v), 1) if v else None
out = [f"## Wake storms (benches/storm.sh, revision {sys.argv[3]}, {sys.argv[4]} cores)", ""]
r0 = rows[0] if rows else {}
out.append(f"{r0.get('waiters')} SSE waiters over {r0.get('streams')} streams; every writer appends 100 bytes "
           f"to a random stream every {r0.get('interval_ms')} ms, all on the same tick; "
           f"medians of {max((len(v) for v in cells.values()), default=0)} rounds. "
           "Reads per delivery = ds.read_chunk calls / messages delivered (waiters of one stream share reads); "
           "server CPU = sidecar + Postgres CPU seconds over the whole run (connecting included).")
out.append("")
out.append("| writers | build | appends/s | delivered / expected | p50 ms | p99 ms | max ms | reads per delivery | read_chunk calls | server CPU s | loadgen CPU % |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|")
for (w, t), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1] != "before")):
    v = [r["read_chunk_calls"] / r["delivered"] for r in rs if r.get("delivered")]
    rpd = statistics.median(v) if v else float("nan")
    out.append(f"| {w} | {t} | {med(rs, lambda r: r.get('appends_per_s'))} | "
               f"{int(med(rs, lambda r: r.get('delivered')))} / {int(med(rs, lambda r: r.get('expected')))} | "
               f"{med(rs, lambda r: r.get('p50_ms'))} | {med(rs, lambda r: r.get('p99_ms'))} | {med(rs, lambda r: r.get('max_ms'))} | "
               f"{rpd:.3f} | {int(med(rs, lambda r: r['read_chunk_calls']))} | {med(rs, lambda r: r['server_cpu_s'])} | "
               f"{med(rs, lambda r: r.get('loadgen_cpu_pct'))} |")
out.append("")
out.append("Per run: " + "; ".join(
    f"{r['target']} {r['writers']}w p99 {r.get('p99_ms')} reads {r['read_chunk_calls']} cpu {r['server_cpu_s']}" for r in rows))
out.append("")
out.append("Command: `BASELINE_DIR=... bash benches/storm.sh` (see benches/README.md).")
open(sys.argv[2], "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
