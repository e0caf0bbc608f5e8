#!/usr/bin/env bash
# Where an HTTP append's CPU time goes: one cluster and one release sidecar
# (as in run.sh), ds-loadgen appending (64 writers, 64 streams then 1
# stream), and for each shape
#   - CPU per append of every process (user + system ticks from
#     /proc/PID/stat over the measured window, divided by the appends made):
#     the sidecar, each Postgres backend by its role, the load generator;
#   - `perf record` of the sidecar (DWARF call graphs) and of all Postgres
#     processes (flat, by symbol), reported as the top symbols.
# Results in $OUT (default /tmp/ds-profile): cpu-<shape>.txt,
# sidecar-<shape>.txt, postgres-<shape>.txt. See benches/results/profile.md.
#   SKIP_BUILD=1 bash benches/profile.sh
# Environment: SECONDS_PER_SHAPE (8), SHAPES ("64s 1s"), PERF (1: also record
# profiles; 0: CPU per append only), SIDECAR (the binary; A/B of two builds),
# SIDECAR_ARGS (extra sidecar flags),
# OUT, SKIP_BUILD, DS_BENCH_PORT (24450; uses 2 ports from there).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/bench-target}"
SECONDS_PER_SHAPE="${SECONDS_PER_SHAPE:-8}"
SHAPES="${SHAPES:-64s 1s}"
PERF="${PERF:-1}"
OUT="${OUT:-/tmp/ds-profile}"
PG_PORT="${DS_BENCH_PORT:-24450}"
SIDECAR_PORT=$((PG_PORT + 1))
DB=bench
WORK="$(mktemp -d /tmp/ds-profile.XXXXXX)"
chmod 755 "$WORK"
LOADGEN="$CARGO_TARGET_DIR/release/ds-loadgen"
SIDECAR="${SIDECAR:-$CARGO_TARGET_DIR/release/ds-sidecar}"
SIDECAR_PID=""
mkdir -p "$OUT"

cleanup() {
    [ -z "$SIDECAR_PID" ] || { kill "$SIDECAR_PID" 2>/dev/null; wait "$SIDECAR_PID" 2>/dev/null; } || true
    cluster_stop "$WORK/pg" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

cd "$ROOT"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    install_extension --release
    cargo build --release -q -p ds-sidecar -p ds-loadgen
fi
[ "$PERF" = 0 ] || command -v perf >/dev/null || { echo "perf missing (apt-get install linux-perf)" >&2; exit 1; }

DS_TUNE_MALLOC=on cluster_start "$WORK/pg" "$PG_PORT" "$DB"
ensure_database "$PG_PORT" "$DB"
# shellcheck disable=SC2086
"$SIDECAR" --database-url "postgresql://postgres@127.0.0.1:$PG_PORT/$DB" \
    --listen "127.0.0.1:$SIDECAR_PORT" --metrics-listen off ${SIDECAR_ARGS:-} >"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!
wait_for_http "http://127.0.0.1:$SIDECAR_PORT/health"

# ticks PID: user + system clock ticks of a process (0 once it is gone).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The Postgres processes of the cluster, as "pid role" lines.
pg_processes() {
    local postmaster
    postmaster=$(head -1 "$WORK/pg/data/postmaster.pid")
    echo "$postmaster postmaster"
    ps -o pid=,args= --ppid "$postmaster" | sed -E 's/^ *([0-9]+) postgres: (.*)$/\1 \2/' |
        sed -E 's/ 127\.0\.0\.1\([0-9]+\)//'
}

for shape in $SHAPES; do
    streams=${shape%s}
    log "append 64 writers, $streams stream(s): warm-up 3 s"
    "$LOADGEN" --base "http://127.0.0.1:$SIDECAR_PORT" --target ours --max-seconds 60 \
        append --writers 64 --streams "$streams" --seconds 3 >/dev/null
    log "append 64 writers, $streams stream(s): $SECONDS_PER_SHAPE s measured"
    "$LOADGEN" --base "http://127.0.0.1:$SIDECAR_PORT" --target ours --max-seconds 120 \
        append --writers 64 --streams "$streams" --seconds "$((SECONDS_PER_SHAPE + 8))" \
        >"$OUT/loadgen-$shape.json" 2>"$OUT/loadgen-$shape.err" &
    lg=$!
    sleep 2 # streams created, connections open
    pg_processes >"$WORK/pg-$shape.txt"
    unset before after
    declare -A before=()
    while read -r pid _; do before[$pid]=$(ticks "$pid"); done <"$WORK/pg-$shape.txt"
    before[$SIDECAR_PID]=$(ticks "$SIDECAR_PID")
    before[$lg]=$(ticks "$lg")
    # Appends made: 100-byte bodies, so bytes appended / 100 (rotation moves
    # rows out of ds.messages, the tails stay).
    bytes_sql="SELECT coalesce(sum(tail_pos), 0) FROM ds.streams"
    bytes_before=$(psql_at "$PG_PORT" "$DB" -tAc "$bytes_sql")
    # Commits in the database (the sidecar's batches, plus a few of the
    # workers'): appends per commit is about the group-commit batch size.
    xact_sql="SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    xacts_before=$(psql_at "$PG_PORT" "$DB" -tAc "$xact_sql")
    started=$(date +%s.%N)
    if [ "$PERF" = 1 ]; then
        perf record -q --call-graph dwarf,32768 -F 999 -p "$SIDECAR_PID" -o "$OUT/sidecar-$shape.data" \
            -- sleep "$SECONDS_PER_SHAPE" 2>/dev/null &
        p1=$!
        perf record -q -F 999 -p "$(cut -d' ' -f1 "$WORK/pg-$shape.txt" | paste -sd,)" \
            -o "$OUT/postgres-$shape.data" -- sleep "$SECONDS_PER_SHAPE" 2>/dev/null &
        p2=$!
        wait "$p1" "$p2"
    else
        sleep "$SECONDS_PER_SHAPE"
    fi
    declare -A after=()
    for pid in "${!before[@]}"; do after[$pid]=$(ticks "$pid"); done
    bytes_after=$(psql_at "$PG_PORT" "$DB" -tAc "$bytes_sql")
    xacts=$(($(psql_at "$PG_PORT" "$DB" -tAc "$xact_sql") - xacts_before))
    window=$(echo "$(date +%s.%N) - $started" | bc)
    appends=$(((bytes_after - bytes_before) / 100))
    {
        echo "shape 64 writers, $streams stream(s): $appends appends in ${window} s" \
            "($(echo "$appends / $window" | bc) appends/s), $xacts commits" \
            "($(echo "scale=1; $appends / ($xacts + 1)" | bc) appends per commit)"
        printf '%-12s %10s  %s\n' "us/append" "pid" "process"
        hz=$(getconf CLK_TCK)
        report_cpu() {
            local pid="$1" name="$2" d
            d=$((${after[$pid]:-0} - ${before[$pid]:-0}))
            [ "$d" -gt 0 ] || return 0
            printf '%-12s %10s  %s\n' "$(echo "scale=1; $d * 1000000 / $hz / $appends" | bc)" "$pid" "$name"
        }
        report_cpu "$SIDECAR_PID" ds-sidecar
        report_cpu "$lg" ds-loadgen
        while read -r pid role; do report_cpu "$pid" "postgres: $role"; done <"$WORK/pg-$shape.txt"
    } | tee "$OUT/cpu-$shape.txt" >&2
    wait "$lg"
    if [ "$PERF" = 1 ]; then
        perf report -i "$OUT/sidecar-$shape.data" --no-children --sort symbol --stdio -g none \
            --percent-limit 0.3 2>/dev/null | grep -v '^$' >"$OUT/sidecar-$shape.txt"
        perf report -i "$OUT/sidecar-$shape.data" --children --sort symbol --stdio -g none \
            --percent-limit 2 2>/dev/null | grep -v '^$' >"$OUT/sidecar-children-$shape.txt"
        perf report -i "$OUT/postgres-$shape.data" --no-children --sort comm,dso,symbol --stdio \
            --percent-limit 0.3 2>/dev/null | grep -v '^$' >"$OUT/postgres-$shape.txt"
    fi
done
log "profiles in $OUT"
