#!/usr/bin/env bash
# What capturing a table costs its writers, against same-run references on
# one cluster (release build):
#   insert TPS, 64 clients (pgbench), one single-row INSERT (about 100 bytes)
#   per transaction, into three identical tables:
#     plain     no trigger
#     captured  ds.capture(table, path): every insert also appends its
#               State Protocol message to the table's stream
#     notify    an AFTER INSERT row trigger that only does pg_notify (payload:
#               the row as JSON, the work closest to a capture's message)
#   snapshot: ds.capture of a table of SNAPSHOT_ROWS rows (and a quarter of
#     that), timed against INSERT ... SELECT of those rows into a plain table:
#     the snapshot must cost O(rows).
#   bash benches/capture.sh   # ROUNDS=3 SECONDS_PER_RUN=8 CLIENTS=64
#                             # SNAPSHOT_ROWS=1000000 SKIP_INSTALL=0 DS_BENCH_PORT=54497
# Results: benches/results/capture.md (medians over ROUNDS, kinds alternating).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-8}"
CLIENTS="${CLIENTS:-64}"
SNAPSHOT_ROWS="${SNAPSHOT_ROWS:-1000000}"
PORT="${DS_BENCH_PORT:-54497}"
DIR="$(mktemp -d /tmp/ds-bench-capture.XXXXXX)"
chmod 755 "$DIR"
OUT="$ROOT/benches/results/capture.md"
trap 'cluster_stop "$DIR" || true; rm -rf "$DIR"' EXIT

cd "$ROOT"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    "$ROOT/scripts/setup.sh"
    install_extension --release
fi
cluster_start "$DIR" "$PORT" bench
ensure_database "$PORT" bench
if [ "$(psql_at "$PORT" bench -Atc "SELECT count(*) FROM pg_proc WHERE proname = 'capture' AND pronamespace = 'ds'::regnamespace")" = 0 ]; then
    echo "the installed extension has no ds.capture" >&2
    exit 1
fi

# One row: an identity key, 100 bytes of text, a number and a timestamp.
payload=$(printf 'a%.0s' $(seq 1 100))
KINDS="plain captured notify"
psql_at "$PORT" bench -q >/dev/null <<SQL
CREATE TABLE orders_plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    data text NOT NULL, qty integer NOT NULL, created timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders_captured (LIKE orders_plain INCLUDING ALL);
CREATE TABLE orders_notify (LIKE orders_plain INCLUDING ALL);
SELECT ds.capture('orders_captured', 'bench/capture/orders');
CREATE FUNCTION notify_row() RETURNS trigger LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM pg_notify('orders', row_to_json(NEW)::text);
    RETURN NULL;
END
\$\$;
CREATE TRIGGER orders_notify AFTER INSERT ON orders_notify FOR EACH ROW EXECUTE FUNCTION notify_row();
SQL
for k in $KINDS; do
    echo "INSERT INTO orders_$k (data, qty) VALUES ('$payload', 1 + :client_id);" >"$DIR/$k.sql"
done

RAW="$DIR/raw.tsv"
: >"$RAW"
for r in $(seq 1 "$ROUNDS"); do
    for k in $KINDS; do
        log "round $r: $k, $CLIENTS clients, $SECONDS_PER_RUN s"
        tps=$("$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -M prepared \
            -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f "$DIR/$k.sql" bench 2>&1 |
            awk '/^tps/ {print $3}')
        printf 'tps\t%s\t%s\n' "$k" "${tps:-0}" >>"$RAW"
    done
done
rows_plain=$(psql_at "$PORT" bench -Atc "SELECT count(*) FROM orders_plain")
rows_captured=$(psql_at "$PORT" bench -Atc "SELECT count(*) FROM orders_captured")
stream_bytes=$(psql_at "$PORT" bench -Atc "SELECT hot_bytes + segment_bytes FROM ds.stats() WHERE path = 'bench/capture/orders'")

# ms_of SQL: wall time of one psql statement, in ms.
ms_of() {
    local t0 t1
    t0=$(date +%s%N)
    psql_at "$PORT" bench -qc "$1" >/dev/null
    t1=$(date +%s%N)
    echo $(((t1 - t0) / 1000000))
}
for n in $((SNAPSHOT_ROWS / 4)) "$SNAPSHOT_ROWS"; do
    log "snapshot: $n rows"
    psql_at "$PORT" bench -q >/dev/null <<SQL
DROP TABLE IF EXISTS snap_source, snap_copy;
CREATE TABLE snap_source (LIKE orders_plain INCLUDING ALL);
CREATE TABLE snap_copy (LIKE orders_plain INCLUDING ALL);
INSERT INTO snap_source (data, qty) SELECT '$payload', g FROM generate_series(1, $n) g;
VACUUM ANALYZE snap_source;
SQL
    printf 'snap\tinsert-select\t%s\t%s\n' "$n" \
        "$(ms_of "INSERT INTO snap_copy (data, qty) SELECT data, qty FROM snap_source")" >>"$RAW"
    printf 'snap\tcapture\t%s\t%s\n' "$n" \
        "$(ms_of "SELECT ds.capture('snap_source', 'bench/capture/snap-$n')")" >>"$RAW"
    psql_at "$PORT" bench -qc "SELECT ds.uncapture('snap_source')" >/dev/null
done

python3 - "$RAW" "$OUT" "$ROUNDS" "$CLIENTS" "$SECONDS_PER_RUN" "$rows_plain" "$rows_captured" "$stream_bytes" <<'PY'
import statistics as st, sys, subprocess
raw, out, rounds, clients, secs, rows_plain, rows_captured, stream_bytes = sys.argv[1:]
tps, snap = {}, {}
for line in open(raw):
    f = line.rstrip("\n").split("\t")
    if f[0] == "tps":
        tps.setdefault(f[1], []).append(float(f[2]))
    else:
        snap[(f[1], int(f[2]))] = float(f[3])
t = {k: st.median(v) for k, v in tps.items()}
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"
with open(out, "w") as f:
    f.write(f"# Capturing a table (benches/capture.sh)\n\nRevision {rev}, {cpu}, {clients} clients, "
            f"medians of {rounds} rounds of {secs} s (kinds alternating within each round), "
            "synchronous_commit on, fsync on. Reproduce: `bash benches/capture.sh`.\n\n")
    f.write("## Single-row INSERT per transaction (about 100 bytes)\n\n| table | tps (median) | runs |\n|---|---:|---|\n")
    for k in ["plain", "captured", "notify"]:
        f.write(f"| {k} | {t.get(k, 0):,.0f} | {', '.join(f'{x:,.0f}' for x in tps.get(k, []))} |\n")
    f.write("\nCost of one insert relative to the plain table (tps plain / tps kind; goal for captured: < 2x):\n\n"
            "| kind | cost |\n|---|---:|\n")
    for k in ["captured", "notify"]:
        f.write(f"| {k} | {ratio(t.get('plain', 0), t.get(k, 0))} |\n")
    f.write(f"| captured / notify | {ratio(t.get('notify', 0), t.get('captured', 0))} |\n")
    per_row = int(stream_bytes) / int(rows_captured) if rows_captured not in ("", "0") and stream_bytes else 0
    f.write(f"\nRows inserted: plain {int(rows_plain):,}, captured {int(rows_captured):,}; "
            f"the captured table's stream holds {int(stream_bytes or 0):,} bytes ({per_row:.0f} per row).\n")
    f.write("\n## Snapshot: ds.capture of an existing table\n\n"
            "| rows | INSERT ... SELECT ms | ds.capture ms | capture / insert | capture µs per row |\n|---:|---:|---:|---:|---:|\n")
    for n in sorted({n for _, n in snap}):
        ins, cap = snap.get(("insert-select", n), 0), snap.get(("capture", n), 0)
        f.write(f"| {n:,} | {ins:,.0f} | {cap:,.0f} | {ratio(cap, ins)} | {cap * 1000 / n:.2f} |\n")
    ns = sorted({n for _, n in snap})
    if len(ns) == 2 and snap.get(("capture", ns[0])):
        growth = snap[("capture", ns[1])] / snap[("capture", ns[0])]
        f.write(f"\n{ns[1] // ns[0]}x the rows took {growth:.2f}x the time (linear: {ns[1] / ns[0]:.0f}x).\n")
print(open(out).read())
PY
