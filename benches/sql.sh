#!/usr/bin/env bash
# Appending from SQL, against same-run references on one cluster:
#   hot stream, 64 clients, one 100-byte message per transaction:
#     insert          a plain single-row INSERT into an application table
#     pgq             pgq.insert_event on one queue (PgQ, Debian postgresql-15-pgq3)
#     append          ds.append to ONE stream (locks the stream until commit)
#     enqueue         ds.enqueue to ONE stream (no lock; sequenced after commit)
#     outbox-append   INSERT into an orders table + ds.append, one transaction
#     outbox-enqueue  INSERT into an orders table + ds.enqueue, one transaction
#   bulk: 100,000 rows/appends in ONE statement: INSERT ... SELECT vs
#     ds.append vs ds.enqueue (appends in one transaction must cost O(n))
#   latency: sequential transactions of one session, from before COMMIT
#     until a reader's snapshot sees the message (ds.append: the commit;
#     ds.enqueue: the commit plus the sequencer)
#   bash benches/sql.sh   # ROUNDS=3 SECONDS_PER_RUN=8 CLIENTS=64 BULK=100000
#                         # LATENCY_N=300 SKIP_INSTALL=0 DS_BENCH_PORT=24485
# Results: benches/results/sql.md (medians over ROUNDS, kinds alternating).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

ROUNDS="${ROUNDS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-8}"
CLIENTS="${CLIENTS:-64}"
BULK="${BULK:-100000}"
LATENCY_N="${LATENCY_N:-300}"
PORT="${DS_BENCH_PORT:-24485}"
DIR="$(mktemp -d /tmp/ds-bench-sql.XXXXXX)"
chmod 755 "$DIR"
OUT="$ROOT/benches/results/sql.md"
trap 'cluster_stop "$DIR" || true; rm -rf "$DIR"' EXIT

cd "$ROOT"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    "$ROOT/scripts/setup.sh"
    install_extension --release
fi
if [ ! -f "$("$PG_CONFIG" --sharedir)/extension/pgq.control" ]; then
    log "installing PgQ (postgresql-15-pgq3) as the same-run reference"
    sudo_if_needed=""
    [ "$(id -u)" = 0 ] || sudo_if_needed=sudo
    $sudo_if_needed apt-get install -y -q postgresql-15-pgq3 >/dev/null
fi
cluster_start "$DIR" "$PORT" bench
ensure_database "$PORT" bench
payload=$(printf 'a%.0s' $(seq 1 100))
psql_at "$PORT" bench -q >/dev/null <<SQL
CREATE EXTENSION IF NOT EXISTS pgq;
SELECT pgq.create_queue('bench');
CREATE TABLE bench_raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, data text NOT NULL);
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, data text NOT NULL);
SELECT ds.create('hot-append'), ds.create('hot-enqueue'), ds.create('outbox-append'),
       ds.create('outbox-enqueue'), ds.create('bulk-append'), ds.create('bulk-enqueue'),
       ds.create('latency-append'), ds.create('latency-enqueue');
CREATE PROCEDURE bench_latency(kind text, n int, INOUT micros float8[] DEFAULT '{}')
LANGUAGE plpgsql AS \$\$
DECLARE
    path text := 'latency-' || kind;
    before text;
    t0 timestamptz;
BEGIN
    FOR i IN 1..n LOOP
        before := (SELECT next_offset FROM ds.head(path));
        t0 := clock_timestamp();
        IF kind = 'append' THEN
            PERFORM ds.append(path, 'x');
        ELSE
            PERFORM ds.enqueue(path, 'x');
        END IF;
        COMMIT;
        -- Each statement takes a new snapshot (READ COMMITTED).
        WHILE (SELECT next_offset FROM ds.head(path)) = before LOOP
            IF clock_timestamp() - t0 > interval '5 seconds' THEN
                RAISE EXCEPTION 'not visible after 5 s';
            END IF;
            -- Not a busy loop: on 2 cores it would starve the sequencer.
            PERFORM pg_catalog.pg_sleep(0.0001);
        END LOOP;
        micros := micros || extract(epoch FROM clock_timestamp() - t0) * 1e6;
        COMMIT;
    END LOOP;
END
\$\$;
SQL

script() { # kind -> pgbench script
    case "$1" in
        insert) echo "INSERT INTO bench_raw (data) VALUES ('$payload');" ;;
        pgq) echo "SELECT pgq.insert_event('bench', 'e', '$payload');" ;;
        append) echo "SELECT ds.append('hot-append', '$payload');" ;;
        enqueue) echo "SELECT ds.enqueue('hot-enqueue', '$payload');" ;;
        outbox-append | outbox-enqueue)
            printf 'BEGIN;\nINSERT INTO orders (data) VALUES (%s);\nSELECT ds.%s(%s, %s);\nEND;\n' \
                "'$payload'" "${1#outbox-}" "'$1'" "'$payload'" ;;
    esac
}
KINDS="insert pgq append enqueue outbox-append outbox-enqueue"
for k in $KINDS; do script "$k" >"$DIR/$k.sql"; done

RAW="$DIR/raw.tsv"
: >"$RAW"
for r in $(seq 1 "$ROUNDS"); do
    for k in $KINDS; do
        log "round $r: $k, $CLIENTS clients, $SECONDS_PER_RUN s"
        # From a checkpoint, as benches/capture.sh: otherwise the run that
        # follows a WAL-triggered checkpoint pays its full-page writes.
        psql_at "$PORT" bench -qc "CHECKPOINT" >/dev/null
        tps=$("$(pg_bindir)/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -n -M prepared \
            -c "$CLIENTS" -j 2 -T "$SECONDS_PER_RUN" -f "$DIR/$k.sql" bench 2>&1 |
            awk '/^tps/ {print $3}')
        printf 'tps\t%s\t%s\n' "$k" "${tps:-0}" >>"$RAW"
    done
    for k in insert append enqueue; do
        log "round $r: bulk $k of $BULK in one statement"
        case "$k" in
            insert) sql="INSERT INTO bench_raw (data) SELECT '$payload' FROM generate_series(1, $BULK)" ;;
            *) sql="SELECT count(ds.$k('bulk-$k', '$payload')) FROM generate_series(1, $BULK)" ;;
        esac
        psql_at "$PORT" bench -qc "CHECKPOINT" >/dev/null
        t0=$(date +%s%N)
        psql_at "$PORT" bench -qc "$sql" >/dev/null
        t1=$(date +%s%N)
        printf 'bulk\t%s\t%s\n' "$k" "$(((t1 - t0) / 1000000))" >>"$RAW"
    done
    for k in append enqueue; do
        log "round $r: latency $k, $LATENCY_N sequential transactions"
        psql_at "$PORT" bench -Atc "CALL bench_latency('$k', $LATENCY_N)" |
            tr -d '{}' | tr ',' '\n' | sed "s/^/latency\t$k\t/" >>"$RAW"
    done
done
pending=$(psql_at "$PORT" bench -Atc "SELECT count(*) FROM ds.pending")

python3 - "$RAW" "$OUT" "$ROUNDS" "$CLIENTS" "$SECONDS_PER_RUN" "$BULK" "$LATENCY_N" "$pending" <<'PY'
import statistics as st, sys, subprocess
raw, out, rounds, clients, secs, bulk, lat_n, pending = sys.argv[1:]
tps, bulk_ms, lat = {}, {}, {}
for line in open(raw):
    kind, name, value = line.rstrip("\n").split("\t")
    {"tps": tps, "bulk": bulk_ms, "latency": lat}[kind].setdefault(name, []).append(float(value))
med = lambda xs: st.median(xs) if xs else float("nan")
def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
t = {k: med(v) for k, v in tps.items()}
b = {k: med(v) for k, v in bulk_ms.items()}
with open(out, "w") as f:
    f.write(f"# Appending from SQL (benches/sql.sh)\n\nRevision {rev}, {cpu}, {clients} clients, "
             f"medians of {rounds} rounds of {secs} s (kinds alternating within each round), "
             "synchronous_commit on, fsync on, a checkpoint before each timed run. Reproduce: `bash benches/sql.sh`.\n\n")
    f.write("## Hot stream: one 100-byte message per transaction\n\n| kind | tps (median) | runs |\n|---|---:|---|\n")
    for k in ["insert", "pgq", "append", "enqueue", "outbox-append", "outbox-enqueue"]:
        f.write(f"| {k} | {t.get(k, 0):,.0f} | {', '.join(f'{x:,.0f}' for x in tps.get(k, []))} |\n")
    f.write("\n| ratio | value |\n|---|---:|\n")
    for a, c in [("enqueue", "pgq"), ("enqueue", "insert"), ("append", "pgq"), ("enqueue", "append"),
                 ("outbox-enqueue", "outbox-append")]:
        f.write(f"| {a} / {c} | {t.get(a, 0) / t[c]:.2f}x |\n" if t.get(c) else f"| {a} / {c} | n/a |\n")
    f.write(f"\n## {int(bulk):,} rows or appends in one statement\n\n| kind | ms (median) | runs | / insert |\n|---|---:|---|---:|\n")
    for k in ["insert", "append", "enqueue"]:
        f.write(f"| {k} | {b.get(k, 0):,.0f} | {', '.join(f'{x:,.0f}' for x in bulk_ms.get(k, []))} | "
                f"{b.get(k, 0) / b['insert']:.2f}x |\n")
    f.write(f"\n## Commit to visible, {lat_n} sequential transactions x {rounds} rounds\n\n"
            "| kind | p50 ms | p99 ms |\n|---|---:|---:|\n")
    for k in ["append", "enqueue"]:
        xs = lat.get(k, [])
        f.write(f"| {k} | {pct(xs, 50) / 1000:.2f} | {pct(xs, 99) / 1000:.2f} |\n")
    if lat.get("append") and lat.get("enqueue"):
        f.write(f"\nThe sequencer adds {(pct(lat['enqueue'], 50) - pct(lat['append'], 50)) / 1000:.2f} ms at p50. ")
    f.write(f"Unsequenced rows left at the end: {pending}.\n")
print(open(out).read())
PY
