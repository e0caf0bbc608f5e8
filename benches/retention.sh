#!/usr/bin/env bash
# Retention benchmark (issue 13): is storage actually released? A stream of
# MESSAGES JSON messages of 100 bytes, rotated into segments, gets a policy
# keeping 10% of its bytes; ds.trim drops the rest. Measured in one run on a
# cluster of its own: table + TOAST + index size of ds.messages and
# ds.segments before the trim, after the trim + VACUUM, after VACUUM FULL,
# and after appending the dropped amount again (VACUUM makes the space
# reusable: the tables should not grow); the trim's time; and the same for a
# stream whose data is all hot rows (no rotation), against deleting a whole
# stream of the same rows with ds.delete in the same run.
#   bash benches/retention.sh      # MESSAGES=1000000 by default
# Writes benches/results/retention.md.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

MESSAGES="${MESSAGES:-1000000}"
HOT_MESSAGES="${HOT_MESSAGES:-200000}"
PER_APPEND=1000
PORT="${DS_BENCH_PORT:-24383}"
DIR="$(mktemp -d /tmp/ds-bench-retention.XXXXXX)"
RESULTS="$ROOT/benches/results/retention.md"
trap 'cluster_stop "$DIR" || true; rm -rf "$DIR"' EXIT

cd "$ROOT"
if [ -z "${SKIP_INSTALL:-}" ]; then
    "$ROOT/scripts/setup.sh"
    install_extension --release
fi
cluster_start "$DIR" "$PORT" bench
ensure_database "$PORT" bench
# Keep the worker out of the way: rotation and trims are driven below.
psql_at "$PORT" bench -qc "ALTER SYSTEM SET ds.rotation_interval_ms = 3600000" -c "SELECT pg_reload_conf()"
sql() { psql_at "$PORT" bench -tAq -c "$1"; }
pgbench_at() { "$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n "$@" bench; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# fill STREAM N: N messages of 100 bytes ({"p":"..."} with 92 random hex
# digits: lz4 cannot shrink them much, so sizes follow the payload), 1000 per
# transaction.
fill() {
    local script="$DIR/fill-${1//\//-}.sql"
    cat >"$script" <<SQL
SELECT ds.append('$1', (SELECT jsonb_agg(jsonb_build_object('p', substr(md5(random()::text) || md5(random()::text) || md5(random()::text), 1, 92))) FROM generate_series(1, $PER_APPEND)));
SQL
    pgbench_at -c 1 -t $(($2 / PER_APPEND)) -f "$script" >/dev/null
}
storage() {
    sql "SELECT pg_total_relation_size('ds.messages') + pg_total_relation_size('ds.segments')"
}
# "messages X + segments Y" (each with TOAST and indexes)
split() {
    sql "SELECT 'messages ' || pg_size_pretty(pg_total_relation_size('ds.messages')) || ' + segments '
                || pg_size_pretty(pg_total_relation_size('ds.segments'))"
}
# trim_all STREAM: ds.trim until it drops nothing (one trim looks at most at
# 100,000 units); prints "trims dropped-rows dropped-segments dropped-bytes".
trim_all() {
    local n=0 rows=0 segs=0 bytes=0 r
    while :; do
        r=$(sql "SELECT rows || ' ' || segments || ' ' || bytes FROM ds.trim('$1')")
        set -- "$1" $r
        [ "$4" -eq 0 ] && [ "$3" -eq 0 ] && break
        n=$((n + 1)) rows=$((rows + $2)) segs=$((segs + $3)) bytes=$((bytes + $4))
    done
    echo "$n $rows $segs $bytes"
}
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

log "uptime: $(uptime)"
# --- Rotated data: segments ---------------------------------------------
BYTES=$((MESSAGES * 100))
KEEP=$((BYTES / 10))
sql "SELECT ds.create('bench/ret', 'application/json')" >/dev/null
log "appending $MESSAGES messages of 100 bytes"
fill bench/ret "$MESSAGES"
log "rotating them into segments of 1 MiB"
while :; do
    n=$(sql "SET ds.rotation_max_bytes = '64MB'; SELECT segments FROM ds.rotate('bench/ret')" | tail -1)
    [ "$n" -eq 0 ] && break
done
# A clean start: the rows rotation deleted would otherwise dominate ds.messages.
sql "VACUUM FULL ds.messages"
sql "VACUUM FULL ds.segments"
before=$(storage)
before_split=$(split)
sql "SELECT ds.set_retention('bench/ret', NULL, $KEEP)" >/dev/null
t0=$(now_ms)
read -r trims trim_rows trim_segs trim_bytes < <(trim_all bench/ret)
trim_ms=$(( $(now_ms) - t0 ))
retained=$(sql "SELECT next_offset || ' / ' || earliest_offset FROM ds.head('bench/ret')")
t0=$(now_ms)
sql "VACUUM ds.messages, ds.segments"
vacuum_ms=$(( $(now_ms) - t0 ))
after_vacuum=$(storage)
after_vacuum_split=$(split)
log "appending the dropped amount again (space VACUUM freed is reused)"
fill bench/ret $((MESSAGES - MESSAGES / 10))
while :; do
    n=$(sql "SET ds.rotation_max_bytes = '64MB'; SELECT segments FROM ds.rotate('bench/ret')" | tail -1)
    [ "$n" -eq 0 ] && break
done
sql "VACUUM ds.messages, ds.segments"
after_refill=$(storage)
after_refill_split=$(split)
trim_all bench/ret >/dev/null
sql "VACUUM FULL ds.messages"
sql "VACUUM FULL ds.segments"
after_full=$(storage)
after_full_split=$(split)

# --- Hot rows only, against deleting a whole stream ----------------------
HOT_BYTES=$((HOT_MESSAGES * 100))
sql "SELECT ds.create('bench/hot', 'application/json'), ds.create('bench/ref', 'application/json')" >/dev/null
log "appending $HOT_MESSAGES hot messages to two streams"
fill bench/hot "$HOT_MESSAGES"
fill bench/ref $((HOT_MESSAGES - HOT_MESSAGES / 10))
sql "VACUUM ds.messages"
sql "SELECT ds.set_retention('bench/hot', NULL, $((HOT_BYTES / 10)))" >/dev/null
t0=$(now_ms)
read -r hot_trims hot_rows _ hot_bytes < <(trim_all bench/hot)
hot_trim_ms=$(( $(now_ms) - t0 ))
t0=$(now_ms)
sql "SELECT ds.delete('bench/ref')" >/dev/null
ref_delete_ms=$(( $(now_ms) - t0 ))

cat >"$RESULTS" <<TABLE
# Retention: storage released by a trim

Run of $(date -u +%Y-%m-%d) on $(nproc) cores (\`bash benches/retention.sh\`, MESSAGES=$MESSAGES,
HOT_MESSAGES=$HOT_MESSAGES; load before the run: $(uptime | sed 's/.*load average: //')).

## Rotated data: $MESSAGES messages of 100 bytes ($(mb $BYTES) of payload) in 1 MiB segments, policy keeps $(mb $KEEP)

Sizes of ds.messages + ds.segments, each with TOAST and indexes.

| state | size | of which | ratio to before |
|---|---|---|---|
| before the trim (after VACUUM FULL) | $(mb "$before") | $before_split | 1.00 |
| after the trim + VACUUM (freed pages stay in the files, reusable) | $(mb "$after_vacuum") | $after_vacuum_split | $(ratio "$after_vacuum" "$before") |
| after appending the dropped $(mb $((BYTES - KEEP))) again, rotating it and VACUUM | $(mb "$after_refill") | $after_refill_split | $(ratio "$after_refill" "$before") |
| after a second trim + VACUUM FULL (files rewritten) | $(mb "$after_full") | $after_full_split | $(ratio "$after_full" "$before") |

The trim dropped $trim_segs segments and $trim_rows hot rows, $(mb "$trim_bytes") of payload, in
${trim_ms} ms ($trims trim(s), one transaction each; tail / earliest offset afterwards: $retained);
the VACUUM after it took ${vacuum_ms} ms. The segments freed by the trim are reused by the
segments of the refill (compare the segments before and after it); ds.messages grows with the
refill's hot log, which rotation deleted and VACUUM freed for the next appends: the hot log's
own cost, not retention's.

## Hot rows: $HOT_MESSAGES messages of 100 bytes, never rotated, policy keeps 10%

| operation (same run) | dropped | time |
|---|---|---|
| ds.trim of bench/hot until nothing is left to drop ($hot_trims trims of at most 100,000 rows) | $hot_rows rows, $(mb "$hot_bytes") | ${hot_trim_ms} ms |
| reference: ds.delete of a stream of the same $((HOT_MESSAGES - HOT_MESSAGES / 10)) rows | $((HOT_MESSAGES - HOT_MESSAGES / 10)) rows, $(mb $((HOT_BYTES - HOT_BYTES / 10))) | ${ref_delete_ms} ms |

Ratio trim / delete of the same number of rows: $(ratio "$hot_trim_ms" "$ref_delete_ms").
TABLE
cat "$RESULTS"
