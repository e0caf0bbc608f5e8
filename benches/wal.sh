#!/usr/bin/env bash
# Where one primary saturates: WAL bytes per append for the shapes the
# sidecar and SQL users produce, and the append and WAL rates one primary
# reached here, so ARCHITECTURE.md's sharding estimate can be re-measured.
#   bash benches/wal.sh        # CLIENTS=8 TRANSACTIONS=300 (per client), SKIP_INSTALL=0
# Shapes (100-byte messages, pgbench, fixed transaction counts):
#   sql-1      one ds.append per transaction (an application's outbox write)
#   batch-64   one ds.try_append_batch of 64 requests to ONE stream
#              (the sidecar's group commit on a hot stream)
#   batch-64s  one ds.try_append_batch of 64 requests over 64 streams
# Results: benches/results/wal.md.
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

CLIENTS="${CLIENTS:-8}"
TRANSACTIONS="${TRANSACTIONS:-300}"
PORT="${DS_BENCH_PORT:-24392}"
DIR="$(mktemp -d /tmp/ds-bench-wal.XXXXXX)"
OUT="$ROOT/benches/results/wal.md"
trap 'cluster_stop "$DIR" || true; rm -rf "$DIR"' EXIT

cd "$ROOT"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    "$ROOT/scripts/setup.sh"
    install_extension --release
fi
cluster_start "$DIR" "$PORT" bench
ensure_database "$PORT" bench
psql_at "$PORT" bench -qc "SELECT ds.create('s' || i) FROM generate_series(1, 64) i" >/dev/null

payload="\\\\x$(printf '%0200d' 0)"
cat >"$DIR/sql-1.sql" <<SQL
\set s random(1, 64)
SELECT ds.append('s' || :s, '$payload'::bytea);
SQL
batch() { # paths expression -> script
    cat <<SQL
\set s random(1, 64)
SELECT count(*) FROM ds.try_append_batch($1,
    array_fill('$payload'::bytea, ARRAY[64]), array_fill(NULL::text, ARRAY[64]),
    array_fill(NULL::text, ARRAY[64]), array_fill(NULL::text, ARRAY[64]),
    array_fill(NULL::bigint, ARRAY[64]), array_fill(NULL::bigint, ARRAY[64]),
    array_fill(false, ARRAY[64]));
SQL
}
batch "array_fill('s' || :s, ARRAY[64])" >"$DIR/batch-64.sql"
batch "ARRAY(SELECT 's' || i FROM generate_series(1, 64) i)" >"$DIR/batch-64s.sql"

lsn() { psql_at "$PORT" bench -tAc "SELECT pg_current_wal_lsn()"; }
{
    echo "# WAL per append"
    echo
    echo "Revision $(git rev-parse --short HEAD), $(date -u +%FT%TZ), nproc $(nproc), $("$PG_CONFIG" --version)."
    echo "fsync on, synchronous_commit on, full_page_writes on; $CLIENTS clients x $TRANSACTIONS transactions (pgbench), 100-byte messages."
    echo "Reproduce: \`bash benches/wal.sh\`."
    echo
    echo "| shape | appends/tx | WAL bytes/append | appends/s | WAL MB/s |"
    echo "|---|---|---|---|---|"
} >"$DIR/wal.md"
for shape in sql-1 batch-64 batch-64s; do
    per_tx=64
    [ "$shape" = sql-1 ] && per_tx=1
    psql_at "$PORT" bench -qc "CHECKPOINT"
    # A short warm-up, so full-page images after the checkpoint are counted
    # the way a steady run sees them (once per page per checkpoint).
    "$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c "$CLIENTS" -j 2 \
        -t 20 -f "$DIR/$shape.sql" bench >/dev/null 2>&1
    before="$(lsn)"
    tps="$("$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -c "$CLIENTS" -j 2 \
        -t "$TRANSACTIONS" -f "$DIR/$shape.sql" bench 2>/dev/null | awk '/^tps/ {print $3}')"
    after="$(lsn)"
    psql_at "$PORT" bench -tA -v before="$before" -v after="$after" -v tps="$tps" \
        -v per_tx="$per_tx" -v tx="$((CLIENTS * TRANSACTIONS))" -v shape="$shape" <<'SQL' >>"$DIR/wal.md"
SELECT format('| %s | %s | %s | %s | %s |', :'shape', :'per_tx',
    round(pg_wal_lsn_diff(:'after', :'before') / (:'tx'::numeric * :'per_tx')),
    round(:'tps'::numeric * :'per_tx'),
    round(pg_wal_lsn_diff(:'after', :'before') / (:'tx'::numeric * :'per_tx')
          * :'tps'::numeric * :'per_tx' / 1e6, 1));
SQL
done
cp "$DIR/wal.md" "$OUT"
cat "$OUT"
