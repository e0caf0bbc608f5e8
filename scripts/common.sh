# Shared helpers for the project scripts. Source it; do not run it.
#
# Postgres refuses to run as root, so when we are root every server-side
# command runs as the `postgres` OS user; otherwise as the current user.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_CONFIG="${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}"
[ -x "$PG_CONFIG" ] || PG_CONFIG=/usr/bin/pg_config
PGRX_VERSION=0.18.1
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runs a command as the OS user that owns clusters.
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Creates a directory owned by the cluster user.
pg_owned_dir() {
    mkdir -p "$1"
    if [ "$(id -u)" = 0 ]; then chown postgres:postgres "$1"; fi
}

pg_bindir() { "$PG_CONFIG" --bindir; }

# cluster_start DIR PORT DB: initdb (once) and start a project-local cluster
# listening on 127.0.0.1:PORT, socket inside DIR, durable_streams preloaded
# and its background worker serving database DB.
cluster_start() {
    local dir="$1" port="$2" db="$3" bin
    bin="$(pg_bindir)"
    pg_owned_dir "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        log "initdb $dir/data"
        pg_owned_dir "$dir/data"
        as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
        cat >>"$dir/data/postgresql.conf" <<CONF
# durable_streams project cluster (scripts/common.sh)
listen_addresses = '127.0.0.1'
shared_preload_libraries = 'durable_streams'
max_connections = 200
fsync = on
synchronous_commit = on
CONF
    fi
    sed -i "s/^port = .*//; s/^ds.database = .*//; s/^max_prepared_transactions = .*//" "$dir/data/postgresql.conf"
    echo "port = $port" >>"$dir/data/postgresql.conf"
    echo "ds.database = '$db'" >>"$dir/data/postgresql.conf"
    # Two-phase commit is tested (pgrx-tests/tests/it/notify.rs).
    echo "max_prepared_transactions = 10" >>"$dir/data/postgresql.conf"
    # Opt-in allocator tuning for reading backends (README, Memory): on for
    # `make run` and the benchmarks (DS_TUNE_MALLOC=on), off by default.
    sed -i "s/^ds.tune_malloc = .*//" "$dir/data/postgresql.conf"
    echo "ds.tune_malloc = ${DS_TUNE_MALLOC:-off}" >>"$dir/data/postgresql.conf"
    sed -i "s|^unix_socket_directories = .*||" "$dir/data/postgresql.conf"
    echo "unix_socket_directories = '$dir'" >>"$dir/data/postgresql.conf"
    if as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        log "cluster $dir already running"
        return 0
    fi
    log "starting cluster $dir on 127.0.0.1:$port"
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
}

cluster_stop() {
    local dir="$1"
    if [ -f "$dir/data/PG_VERSION" ] && as_pg "$(pg_bindir)/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        log "stopping cluster $dir"
        as_pg "$(pg_bindir)/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    fi
}

# psql against a project cluster: psql_at PORT DB [args...]
psql_at() {
    local port="$1" db="$2"
    shift 2
    psql -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}

# Creates DB (if missing) with the extension installed.
ensure_database() {
    local port="$1" db="$2"
    if ! psql_at "$port" postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        psql_at "$port" postgres -qc "CREATE DATABASE \"$db\""
    fi
    psql_at "$port" "$db" -qc "CREATE EXTENSION IF NOT EXISTS durable_streams"
}

# Gives the installed library a fresh inode (copy, then rename over it), so
# that a tool which then copies a new build over it in place (pgrx-tests does)
# does not rewrite the file running clusters have mapped, which crashes them
# (seen: SIGSEGV). The library is never missing meanwhile.
detach_installed_library() {
    local lib sudo=""
    lib="$("$PG_CONFIG" --pkglibdir)/durable_streams.so"
    [ -f "$lib" ] || return 0
    [ -w "$(dirname "$lib")" ] || sudo=sudo
    $sudo cp -p "$lib" "$lib.detach.$$"
    $sudo mv -f "$lib.detach.$$" "$lib"
}

# Builds the extension and installs it into the system Postgres. Pass
# --release for an optimised build. Files are staged with `cargo pgrx
# package`, then moved into place with a rename: a running cluster that has
# the old library mapped keeps it (a copy in place would crash it), and there
# is no moment at which the library is missing.
install_extension() {
    local profile=(--debug) stage libdir sharedir sudo=""
    [ "${1:-}" = "--release" ] && profile=()
    libdir="$("$PG_CONFIG" --pkglibdir)"
    sharedir="$("$PG_CONFIG" --sharedir)/extension"
    [ -w "$libdir" ] || sudo=sudo
    log "building and installing the extension into $libdir"
    stage="$(mktemp -d /tmp/ds-package.XXXXXX)"
    cargo pgrx package -p durable_streams --pg-config "$PG_CONFIG" "${profile[@]}" --out-dir "$stage" >/dev/null
    local file dest
    while IFS= read -r -d '' file; do
        case "$file" in
            *.so) dest="$libdir/$(basename "$file")" ;;
            *) dest="$sharedir/$(basename "$file")" ;;
        esac
        $sudo install -m 0644 "$file" "$dest.new.$$"
        [[ "$file" == *.so ]] && $sudo chmod 0755 "$dest.new.$$"
        $sudo mv -f "$dest.new.$$" "$dest"
    done < <(find "$stage" -type f -print0)
    rm -rf "$stage"
}

# Prints a TCP port on 127.0.0.1 that is free right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (up to 30 s) until URL answers 200.
wait_for_http() {
    local url="$1" i
    for i in $(seq 1 300); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $url" >&2
    return 1
}
