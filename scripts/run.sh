#!/usr/bin/env bash
# `make run`: install what is missing, build and install the extension, start
# the project cluster (.cluster/, 127.0.0.1:$DS_PORT) and create the database.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PORT="${DS_PORT:-54370}"
DB="${DS_DB:-durable_streams}"
DIR="$ROOT/.cluster"

"$ROOT/scripts/setup.sh"
cd "$ROOT"
install_extension --release
cluster_start "$DIR" "$PORT" "$DB"
ensure_database "$PORT" "$DB"

cat <<MSG

durable_streams is running (Postgres $(psql_at "$PORT" "$DB" -tAc "SHOW server_version"), data in .cluster/).
Connect with:

    psql "postgresql://postgres@127.0.0.1:$PORT/$DB"

Try:   SELECT * FROM ds.create('hello', 'text/plain');
       SELECT ds.append('hello', 'world'::text);
       SELECT * FROM ds.read('hello');

Stop with: make stop
MSG
