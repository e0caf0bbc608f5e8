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
#   bash benches/capture.sh   # ROUNDS=5 SECONDS_PER_RUN=8 WARMUP_SECONDS=3 CLIENTS=64
#                             # SNAPSHOT_ROWS=1000000 SNAPSHOT_ROUNDS=2 SKIP_INSTALL=0
#                             # DS_BENCH_PORT=24497
# Results: benches/results/capture.md (medians over ROUNDS, kinds alternating).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

ROUNDS="${ROUNDS:-5}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-8}"
WARMUP_SECONDS="${WARMUP_SECONDS:-3}"
CLIENTS="${CLIENTS:-64}"
SNAPSHOT_ROWS="${SNAPSHOT_ROWS:-1000000}"
SNAPSHOT_ROUNDS="${SNAPSHOT_ROUNDS:-2}"
PORT="${DS_BENCH_PORT:-24497}"
DIR="$(mktemp -d /tmp/ds-bench-capture.XXXXXX)"
chmod 755 "$DIR"
OUT="$ROOT/benches/results/capture.md"
trap 'cluster_stop "$DIR" || true; rm -rf "$DIR"' EXIT

cd "$ROOT"
REV="$(git rev-parse --short HEAD)"
[ -z "$(git status --porcelain -- src sql core 2>/dev/null)" ] || REV="$REV+dirty"
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

# The sequencer gives enqueued (so captured) changes their offsets only once it
# has seen the extension, which it checks every few seconds: until then they
# wait in ds.pending and captured inserts crawl. Measure from when it sequences.
psql_at "$PORT" bench -q >/dev/null <<'SQL'
SELECT ds.create('bench/capture/ready', 'application/json');
SELECT ds.enqueue('bench/capture/ready', '{}'::jsonb);
SQL
for i in $(seq 1 300); do
    [ "$(psql_at "$PORT" bench -Atc "SELECT count(*) FROM ds.pending")" = 0 ] && break
    [ "$i" != 300 ] || { echo "the sequencer did not sequence within 30 s" >&2; exit 1; }
    sleep 0.1
done

# pgbench_tps KIND SECONDS: the tps of one run.
pgbench_tps() {
    "$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -M prepared \
        -c "$CLIENTS" -j 2 -T "$2" -f "$DIR/$1.sql" bench 2>&1 | awk '/^tps/ {print $3}'
}
# A warm-up run of each kind, not counted: on a fresh cluster the first seconds
# of captured inserts can run at a fraction of the later rate (seen once: 790
# tps in a first 2 s run after the wait above, then 5,571; not explained yet).
for k in $KINDS; do
    log "warm-up: $k, $WARMUP_SECONDS s"
    log "warm-up $k: $(pgbench_tps "$k" "$WARMUP_SECONDS") tps (not counted)"
done
RAW="$DIR/raw.tsv"
: >"$RAW"
for r in $(seq 1 "$ROUNDS"); do
    for k in $KINDS; do
        log "round $r: $k, $CLIENTS clients, $SECONDS_PER_RUN s"
        # Every run starts from a checkpoint: otherwise the one that happens
        # to follow a WAL-triggered checkpoint pays its full-page writes.
        psql_at "$PORT" bench -qc "CHECKPOINT" >/dev/null
        tps=$(pgbench_tps "$k" "$SECONDS_PER_RUN")
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
SIZES="$((SNAPSHOT_ROWS / 4)) $SNAPSHOT_ROWS"
for n in $SIZES; do
    log "snapshot: a table of $n rows"
    psql_at "$PORT" bench -q >/dev/null <<SQL
CREATE TABLE snap_$n (LIKE orders_plain INCLUDING ALL);
INSERT INTO snap_$n (data, qty) SELECT '$payload', g FROM generate_series(1, $n) g;
VACUUM ANALYZE snap_$n;
SQL
done
psql_at "$PORT" bench -qc "CREATE TABLE snap_copy (LIKE orders_plain INCLUDING ALL)" >/dev/null
# Each timed statement starts after a checkpoint, so neither pays for the other's dirty pages.
for r in $(seq 1 "$SNAPSHOT_ROUNDS"); do
    for n in $SIZES; do
        log "round $r: snapshot of $n rows, and INSERT ... SELECT of them"
        psql_at "$PORT" bench -qc "TRUNCATE snap_copy" -c "CHECKPOINT" >/dev/null
        printf 'snap\tinsert-select\t%s\t%s\n' "$n" \
            "$(ms_of "INSERT INTO snap_copy (data, qty) SELECT data, qty FROM snap_$n")" >>"$RAW"
        psql_at "$PORT" bench -qc "CHECKPOINT" >/dev/null
        printf 'snap\tcapture\t%s\t%s\n' "$n" \
            "$(ms_of "SELECT ds.capture('snap_$n', 'bench/capture/snap-$n')")" >>"$RAW"
        psql_at "$PORT" bench -qc "SELECT ds.uncapture('snap_$n')" -c "SELECT ds.delete('bench/capture/snap-$n')" >/dev/null
    done
done

python3 - "$RAW" "$OUT" "$ROUNDS" "$CLIENTS" "$SECONDS_PER_RUN" "$rows_plain" "$rows_captured" "$stream_bytes" \
    "$REV" "$SNAPSHOT_ROUNDS" <<'PY'
import statistics as st, sys
raw, out, rounds, clients, secs, rows_plain, rows_captured, stream_bytes, rev, snap_rounds = sys.argv[1:]
tps, snap_runs = {}, {}
for line in open(raw):
    f = line.rstrip("\n").split("\t")
    if f[0] == "tps":
        tps.setdefault(f[1], []).append(float(f[2]))
    else:
        snap_runs.setdefault((f[1], int(f[2])), []).append(float(f[3]))
t = {k: st.median(v) for k, v in tps.items()}
snap = {k: st.median(v) for k, v in snap_runs.items()}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
ratio = lambda a, b: f"{a / b:.2f}x" if b else "n/a"
with open(out, "w") as f:
    f.write(f"# Capturing a table (benches/capture.sh)\n\nRevision {rev}, {cpu}, {clients} clients, "
            f"medians of {rounds} rounds of {secs} s (kinds alternating within each round), "
            "synchronous_commit on, fsync on, a checkpoint before each timed run. Reproduce: `bash benches/capture.sh`.\n\n")
    f.write("## Single-row INSERT per transaction (about 100 bytes)\n\n| table | tps (median) | runs |\n|---|---:|---|\n")
    for k in ["plain", "captured", "notify"]:
        f.write(f"| {k} | {t.get(k, 0):,.0f} | {', '.join(f'{x:,.0f}' for x in tps.get(k, []))} |\n")
    f.write("\nCost of one insert relative to the plain table (tps plain / tps kind; goal for captured: < 2x):\n\n"
            "| kind | cost |\n|---|---:|\n")
    for k in ["captured", "notify"]:
        f.write(f"| {k} | {ratio(t.get('plain', 0), t.get(k, 0))} |\n")
    f.write(f"| captured, relative to notify | {ratio(t.get('notify', 0), t.get('captured', 0))} |\n")
    # Runs drift over a bench (the tables and WAL grow): the plain and
    # captured runs of one round, minutes apart at most, compare best.
    pairs = [p / c for p, c in zip(tps.get("plain", []), tps.get("captured", [])) if c]
    if pairs:
        f.write(f"\nCaptured cost per round (plain and captured runs of the same round): "
                f"{', '.join(f'{x:.2f}x' for x in pairs)}; median {st.median(pairs):.2f}x.\n")
    per_row = int(stream_bytes) / int(rows_captured) if rows_captured not in ("", "0") and stream_bytes else 0
    f.write(f"\nRows inserted: plain {int(rows_plain):,}, captured {int(rows_captured):,}; "
            f"the captured table's stream holds {int(stream_bytes or 0):,} bytes ({per_row:.0f} per row).\n")
    f.write(f"\n## Snapshot: ds.capture of an existing table (medians of {snap_rounds} rounds)\n\n"
            "| rows | INSERT ... SELECT ms | ds.capture ms | capture / insert | capture µs per row | capture runs ms |\n"
            "|---:|---:|---:|---:|---:|---|\n")
    for n in sorted({n for _, n in snap}):
        ins, cap = snap.get(("insert-select", n), 0), snap.get(("capture", n), 0)
        runs = ", ".join(f"{x:,.0f}" for x in snap_runs.get(("capture", n), []))
        f.write(f"| {n:,} | {ins:,.0f} | {cap:,.0f} | {ratio(cap, ins)} | {cap * 1000 / n:.2f} | {runs} |\n")
    ns = sorted({n for _, n in snap})
    if len(ns) == 2 and snap.get(("capture", ns[0])):
        growth = snap[("capture", ns[1])] / snap[("capture", ns[0])]
        f.write(f"\n{ns[1] // ns[0]}x the rows took {growth:.2f}x the time (linear: {ns[1] / ns[0]:.0f}x).\n")
print(open(out).read())
PY
