#!/usr/bin/env bash
# What announcing appends costs: the same pgbench append load with the
# doorbell (worker sends one NOTIFY per wake-up), with a plain pg_notify per
# appending transaction (database the worker does not serve), and with
# announcing off (ds.notify = off); plus "checked": the doorbell mode run as
# a non-superuser role, so every append checks its path grant and quota.
# Rounds rotate the modes; the table shows medians and ratios to "off".
#   bash benches/doorbell.sh          # CLIENTS=64 STREAMS=64 SECONDS_PER_RUN=10 ROUNDS=5
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

CLIENTS="${CLIENTS:-64}"
STREAMS="${STREAMS:-64}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
ROUNDS="${ROUNDS:-5}"
PORT="${DS_BENCH_PORT:-24382}"
DIR="$(mktemp -d /tmp/ds-bench-doorbell.XXXXXX)"
trap 'cluster_stop "$DIR" || true; rm -rf "$DIR"' EXIT

"$ROOT/scripts/setup.sh"
cd "$ROOT"
install_extension --release
DS_TUNE_MALLOC=on cluster_start "$DIR" "$PORT" bench          # the workers serve database "bench"
for db in bench bench_fallback; do
    ensure_database "$PORT" "$db"
    psql_at "$PORT" "$db" -qc "SELECT ds.create('s' || i) FROM generate_series(1, $STREAMS) i" >/dev/null
done
# The role of the "checked" mode: EXECUTE on ds.append and a grant on s*.
psql_at "$PORT" bench -q >/dev/null <<'SQL'
DO $$ BEGIN CREATE ROLE bench_tenant; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT USAGE ON SCHEMA ds TO bench_tenant;
GRANT EXECUTE ON FUNCTION ds.append(text, bytea) TO bench_tenant;
SELECT ds.grant('bench_tenant', '*', 'append');
SQL
# One listener in each database, as a sidecar would have. It must keep
# reading: psql only takes notifications off the socket when it runs a
# command, and a listener that stops reading holds the notification queue's
# tail, so the queue (and every later NOTIFY) grows for the rest of the run.
LISTENERS=()
for db in bench bench_fallback; do
    channel="$(psql_at "$PORT" "$db" -tAc "SELECT ds.notify_channel()")"
    (echo "LISTEN \"$channel\";"; for _ in $(seq 1 18000); do echo "SELECT 1;"; sleep 0.05; done) |
        psql -X -q -h 127.0.0.1 -p "$PORT" -U postgres -d "$db" >/dev/null 2>&1 &
    LISTENERS+=($!)
done
trap 'kill "${LISTENERS[@]}" 2>/dev/null || true; cluster_stop "$DIR" || true; rm -rf "$DIR"' EXIT

cat >"$DIR/append.sql" <<SQL
\set s random(1, $STREAMS)
SELECT ds.append('s' || :s, '\\x$(printf '%0200d' 0)'::bytea);
SQL
run() { # mode -> TPS
    local db=bench opts=""
    case "$1" in
        fallback) db=bench_fallback ;;
        off) opts="-c ds.notify=off" ;;
        checked) opts="-c role=bench_tenant" ;;
    esac
    PGOPTIONS="$opts" "$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c "$CLIENTS" -j 2 \
        -T "$SECONDS_PER_RUN" -f "$DIR/append.sql" "$db" 2>/dev/null | awk '/^tps/ {print int($3)}'
}
declare -A results
# A discarded warm-up (caches, first checkpoint), then rounds that rotate
# which mode goes first, so no mode always pays for a cold start.
log "warm-up"
run doorbell >/dev/null
modes=(doorbell fallback off checked)
for r in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2 3; do
        mode=${modes[$(((r + i) % 4))]}
        log "round $r: $mode"
        results[$mode]+="$(run "$mode") "
    done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
off=$(echo "${results[off]}" | median)
cat <<TABLE

## Cost of announcing appends: $CLIENTS clients, $STREAMS streams, 100-byte appends, synchronous_commit on, $(nproc) cores

| mode | TPS per round | median TPS | vs. off |
|---|---|---|---|
TABLE
for mode in off doorbell checked fallback; do
    m=$(echo "${results[$mode]}" | median)
    printf '| %s | %s| %s | %s |\n' "$mode" "${results[$mode]}" "$m" "$(awk -v a="$m" -v b="$off" 'BEGIN{printf "%.2f", a/b}')"
done
