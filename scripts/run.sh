#!/usr/bin/env bash
# `make run`: install what is missing, build and install the extension, start
# the project cluster (.cluster/, 127.0.0.1:$DS_PORT), create the database,
# then run the HTTP sidecar in the foreground on $DS_LISTEN. Ctrl-C stops
# both. DS_NO_SIDECAR=1 leaves the cluster running and returns instead.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT="${DS_PORT:-54370}"
DB="${DS_DB:-durable_streams}"
LISTEN="${DS_LISTEN:-127.0.0.1:4437}"
DIR="$ROOT/.cluster"
URL="postgresql://postgres@127.0.0.1:$PORT/$DB"

"$ROOT/scripts/setup.sh"
cd "$ROOT"
install_extension --release
DS_TUNE_MALLOC=on cluster_start "$DIR" "$PORT" "$DB"
ensure_database "$PORT" "$DB"

cat <<MSG

durable_streams is running (Postgres $(psql_at "$PORT" "$DB" -tAc "SHOW server_version"), data in .cluster/).
SQL:   psql "$URL"
       SELECT * FROM ds.create('hello', 'text/plain');
       SELECT ds.append('hello', 'world'::text);
       SELECT * FROM ds.read('hello');
MSG

if [ -n "${DS_NO_SIDECAR:-}" ]; then
    echo "Stop with: make stop"
    exit 0
fi

log "building the sidecar"
cargo build -q --release -p ds-sidecar
cat <<MSG
HTTP:  curl -i -X PUT -H 'Content-Type: application/json' http://$LISTEN/v1/stream/hello-http
       curl -i -X POST -H 'Content-Type: application/json' -d '{"hi":1}' http://$LISTEN/v1/stream/hello-http
       curl -i "http://$LISTEN/v1/stream/hello-http?offset=-1"
       curl http://127.0.0.1:9437/metrics
Ctrl-C stops the sidecar and the cluster.

MSG
trap 'cluster_stop "$DIR"' EXIT
trap 'exit 130' INT TERM
./target/release/ds-sidecar --database-url "$URL" --listen "$LISTEN" &
SIDECAR=$!
trap 'kill "$SIDECAR" 2>/dev/null; wait "$SIDECAR"; exit 130' INT TERM
wait "$SIDECAR"
