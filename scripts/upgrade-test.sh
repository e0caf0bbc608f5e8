#!/usr/bin/env bash
# Upgrade test (run by `make test`): the previous release, built from git,
# upgraded in place to this tree with ALTER EXTENSION durable_streams UPDATE.
#
#  1. Copies the Postgres installation $PG_CONFIG names into a temporary
#     directory (Postgres and pg_config are relocatable), so that nothing is
#     ever installed into the real one.
#  2. Builds the previous release (RELEASES; the tag v<version> wins when
#     present) from `git archive` with `cargo pgrx package`, once: the package
#     is kept under target/releases/, keyed by commit.
#  3. Installs it, starts a cluster, fills a database with every kind of
#     stream (tests/upgrade/fill.sql), snapshots it (tests/upgrade/snapshot-*).
#  4. Installs this tree's package, restarts: the workers must log that the
#     catalog is older and touch nothing. ALTER EXTENSION ... UPDATE; the
#     snapshot must be byte for byte the same; the workers resume (expiry,
#     rotation); every feature works on the old data (tests/upgrade/exercise.sql).
#  5. The upgraded schema must equal a fresh CREATE EXTENSION of this version
#     (tests/upgrade/schema.sql): this is what catches an upgrade script that
#     forgot something.
#
# Usage: bash scripts/upgrade-test.sh   (PG_CONFIG, DS_UPGRADE_PORT optional)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

PORT="${DS_UPGRADE_PORT:-$((${DS_TEST_PORT:-54371} + 1))}"
NEW_VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)"
[ -n "$NEW_VERSION" ] || { echo "no [workspace.package] version in Cargo.toml" >&2; exit 1; }

# The release before this version: the last one RELEASES lists before it.
read -r OLD_VERSION OLD_COMMIT < <(awk -v cur="$NEW_VERSION" '
    /^[[:space:]]*(#|$)/ { next }
    $1 == cur { exit }
    { v = $1; c = $2 }
    END { if (v != "") print v, c }' RELEASES) || true
if [ -z "${OLD_VERSION:-}" ]; then
    echo "RELEASES lists no release before $NEW_VERSION" >&2
    exit 1
fi
if [ "$OLD_VERSION" = "$NEW_VERSION" ]; then
    echo "Cargo.toml's version $NEW_VERSION is already released: bump it" >&2
    exit 1
fi
TAG_COMMIT="$(git rev-parse -q --verify "refs/tags/v$OLD_VERSION^{commit}" 2>/dev/null || true)"
if [ -n "$TAG_COMMIT" ] && [ "$TAG_COMMIT" != "$(git rev-parse -q --verify "$OLD_COMMIT^{commit}" 2>/dev/null)" ]; then
    echo "tag v$OLD_VERSION is $TAG_COMMIT but RELEASES says $OLD_COMMIT: fix RELEASES" >&2
    exit 1
fi
COMMIT="${TAG_COMMIT:-$OLD_COMMIT}"
if ! git cat-file -e "$COMMIT^{commit}" 2>/dev/null; then
    echo "commit $COMMIT of release $OLD_VERSION is not in this clone (shallow?): git fetch --tags" >&2
    exit 1
fi
log "upgrade test: $OLD_VERSION (${COMMIT:0:12}) -> $NEW_VERSION"

WORK="$(mktemp -d /tmp/ds-upgrade.XXXXXX)"
chmod 755 "$WORK"
PRIVATE_PG_CONFIG="$WORK/pg/usr/lib/postgresql/15/bin/pg_config"
CLUSTER="$WORK/cluster"
SIDECAR_PID=
cleanup() {
    local status=$?
    [ -z "$SIDECAR_PID" ] || { kill "$SIDECAR_PID" 2>/dev/null; wait "$SIDECAR_PID" 2>/dev/null; } || true
    if [ "$status" != 0 ] && [ -f "$CLUSTER/server.log" ]; then
        echo "--- $CLUSTER/server.log" >&2
        tail -15 "$CLUSTER/server.log" >&2
    fi
    if [ -x "$PRIVATE_PG_CONFIG" ]; then
        PG_CONFIG="$PRIVATE_PG_CONFIG" cluster_stop "$CLUSTER" || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# 1. A private copy of the Postgres installation.
pg_lib_root="$(dirname "$("$PG_CONFIG" --bindir)")"
pg_share="$("$PG_CONFIG" --sharedir)"
mkdir -p "$WORK/pg/usr/lib/postgresql" "$WORK/pg/usr/share/postgresql"
cp -a "$pg_lib_root" "$WORK/pg/usr/lib/postgresql/15"
cp -a "$pg_share" "$WORK/pg/usr/share/postgresql/15"
PG_CONFIG="$PRIVATE_PG_CONFIG"
if [ "$("$PG_CONFIG" --sharedir)" != "$WORK/pg/usr/share/postgresql/15" ]; then
    echo "the copy of Postgres in $WORK/pg is not relocatable (pg_config --sharedir: $("$PG_CONFIG" --sharedir))" >&2
    exit 1
fi
PKGLIBDIR="$("$PG_CONFIG" --pkglibdir)"
EXTDIR="$("$PG_CONFIG" --sharedir)/extension"
rm -f "$PKGLIBDIR/durable_streams.so" "$EXTDIR"/durable_streams.control "$EXTDIR"/durable_streams--*.sql

# 2. The previous release's package, built once per commit.
RELEASES_DIR="$ROOT/target/releases"
OLD_PACKAGE="$RELEASES_DIR/durable_streams-$OLD_VERSION-$COMMIT"
if [ ! -f "$OLD_PACKAGE/complete" ]; then
    log "building durable_streams $OLD_VERSION from git (once; kept in $OLD_PACKAGE)"
    src="$RELEASES_DIR/src-$OLD_VERSION"
    rm -rf "$src" "$OLD_PACKAGE"
    mkdir -p "$src"
    git archive "$COMMIT" | tar -x -C "$src"
    (cd "$src" && CARGO_TARGET_DIR="$RELEASES_DIR/target" cargo pgrx package -p durable_streams \
        --pg-config "$PG_CONFIG" --debug --out-dir "$OLD_PACKAGE/files") \
        >"$RELEASES_DIR/build-$OLD_VERSION.log" 2>&1 || {
        tail -40 "$RELEASES_DIR/build-$OLD_VERSION.log"
        exit 1
    }
    touch "$OLD_PACKAGE/complete"
fi
log "installing durable_streams $OLD_VERSION into the private copy"
while IFS= read -r -d '' file; do
    case "$file" in
        *.so) install -m 0755 "$file" "$PKGLIBDIR/" ;;
        *.control | *.sql) install -m 0644 "$file" "$EXTDIR/" ;;
    esac
done < <(find "$OLD_PACKAGE/files" -type f -print0)

# 3. A cluster of the old release, filled. The maintenance worker stays idle
# (one pass an hour, the first ran at start) so the snapshot is stable.
cluster_start "$CLUSTER" "$PORT" ds_up
sql() { PGOPTIONS="-c client_min_messages=warning" psql_at "$PORT" "$@"; }
sql postgres -qc "ALTER SYSTEM SET ds.rotation_interval_ms = 3600000" -c "SELECT pg_reload_conf()" >/dev/null
for db in ds_up ds_schema; do
    sql postgres -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    sql "$db" -qc "CREATE EXTENSION durable_streams"
    got="$(sql "$db" -tAc "SELECT extversion FROM pg_extension WHERE extname = 'durable_streams'")"
    [ "$got" = "$OLD_VERSION" ] || { echo "installed $got, expected $OLD_VERSION" >&2; exit 1; }
done
log "filling database ds_up with streams of every kind ($OLD_VERSION)"
sql ds_up -q -f tests/upgrade/fill.sql >/dev/null
sql ds_up -tA -f tests/upgrade/snapshot-content.sql >"$WORK/content-before"
sql ds_up -tA -f tests/upgrade/snapshot-raw.sql >"$WORK/raw-before"
echo "snapshot: $(wc -l <"$WORK/content-before") facts through the SQL API, $(wc -l <"$WORK/raw-before") stored rows"
# The new library's workers get every chance to act on the old catalog: a
# pass every 200 ms with everything cold. Read at the next start only.
sql postgres -q -c "ALTER SYSTEM SET ds.rotation_interval_ms = 200" \
    -c "ALTER SYSTEM SET ds.hot_tail_bytes = 0" -c "ALTER SYSTEM SET ds.segment_target_bytes = 256"
cluster_stop "$CLUSTER"

# 4. The new package, the old catalog.
install_extension
log_start=$(($(wc -l <"$CLUSTER/server.log") + 1))
new_log() { tail -n "+$log_start" "$CLUSTER/server.log"; }
cluster_start "$CLUSTER" "$PORT" ds_up
log "waiting for both workers to refuse the $OLD_VERSION catalog"
for worker in maintenance doorbell; do
    pattern="durable_streams $worker: the extension in database \"ds_up\" is version $OLD_VERSION but the installed library is $NEW_VERSION"
    for _ in $(seq 1 300); do
        new_log | grep -qF "$pattern" && break
        sleep 0.1
    done
    new_log | grep -F "$pattern" | tail -1 | grep -F "ALTER EXTENSION durable_streams UPDATE" || {
        echo "no WARNING from the $worker worker about the old catalog" >&2
        tail -20 "$CLUSTER/server.log" >&2
        exit 1
    }
done
# This release's sidecar runs against the old catalog meanwhile. Its
# checks for what the extension has (a new notification channel every 10 s,
# the webhook delivery functions every second) must not put an error into
# the server log each time.
(cd "$ROOT" && cargo build -q -p ds-sidecar)
sidecar_port="$(free_port)"
"$ROOT/target/debug/ds-sidecar" --database-url "postgresql://postgres@127.0.0.1:$PORT/ds_up" \
    --listen "127.0.0.1:$sidecar_port" --metrics-listen off >"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!
wait_for_http "http://127.0.0.1:$sidecar_port/health"
# Long enough for 30 passes, a re-check of the version (every 5 s) and one
# of the sidecar's channel (every 10 s).
sleep 11
sql ds_up -tA -f tests/upgrade/snapshot-raw.sql >"$WORK/raw-waiting"
diff -u "$WORK/raw-before" "$WORK/raw-waiting" || {
    echo "the workers changed stored rows before ALTER EXTENSION ... UPDATE" >&2
    exit 1
}
for worker in maintenance doorbell; do
    n="$(new_log | grep -cF "durable_streams $worker: the extension in database" || true)"
    [ "$n" = 1 ] || { echo "the $worker worker warned $n times (once expected)" >&2; exit 1; }
done
if new_log | grep -E "durable_streams (doorbell|maintenance).*(exited|terminated)"; then
    echo "a worker exited while waiting for the update" >&2
    exit 1
fi
echo "workers waited: one WARNING each, no stored row changed in 11 s"
grep -qF "listening for stream changes" "$WORK/sidecar.log" || {
    echo "the sidecar did not LISTEN" >&2
    cat "$WORK/sidecar.log" >&2
    exit 1
}
if new_log | grep -E "ERROR: .*(notify_channel|subscription_)"; then
    echo "the sidecar's checks put errors into the server log" >&2
    exit 1
fi
kill "$SIDECAR_PID"
wait "$SIDECAR_PID" || true
SIDECAR_PID=
echo "the sidecar listened; its checks put no error into the server log in 11 s"
# Until the update, the SQL functions run the new library on the old tables.
sql ds_up -tA -f tests/upgrade/snapshot-content.sql >"$WORK/content-waiting"
diff -u "$WORK/content-before" "$WORK/content-waiting" || {
    echo "the new library reads the $OLD_VERSION catalog differently" >&2
    exit 1
}
echo "the $NEW_VERSION library reads every stream of the $OLD_VERSION catalog the same"

log "ALTER EXTENSION durable_streams UPDATE"
for db in ds_up ds_schema; do
    sql "$db" -qc "ALTER EXTENSION durable_streams UPDATE"
    got="$(sql "$db" -tAc "SELECT extversion FROM pg_extension WHERE extname = 'durable_streams'")"
    [ "$got" = "$NEW_VERSION" ] || { echo "$db is at $got after the update, expected $NEW_VERSION" >&2; exit 1; }
done
sql ds_up -tA -f tests/upgrade/snapshot-content.sql >"$WORK/content-after"
diff -u "$WORK/content-before" "$WORK/content-after" || {
    echo "the streams read differently after the upgrade" >&2
    exit 1
}
echo "every stream reads back byte for byte ($(wc -l <"$WORK/content-after") facts)"

log "the workers resume: expiry and rotation of old data"
# Wanted: no expired stream keeps its path, the expired source with a live
# fork is kept without one, and json/orders (never rotated before) has segments.
resumed() { [[ "$state" =~ ^0\|1\|([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -gt 0 ]; }
for _ in $(seq 1 300); do
    state="$(sql ds_up -tAc "SELECT (SELECT count(*) FROM ds.streams WHERE path IN ('expired/alone', 'expired/src')),
                                   (SELECT count(*) FROM ds.streams WHERE path IS NULL AND fork_count > 0),
                                   (SELECT count(*) FROM ds.segments s JOIN ds.streams t USING (stream_id)
                                     WHERE t.path = 'json/orders')")"
    if resumed; then break; fi
    sleep 0.1
done
resumed || {
    echo "the worker did not expire and rotate after the update (expired streams with a path | pathless sources | segments of json/orders: $state)" >&2
    exit 1
}
new_log | grep -qF "durable_streams maintenance: the extension in database \"ds_up\" is now version $NEW_VERSION; resuming"
echo "expired streams removed (a source kept for its fork without a path), json/orders rotated"
sql ds_up -tA -f tests/upgrade/snapshot-content.sql >"$WORK/content-rotated"
diff -u "$WORK/content-before" "$WORK/content-rotated" || {
    echo "the streams read differently after the worker rotated them" >&2
    exit 1
}
log "exercising every feature on the upgraded data"
sql ds_up -q -f tests/upgrade/exercise.sql >/dev/null
echo "appends, producers, forks, rotation, quotas, deletes: ok"

# 5. The upgraded schema equals a fresh install of this version.
log "schema after ALTER EXTENSION UPDATE vs CREATE EXTENSION $NEW_VERSION"
sql postgres -qc "DROP DATABASE IF EXISTS ds_fresh" -c "CREATE DATABASE ds_fresh"
sql ds_fresh -qc "CREATE EXTENSION durable_streams"
export LC_ALL=C
for db in ds_fresh ds_schema ds_up; do
    sql "$db" -tA -f tests/upgrade/schema.sql | sort >"$WORK/schema-$db"
done
grep -v '^acl ' "$WORK/schema-ds_fresh" >"$WORK/schema-ds_fresh-noacl"
grep -v '^acl ' "$WORK/schema-ds_up" >"$WORK/schema-ds_up-noacl"
schema_differs=0
# compare_schema FRESH UPGRADED LABEL
compare_schema() {
    if ! cmp -s "$1" "$2"; then
        schema_differs=1
        echo "SCHEMA MISMATCH ($3): an upgrade script (sql/durable_streams--*--$NEW_VERSION.sql) misses or changes something a fresh CREATE EXTENSION has." >&2
        comm -23 "$1" "$2" | sed 's/^/  only in a fresh install:   /' >&2
        comm -13 "$1" "$2" | sed 's/^/  only after the upgrade:    /' >&2
    fi
}
compare_schema "$WORK/schema-ds_fresh" "$WORK/schema-ds_schema" "empty database, privileges included"
compare_schema "$WORK/schema-ds_fresh-noacl" "$WORK/schema-ds_up-noacl" "filled database, privileges aside"
[ "$schema_differs" = 0 ] || exit 1
echo "schema identical to a fresh install: $(wc -l <"$WORK/schema-ds_fresh") catalog facts"
log "upgrade test passed ($OLD_VERSION -> $NEW_VERSION) in ${SECONDS} s"
