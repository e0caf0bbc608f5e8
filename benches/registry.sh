#!/usr/bin/env bash
# Stream creation throughput with and without a stream registry, same run,
# same cluster (README, "Stream registries"):
#   off        ds.registry = off (nothing recorded)
#   registry   ds.registry = on, the registry of the prefix every stream is
#              created under (lock-free: rows in ds.pending, sequenced after commit)
#   locking    as registry, in REPEATABLE READ transactions, where registry
#              appends fall back to the locking append (every creator holds the
#              registry's row until commit): what the lock-free path avoids
#   plain-rr   ds.registry = off in REPEATABLE READ: the reference for `locking`
# Each transaction is one ds.create of a new path (pgbench, CLIENTS clients).
#   bash benches/registry.sh   # ROUNDS=3 SECONDS_PER_RUN=8 CLIENTS=16
#                              # SKIP_INSTALL=0 DS_BENCH_PORT=24486
# Results: benches/results/registry.md (medians over ROUNDS, kinds alternating).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-8}"
CLIENTS="${CLIENTS:-16}"
PORT="${DS_BENCH_PORT:-24486}"
DIR="$(mktemp -d /tmp/ds-bench-registry.XXXXXX)"
chmod 755 "$DIR"
OUT="$ROOT/benches/results/registry.md"
trap 'cluster_stop "$DIR" || true; rm -rf "$DIR"' EXIT

cd "$ROOT"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    "$ROOT/scripts/setup.sh"
    install_extension --release
fi
cluster_start "$DIR" "$PORT" bench
ensure_database "$PORT" bench
psql_at "$PORT" bench -q >/dev/null <<'SQL'
CREATE SEQUENCE bench_path;
SELECT ds.create_registry('bench/');
-- Entries of a registry, paging through ds.read.
CREATE FUNCTION registry_entries(registry text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint := 0;
    k bigint;
    page_end text;
    from_offset text := '-1';
BEGIN
    LOOP
        SELECT count(*), max(next_offset) INTO k, page_end FROM ds.read(registry, from_offset);
        EXIT WHEN k = 0;
        n := n + k;
        from_offset := page_end;
    END LOOP;
    RETURN n;
END $$;
SQL

KINDS="off registry locking plain-rr"
for k in $KINDS; do
    echo "SELECT created FROM ds.create('bench/$k/' || nextval('bench_path'));" >"$DIR/$k.sql"
done
options() { # kind -> PGOPTIONS
    case "$1" in
        off) echo "-c ds.registry=off" ;;
        registry) echo "-c ds.registry=on" ;;
        locking) echo "-c ds.registry=on -c default_transaction_isolation=repeatable\\ read" ;;
        plain-rr) echo "-c ds.registry=off -c default_transaction_isolation=repeatable\\ read" ;;
    esac
}

RAW="$DIR/raw.tsv"
: >"$RAW"
for r in $(seq 1 "$ROUNDS"); do
    for k in $KINDS; do
        log "round $r: $k, $CLIENTS clients, $SECONDS_PER_RUN s ($(uptime | sed 's/.*load/load/'))"
        # tps counts committed creates; failed ones (40001 serialization
        # failures in REPEATABLE READ) are counted apart.
        result=$(PGOPTIONS="$(options "$k")" "$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres \
            -n -M prepared -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f "$DIR/$k.sql" bench 2>&1 |
            awk '/^tps/ {tps = $3} /^number of failed transactions/ {failed = $5} END {print tps + 0, failed + 0}')
        printf '%s\t%s\n' "$k" "$result" >>"$RAW"
    done
done

# Every recorded creation reached the registry (the sequencer drains within seconds).
sleep 3
counts=$(psql_at "$PORT" bench -tA <<'SQL'
SELECT (SELECT count(*) FROM ds.streams WHERE path LIKE 'bench/registry/%' OR path LIKE 'bench/locking/%')
       || ' / ' || registry_entries('bench/__registry__');
SQL
)
log "streams created with the registry on / registry entries: $counts"

python3 - "$RAW" "$OUT" "$ROUNDS" "$SECONDS_PER_RUN" "$CLIENTS" "$counts" <<'PY'
import statistics as st, sys
raw, out, rounds, secs, clients, counts = sys.argv[1:]
tps, failed = {}, {}
for line in open(raw):
    k, v, f = line.split()
    tps.setdefault(k, []).append(float(v))
    failed.setdefault(k, []).append(int(f))
med = {k: st.median(v) for k, v in tps.items()}
with open(out, "w") as f:
    f.write("# Stream registries: creation throughput\n\n")
    f.write(f"`bash benches/registry.sh` (ROUNDS={rounds} SECONDS_PER_RUN={secs} CLIENTS={clients}): "
            "one `ds.create` of a new path per transaction, medians of the rounds, kinds alternating "
            "within each round, one cluster.\n\n")
    f.write("| kind | creates/s (median) | runs | / off | failed transactions per run |\n|---|---:|---|---:|---|\n")
    for k in ["off", "registry", "plain-rr", "locking"]:
        runs = ", ".join(f"{x:,.0f}" for x in tps.get(k, []))
        ref = med["plain-rr"] if k == "locking" else med["off"]
        ratio = f"{med[k] / med['off']:.2f}x" if k != "locking" else f"{med[k] / ref:.2f}x plain-rr"
        fails = ", ".join(f"{x:,}" for x in failed.get(k, []))
        f.write(f"| {k} | {med.get(k, 0):,.0f} | {runs} | {ratio} | {fails} |\n")
    f.write(f"\nStreams created with the registry on / registry entries read back: {counts}.\n")
print(open(out).read())
PY
