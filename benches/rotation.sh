#!/usr/bin/env bash
# Rotation benchmark (worker issue): storage of 1,000,000 JSON messages of
# 100 bytes before and after rotation, catch-up read time before and after,
# and append latency on the same stream while it is being rotated.
# Starts its own cluster (release build of the extension), prints a table.
#   bash benches/rotation.sh            # MESSAGES=1000000 by default
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

MESSAGES="${MESSAGES:-1000000}"
PER_APPEND=1000
PORT="${DS_BENCH_PORT:-24381}"
DIR="$(mktemp -d /tmp/ds-bench-rotation.XXXXXX)"
trap 'cluster_stop "$DIR" || true; rm -rf "$DIR"' EXIT

"$ROOT/scripts/setup.sh"
cd "$ROOT"
install_extension --release
DS_TUNE_MALLOC=on cluster_start "$DIR" "$PORT" bench
ensure_database "$PORT" bench
# Keep the worker out of the way: rotation is driven explicitly below.
psql_at "$PORT" bench -qc "ALTER SYSTEM SET ds.rotation_interval_ms = 3600000" -c "SELECT pg_reload_conf()"
sql() { psql_at "$PORT" bench -tAq -c "$1"; }

sql "SELECT ds.create('bench/rot', 'application/json')" >/dev/null
# 100-byte messages: {"p":"xxx...x"} with 92 x.
cat >"$DIR/fill.sql" <<SQL
SELECT ds.append('bench/rot', (SELECT jsonb_agg(jsonb_build_object('p', repeat('x', 92))) FROM generate_series(1, $PER_APPEND)));
SQL
log "appending $MESSAGES messages of 100 bytes ($PER_APPEND per transaction)"
as_pg_bench() { "$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n "$@" bench; }
as_pg_bench -c 1 -t $((MESSAGES / PER_APPEND)) -f "$DIR/fill.sql" >/dev/null
sql "VACUUM ANALYZE ds.messages"

storage() {
    sql "SELECT pg_total_relation_size('ds.messages') + pg_total_relation_size('ds.segments')"
}
catch_up() { # median of 3 full reads, 1 MiB chunks, in ms
    for _ in 1 2 3; do
        sql "DO \$\$ DECLARE o text := '-1'; r record; t0 timestamptz := clock_timestamp(); n bigint := 0;
             BEGIN LOOP SELECT * INTO r FROM ds.read_chunk('bench/rot', o, 1048576); n := n + length(r.body);
             o := r.next_offset; EXIT WHEN r.up_to_date; END LOOP;
             RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - t0) * 1000); END \$\$" 2>&1 | grep -o '[0-9]*$'
    done | sort -n | sed -n 2p
}
tail_offset() { sql "SELECT next_offset FROM ds.head('bench/rot')"; }

BYTES=$(( MESSAGES * 100 ))
before_size=$(storage)
log "catch-up read before rotation"
before_read=$(catch_up)
before_tail=$(tail_offset)
# One ds.read of everything: lift the per-call read bounds for this session.
digest() { sql "SET ds.read_max_rows = 2147483647; SET ds.read_chunk_max_bytes = 2147483647; SELECT md5(string_agg(data, ''::bytea ORDER BY start_offset)) FROM ds.read('bench/rot') WHERE next_offset <= '$before_tail'"; }
before_md5=$(digest)

# Appends to the same stream during rotation: 2 clients, one 100-byte message each.
cat >"$DIR/append.sql" <<'SQL'
SELECT ds.append('bench/rot', '{"p":"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy"}'::jsonb);
SQL
log "append latency without rotation (5 s)"
(cd "$DIR" && as_pg_bench -c 2 -T 5 -f append.sql -l --log-prefix=idle >/dev/null)
log "rotating (segments of 1 MiB) while appending"
cd "$DIR"
# A fixed window that covers the whole rotation (about 20 s here), so pgbench
# ends by itself with complete logs.
"$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -T "${APPEND_WINDOW:-60}" -f append.sql -l --log-prefix=busy bench >/dev/null &
APPENDER=$!
cd "$ROOT"
sleep 1
t0=$(date +%s%N)
# Until the backlog is packed: afterwards each call finds at most the one
# segment the concurrent appenders filled meanwhile.
while :; do
    n=$(sql "SET ds.rotation_max_bytes = '64MB'; SELECT segments FROM ds.rotate('bench/rot')" | tail -1)
    [ "$n" -le 1 ] && break
done
rotate_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
wait "$APPENDER"

latency() { # p50 p99 max of per-transaction latency (µs, field 3) in ms
    cat "$DIR"/"$1".* | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END {printf "%.2f / %.2f / %.2f", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000, a[NR]/1000}'
}
idle_latency=$(latency idle)
busy_latency=$(latency busy)

sql "VACUUM ds.messages" >/dev/null
after_size=$(storage)
sql "VACUUM FULL ds.messages" >/dev/null
after_full_size=$(storage)
log "catch-up read after rotation"
after_read=$(catch_up)
# Offsets never change: the data before the benchmark's appends reads the same.
after_md5=$(digest)
same=$([ "$before_md5" = "$after_md5" ] && echo "identical ($after_md5)" || echo "DIFFERENT: $before_md5 vs $after_md5")
stats=$(sql "SELECT hot_rows || ' hot rows, ' || segments || ' segments' FROM ds.stats() WHERE path = 'bench/rot'")

mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1048576 }'; }
cat <<TABLE

## Rotation: $MESSAGES messages of 100 bytes ($(mb $BYTES) of payload), $(nproc) cores

| measure | before rotation | after rotation | ratio after/before |
|---|---|---|---|
| messages + segments, after VACUUM | $(mb "$before_size") | $(mb "$after_size") | $(awk -v a="$after_size" -v b="$before_size" 'BEGIN{printf "%.2f", a/b}') |
| messages + segments, after VACUUM FULL | $(mb "$before_size") | $(mb "$after_full_size") | $(awk -v a="$after_full_size" -v b="$before_size" 'BEGIN{printf "%.2f", a/b}') |
| catch-up read from -1 (median of 3) | ${before_read} ms | ${after_read} ms | $(awk -v a="$after_read" -v b="$before_read" 'BEGIN{printf "%.2f", a/b}') |

Rotation of the whole cold part took ${rotate_ms} ms ($stats afterwards; the data that existed before rotation reads back $same).
Append latency on the same stream, 2 clients, p50 / p99 / max: ${idle_latency} ms idle, ${busy_latency} ms while rotating.
TABLE
