#!/usr/bin/env bash
# Backup tests (run by `make test`), with the extension installed in the
# Postgres $PG_CONFIG names (scripts/test.sh installs it first):
#
#  pg_dump / pg_restore: a filled database (tests/upgrade/fill.sql) dumped
#  with `pg_dump -Fc` and restored into a NEW cluster (fresh initdb, roles
#  from `pg_dumpall --globals-only`, role OIDs deliberately different) must
#  hold every stream, offset, producer state and segment exactly as before
#  (tests/upgrade/snapshot-*.sql), count quotas against the same roles, give
#  new streams fresh ids, have a notification channel of its own, and be
#  served by ds-sidecar (GET, POST, a long-poll woken by an SQL append).
#
#  Point-in-time recovery: a base backup (pg_basebackup) plus archived WAL
#  (archive_command), restored with recovery_target_lsn = an LSN noted after
#  a commit, gives exactly the streams as of that LSN: what committed before
#  it, nothing after, no torn tail.
#
# Usage: bash scripts/backup-test.sh   (PG_CONFIG, DS_BACKUP_PORT optional;
# uses that port and the next two)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

SRC_PORT="${DS_BACKUP_PORT:-$((${DS_TEST_PORT:-54371} + 2))}"
DST_PORT=$((SRC_PORT + 1))
PITR_PORT=$((SRC_PORT + 2))
BIN="$(pg_bindir)"
WORK="$(mktemp -d /tmp/ds-backup.XXXXXX)"
chmod 755 "$WORK"
SRC="$WORK/source"
DST="$WORK/restored"
PITR="$WORK/pitr"
ARCHIVE="$WORK/wal-archive"
SIDECAR_PID=
cleanup() {
    local status=$? dir
    if [ "$status" != 0 ]; then
        for dir in "$SRC" "$DST" "$PITR"; do
            [ ! -f "$dir/server.log" ] || { echo "--- $dir/server.log" >&2; tail -15 "$dir/server.log" >&2; }
        done
    fi
    [ -z "$SIDECAR_PID" ] || kill "$SIDECAR_PID" 2>/dev/null || true
    for dir in "$SRC" "$DST" "$PITR"; do cluster_stop "$dir" || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
sql() { PGOPTIONS="-c client_min_messages=warning" psql_at "$@"; }
snapshot() { # snapshot PORT NAME: content and raw snapshots of ds_backup
    sql "$1" ds_backup -tA -f tests/upgrade/snapshot-content.sql >"$WORK/$2.content"
    sql "$1" ds_backup -tA -f tests/upgrade/snapshot-raw.sql >"$WORK/$2.raw"
}
same() { # same FILE1 FILE2 WHAT
    diff -u "$1" "$2" || { echo "$3 differ" >&2; exit 1; }
}
# wait_for PORT DB SQL: until the query returns t (30 s)
wait_for() {
    local i
    for i in $(seq 1 300); do
        [ "$(sql "$1" "$2" -tAc "$3" 2>/dev/null || true)" = t ] && return 0
        sleep 0.1
    done
    echo "timed out waiting for: $3" >&2
    return 1
}

# The source cluster archives its WAL. Its maintenance worker makes one pass
# when it connects to ds_backup and then waits an hour: nothing but our own
# statements changes the streams.
pg_owned_dir "$ARCHIVE"
cluster_start "$SRC" "$SRC_PORT" ds_backup
cluster_stop "$SRC"
cat >>"$SRC/data/postgresql.conf" <<CONF
archive_mode = on
archive_command = 'test ! -f $ARCHIVE/%f && cp %p $ARCHIVE/%f'
ds.rotation_interval_ms = 3600000
CONF
cluster_start "$SRC" "$SRC_PORT" ds_backup
sql "$SRC_PORT" postgres -qc "CREATE DATABASE ds_backup"
wait_for "$SRC_PORT" postgres "SELECT EXISTS (SELECT FROM pg_stat_activity
    WHERE backend_type = 'durable_streams maintenance' AND datname = 'ds_backup')"
sql "$SRC_PORT" ds_backup -qc "CREATE EXTENSION durable_streams"
log "filling the source database"
sql "$SRC_PORT" ds_backup -q -f tests/upgrade/fill.sql >/dev/null

log "base backup (pg_basebackup), then appends around a noted LSN"
pg_owned_dir "$WORK/base"
as_pg "$BIN/pg_basebackup" -h 127.0.0.1 -p "$SRC_PORT" -U postgres -D "$WORK/base" -X stream -c fast
more_appends() { # more_appends TAG: appends to several kinds of stream
    sql "$SRC_PORT" ds_backup -q >/dev/null <<SQL
SELECT ds.append('json/orders', jsonb_build_object('phase', '$1', 'i', i)) FROM generate_series(1, 10) i;
SELECT ds.append('bytes/blob', decode(md5('$1' || i), 'hex')) FROM generate_series(1, 10) i;
SELECT ds.append('json/orders-fork', jsonb_build_object('phase', '$1'));
SELECT outcome FROM generate_series(0, 2) i,
    LATERAL ds.try_append('text/log', convert_to('$1 ' || i || E'\n', 'UTF8'),
                          producer_id => 'p-$1', producer_epoch => 0, producer_seq => i);
SQL
}
more_appends before-lsn
sql "$SRC_PORT" ds_backup -qc "SELECT ds.create('pitr/before-lsn', 'text/plain')" \
    -c "SELECT ds.append('pitr/before-lsn', E'committed before the LSN\n')" >/dev/null
LSN="$(sql "$SRC_PORT" ds_backup -tAc "SELECT pg_current_wal_lsn()")"
snapshot "$SRC_PORT" at-lsn
more_appends after-lsn
sql "$SRC_PORT" ds_backup -qc "SELECT ds.create('pitr/after-lsn', 'text/plain')" \
    -c "SELECT ds.append('pitr/after-lsn', E'committed after the LSN\n')" \
    -c "SELECT ds.delete('empty/none')" >/dev/null
snapshot "$SRC_PORT" final
! cmp -s "$WORK/at-lsn.content" "$WORK/final.content" || { echo "the appends after the LSN changed nothing?" >&2; exit 1; }
# Everything up to here is archived once its segment is switched out.
segment="$(sql "$SRC_PORT" postgres -tAc "SELECT pg_walfile_name(pg_current_wal_lsn())")"
sql "$SRC_PORT" postgres -qc "SELECT pg_switch_wal()" >/dev/null
wait_for "$SRC_PORT" postgres "SELECT coalesce(last_archived_wal >= '$segment', false) FROM pg_stat_archiver"
echo "LSN $LSN noted after a commit; WAL archived up to $segment"

log "pg_dump -Fc, pg_dumpall --globals-only"
"$BIN/pg_dump" -Fc -h 127.0.0.1 -p "$SRC_PORT" -U postgres -f "$WORK/ds_backup.dump" ds_backup
"$BIN/pg_dumpall" --globals-only -h 127.0.0.1 -p "$SRC_PORT" -U postgres >"$WORK/globals.sql"

log "restoring into a new cluster"
# Its workers serve the database `postgres` until the comparison is done, so
# the restored rows are compared exactly as pg_restore wrote them.
cluster_start "$DST" "$DST_PORT" postgres
# Roles made first take the OIDs the source's roles had: a restore that kept
# role OIDs instead of names would now point at the wrong roles.
sql "$DST_PORT" postgres -qc "CREATE ROLE ds_restore_padding_1" -c "CREATE ROLE ds_restore_padding_2"
grep -v '^CREATE ROLE postgres;$' "$WORK/globals.sql" | sql "$DST_PORT" postgres -q >/dev/null
sql "$DST_PORT" postgres -qc "CREATE DATABASE ds_backup"
"$BIN/pg_restore" --exit-on-error -h 127.0.0.1 -p "$DST_PORT" -U postgres -d ds_backup "$WORK/ds_backup.dump"
role_oids() { sql "$1" postgres -tAc "SELECT string_agg(oid::text, ',' ORDER BY rolname) FROM pg_roles WHERE rolname LIKE 'ds_fill_%'"; }
[ "$(role_oids "$SRC_PORT")" != "$(role_oids "$DST_PORT")" ] || {
    echo "the roles kept their OIDs: the restore would not test names" >&2
    exit 1
}
snapshot "$DST_PORT" restored
same "$WORK/final.content" "$WORK/restored.content" "streams read through the SQL API after pg_restore"
same "$WORK/final.raw" "$WORK/restored.raw" "stored rows after pg_restore"
echo "restored: $(wc -l <"$WORK/restored.content") facts and $(wc -l <"$WORK/restored.raw") stored rows identical (stream ids, offsets, producers, segments, quota owners by name)"
src_channel="$(sql "$SRC_PORT" ds_backup -tAc "SELECT ds.notify_channel()")"
dst_channel="$(sql "$DST_PORT" ds_backup -tAc "SELECT ds.notify_channel()")"
[[ "$dst_channel" =~ ^durable_streams_[0-9a-f]{32}$ ]] && [ "$dst_channel" != "$src_channel" ] || {
    echo "restored notify channel '$dst_channel' (source: '$src_channel')" >&2
    exit 1
}
echo "the restored database made its own notification channel"

log "ds-sidecar serves the restored database"
sed -i "s/^ds.database = .*/ds.database = 'ds_backup'/" "$DST/data/postgresql.conf"
as_pg "$BIN/pg_ctl" -D "$DST/data" -l "$DST/server.log" -w -t 60 restart >/dev/null
cargo build -q -p ds-sidecar
HTTP_PORT="$(free_port)"
./target/debug/ds-sidecar --database-url "postgresql://postgres@127.0.0.1:$DST_PORT/ds_backup" \
    --listen "127.0.0.1:$HTTP_PORT" --metrics-listen off --long-poll-timeout-ms 20000 \
    >"$WORK/sidecar.log" 2>&1 &
SIDECAR_PID=$!
URL="http://127.0.0.1:$HTTP_PORT/v1/stream"
wait_for_http "http://127.0.0.1:$HTTP_PORT/health"
header() { tr -d '\r' <"$1" | sed -n "s/^$2: //Ip" | tail -1; }
sql_all_md5() {
    sql "$DST_PORT" ds_backup -tAc "SELECT md5(coalesce(string_agg(data, ''::bytea ORDER BY start_offset), '')) FROM ds.read('$1')"
}
sql_tail() { sql "$DST_PORT" ds_backup -tAc "SELECT next_offset FROM ds.head('$1')"; }
for path in text/log bytes/blob; do
    curl -fsS -D "$WORK/get.headers" -o "$WORK/get.body" "$URL/$path?offset=-1"
    [ "$(md5sum <"$WORK/get.body" | cut -d' ' -f1)" = "$(sql_all_md5 "$path")" ] &&
        [ "$(header "$WORK/get.headers" Stream-Next-Offset)" = "$(sql_tail "$path")" ] || {
        echo "GET $path of the restored stream differs from its SQL read" >&2
        exit 1
    }
done
tail_before="$(sql_tail text/log)"
curl -fsS -D "$WORK/post.headers" -o /dev/null -X POST -H 'Content-Type: text/plain' \
    --data-binary $'over http\n' "$URL/text/log"
expected="$(printf '%s_%016d' "${tail_before%%_*}" $((10#${tail_before##*_} + 10)))"
[ "$(header "$WORK/post.headers" Stream-Next-Offset)" = "$expected" ] || {
    echo "POST appended at $(header "$WORK/post.headers" Stream-Next-Offset), expected $expected" >&2
    exit 1
}
# A long-poll at the tail is woken by an SQL append (the doorbell, on the
# restored database's own channel), well before its 20 s timeout.
tail_now="$(sql_tail text/log)"
started=$(date +%s)
curl -sS -o "$WORK/live.body" -w '%{http_code}' "$URL/text/log?offset=$tail_now&live=long-poll" >"$WORK/live.code" &
poll=$!
sleep 1
sql "$DST_PORT" ds_backup -qc "SELECT ds.append('text/log', E'woken\n')" >/dev/null
wait "$poll"
waited=$(($(date +%s) - started))
[ "$(cat "$WORK/live.code")" = 200 ] && [ "$(cat "$WORK/live.body")" = woken ] && [ "$waited" -lt 10 ] || {
    echo "long-poll on the restored database: status $(cat "$WORK/live.code"), body '$(cat "$WORK/live.body")', ${waited}s" >&2
    tail -20 "$WORK/sidecar.log" >&2
    exit 1
}
kill "$SIDECAR_PID"
wait "$SIDECAR_PID" || true
SIDECAR_PID=
echo "sidecar: GET returns the restored bytes, POST appends at the restored tail, a long-poll is woken in ${waited}s"
sql "$DST_PORT" ds_backup -q -f tests/upgrade/exercise.sql >/dev/null
echo "restored data: appends, producers, forks, rotation, quotas by role, fresh stream ids, deletes: ok"

log "point-in-time recovery to $LSN"
pg_owned_dir "$PITR"
as_pg cp -a "$WORK/base" "$PITR/data"
chmod 700 "$PITR/data"
# As README prints it: recovery settings in postgresql.auto.conf.
cat >>"$PITR/data/postgresql.auto.conf" <<CONF
archive_mode = off
restore_command = 'cp $ARCHIVE/%f %p'
recovery_target_lsn = '$LSN'
recovery_target_inclusive = off
recovery_target_action = 'promote'
CONF
as_pg touch "$PITR/data/recovery.signal"
cluster_start "$PITR" "$PITR_PORT" ds_backup
wait_for "$PITR_PORT" postgres "SELECT NOT pg_is_in_recovery()"
grep -q "recovery stopping before" "$PITR/server.log" || {
    echo "recovery did not stop at the target" >&2
    tail -20 "$PITR/server.log" >&2
    exit 1
}
sql "$PITR_PORT" ds_backup -tA -f tests/upgrade/snapshot-content.sql >"$WORK/pitr.content"
same "$WORK/at-lsn.content" "$WORK/pitr.content" "streams recovered to $LSN"
grep -q '^pitr/after-lsn: head raises 42704$' "$WORK/pitr.content"
echo "recovered to $LSN: $(wc -l <"$WORK/pitr.content") facts equal the snapshot taken at that LSN (nothing after it, every tail whole)"
log "backup tests passed in ${SECONDS} s"
