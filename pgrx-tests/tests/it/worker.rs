//! The background worker against a real cluster: automatic rotation, the
//! expiry reaper, a kill -9 in the middle of a rotation, and readers running
//! alongside rotation.

use std::time::Duration;

use tokio::time::{Instant, sleep};
use tokio_postgres::Client;

use crate::{connect, connect_with_notifications, off, unique_path};

/// Sets worker settings with ALTER SYSTEM and reloads; `reset` undoes them.
pub(crate) async fn configure(c: &Client, settings: &[(&str, &str)]) {
    for (name, value) in settings {
        c.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'")).await.unwrap();
    }
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    // The worker applies a reload at its next wake-up (at most one interval).
    sleep(Duration::from_millis(300)).await;
}

pub(crate) async fn reset(c: &Client, names: &[&str]) {
    for name in names {
        c.batch_execute(&format!("ALTER SYSTEM RESET {name}")).await.unwrap();
    }
    c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
}

const ROTATION: [&str; 4] = [
    "ds.rotation_interval_ms",
    "ds.segment_target_bytes",
    "ds.hot_tail_bytes",
    "ds.debug_rotation_pause_ms",
];

/// All bytes of a stream, checking offsets are contiguous from 0.
async fn read_all(c: &Client, path: &str) -> Vec<u8> {
    let rows =
        c.query("SELECT start_offset, next_offset, data FROM ds.read($1)", &[&path]).await.unwrap();
    let mut bytes = Vec::new();
    for row in rows {
        assert_eq!(row.get::<_, String>(0), off(bytes.len() as u64), "no gap, no overlap");
        let data: Vec<u8> = row.get(2);
        bytes.extend_from_slice(&data);
        assert_eq!(row.get::<_, String>(1), off(bytes.len() as u64));
    }
    bytes
}

async fn append_lines(c: &Client, path: &str, range: std::ops::Range<usize>) -> Vec<u8> {
    let mut expected = Vec::new();
    for i in range {
        let line = format!("line {i:05}\n");
        c.execute("SELECT ds.append($1, $2::text)", &[&path, &line]).await.unwrap();
        expected.extend_from_slice(line.as_bytes());
    }
    expected
}

async fn segments_of(c: &Client, path: &str) -> i64 {
    c.query_one("SELECT segments FROM ds.stats() WHERE path = $1", &[&path]).await.unwrap().get(0)
}

#[tokio::test]
async fn worker_rotates_cold_data_and_reaps_expired_streams() {
    let admin = connect().await;
    configure(
        &admin,
        &[
            ("ds.rotation_interval_ms", "200"),
            ("ds.segment_target_bytes", "200"),
            ("ds.hot_tail_bytes", "100"),
        ],
    )
    .await;
    let path = unique_path("auto-rotate");
    admin.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    let expected = append_lines(&admin, &path, 0..100).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while segments_of(&admin, &path).await == 0 {
        assert!(Instant::now() < deadline, "the worker rotated the stream");
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read_all(&admin, &path).await, expected);

    // Expiry: the reaper deletes the stream and wakes LISTENers.
    let (listener, mut rx) = connect_with_notifications().await;
    crate::listen(&listener).await;
    let doomed = unique_path("reaped");
    admin.execute("SELECT ds.create($1, ttl_seconds => 1)", &[&doomed]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut announced = false;
    while !announced {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((_, payload, _))) = tokio::time::timeout(left, rx.recv()).await else {
            panic!("no deletion announced for an expired stream")
        };
        announced = payload.lines().any(|l| l == format!("- {doomed}"));
    }
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM ds.streams WHERE path = $1", &[&doomed])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "data, producers and the stream row are gone");
    let stats = admin
        .query_one("SELECT passes, segments_written, streams_expired FROM ds.worker_stats()", &[])
        .await
        .unwrap();
    assert!(stats.get::<_, i64>(0) > 0 && stats.get::<_, i64>(1) > 0 && stats.get::<_, i64>(2) > 0);
    reset(&admin, &ROTATION).await;
}

#[tokio::test]
async fn kill_9_in_the_middle_of_a_rotation_loses_and_duplicates_nothing() {
    let admin = connect().await;
    let path = unique_path("crash");
    admin.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    let expected = append_lines(&admin, &path, 0..200).await;
    configure(
        &admin,
        &[
            ("ds.rotation_interval_ms", "200"),
            ("ds.segment_target_bytes", "300"),
            ("ds.hot_tail_bytes", "100"),
            ("ds.debug_rotation_pause_ms", "5000"),
        ],
    )
    .await;

    // Wait until the worker has written a segment but not yet deleted its rows.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid: i32 = loop {
        let row = admin
            .query_opt(
                // DISTINCT, and relation locks only: while it inserts, the
                // worker may also hold the table's extension lock (a second row).
                "SELECT DISTINCT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
                 WHERE a.backend_type = 'durable_streams maintenance' AND l.locktype = 'relation' \
                   AND l.relation = 'ds.segments'::regclass",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(Instant::now() < deadline, "the worker started rotating");
        sleep(Duration::from_millis(50)).await;
    };
    let status =
        std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -9 the worker mid-rotation");
    // The postmaster restarts every backend and replays WAL; reconnect.
    let c = reconnect_after_crash(admin).await;
    reset(&c, &["ds.debug_rotation_pause_ms"]).await;
    assert_eq!(read_all(&c, &path).await, expected, "every byte once, in order, after the crash");
    let overlap: i64 = c
        .query_one(
            "SELECT count(*) FROM ds.segments g JOIN ds.messages m USING (stream_id) \
             WHERE g.stream_id = (SELECT stream_id FROM ds.head($1)) \
               AND m.start_pos >= g.start_pos AND m.start_pos < g.end_pos",
            &[&path],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overlap, 0, "no row is both in a segment and in the hot log");

    // Rotation resumes once the worker is back, and still changes nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while segments_of(&c, &path).await == 0 {
        assert!(Instant::now() < deadline, "rotation resumed after the crash");
        sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(read_all(&c, &path).await, expected);
    reset(&c, &ROTATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_see_identical_data_while_rotation_and_appends_run() {
    let path = unique_path("rotate-read");
    let writer = connect().await;
    writer.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
    let mut expected = append_lines(&writer, &path, 0..300).await;

    let rotator = {
        let path = path.clone();
        tokio::spawn(async move {
            let c = connect().await;
            c.batch_execute("SET ds.segment_target_bytes = 64; SET ds.hot_tail_bytes = 0")
                .await
                .unwrap();
            let mut segments = 0;
            for _ in 0..40 {
                segments += c
                    .query_one("SELECT segments FROM ds.rotate($1)", &[&path])
                    .await
                    .unwrap()
                    .get::<_, i64>(0);
                sleep(Duration::from_millis(10)).await;
            }
            segments
        })
    };
    let reader = {
        let path = path.clone();
        tokio::spawn(async move {
            let c = connect().await;
            let mut reads = Vec::new();
            for _ in 0..60 {
                reads.push(read_all(&c, &path).await);
            }
            reads
        })
    };
    expected.extend(append_lines(&writer, &path, 300..400).await);
    let segments = rotator.await.unwrap();
    assert!(segments > 0, "rotation ran during the reads");
    for read in reader.await.unwrap() {
        assert!(expected.starts_with(&read), "each read is an exact prefix: no gap, no duplicate");
        assert!(read.len() >= 300 * 11);
    }
    assert_eq!(read_all(&writer, &path).await, expected);
}

#[tokio::test]
async fn idle_producer_state_is_forgotten_only_when_configured() {
    let admin = connect().await;
    let path = unique_path("producer-ttl");
    admin.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    let call = "SELECT outcome FROM ds.try_append($1, 'x'::bytea, \
                producer_id => 'p', producer_epoch => 0, producer_seq => 0)";
    assert_eq!(admin.query_one(call, &[&path]).await.unwrap().get::<_, String>(0), "ok");
    // Default: kept as long as the stream exists.
    configure(&admin, &[("ds.rotation_interval_ms", "200")]).await;
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(admin.query_one(call, &[&path]).await.unwrap().get::<_, String>(0), "duplicate");

    configure(&admin, &[("ds.producer_ttl_seconds", "1")]).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM ds.producers WHERE stream_id = (SELECT stream_id FROM ds.head($1))",
                &[&path],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "idle producer state was forgotten");
        sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        admin.query_one(call, &[&path]).await.unwrap().get::<_, String>(0),
        "ok",
        "a new producer again"
    );
    reset(&admin, &["ds.rotation_interval_ms", "ds.producer_ttl_seconds"]).await;
}

/// Waits until the maintenance worker has finished `n` more passes.
async fn wait_for_passes(c: &Client, n: i64) {
    let passes = || async {
        c.query_one("SELECT passes FROM ds.worker_stats()", &[]).await.unwrap().get::<_, i64>(0)
    };
    let target = passes().await + n;
    let deadline = Instant::now() + Duration::from_secs(30);
    while passes().await < target {
        assert!(Instant::now() < deadline, "the maintenance worker made {n} passes");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_huge_ttl_from_an_old_install_stops_neither_expiry_nor_delete() {
    let c = connect().await;
    configure(&c, &[("ds.rotation_interval_ms", "200")]).await;
    // Written directly, as an install without the TTL limit could have:
    // last_access + 2^53 seconds overflows.
    let huge = unique_path("huge-ttl");
    c.execute(
        "INSERT INTO ds.streams (path, content_type, ttl_seconds, last_access) \
         VALUES ($1, 'text/plain', 9007199254740992, now() - interval '1 day')",
        &[&huge],
    )
    .await
    .unwrap();
    let doomed = unique_path("doomed");
    c.execute("SELECT ds.create($1, ttl_seconds => 1)", &[&doomed]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let reaped = loop {
        let left: i64 = c
            .query_one("SELECT count(*) FROM ds.streams WHERE path = $1", &[&doomed])
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        sleep(Duration::from_millis(100)).await;
    };
    let head = c.query_one("SELECT closed FROM ds.head($1)", &[&huge]).await.map(|r| r.get(0));
    let deleted = c.execute("SELECT ds.delete($1)", &[&huge]).await;
    if deleted.is_err() {
        // Leave no row behind that would break the tests after this one.
        c.execute("DELETE FROM ds.streams WHERE path = $1", &[&huge]).await.unwrap();
    }
    reset(&c, &["ds.rotation_interval_ms"]).await;
    assert!(reaped, "the other expired stream was reaped despite the huge TTL");
    assert_eq!(head.map_err(|e| crate::sqlstate(&e)), Ok(false), "the huge-TTL stream reads");
    assert!(deleted.is_ok(), "ds.delete works on it: {deleted:?}");
}

/// Kills the maintenance worker with SIGKILL: the postmaster then restarts
/// every process, and the workers reconnect (picking up database settings).
pub(crate) async fn crash_restart(c: Client) -> Client {
    let pid: i32 = c
        .query_one(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'durable_streams maintenance'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let status =
        std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    reconnect_after_crash(c).await
}

/// After a SIGKILL of a server process: waits until the postmaster's crash
/// restart has ended `old`, then connects to the restarted cluster. A
/// connection made before the postmaster noticed the death would be cut by
/// the restart a moment later.
async fn reconnect_after_crash(old: Client) -> Client {
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_secs(2), old.query_one("SELECT 1", &[])).await
    {
        assert!(Instant::now() < deadline, "the postmaster restarted every backend after the kill");
        sleep(Duration::from_millis(20)).await;
    }
    drop(old);
    loop {
        if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(2), async {
            let (c, _) = crate::connect_to_checked().await?;
            c.query_one("SELECT 1", &[]).await.map(|_| c)
        })
        .await
        {
            return c;
        }
        assert!(Instant::now() < deadline, "the cluster came back after the crash");
        sleep(Duration::from_millis(200)).await;
    }
}

const TRAP_SETUP: &str = "
    DO $$ BEGIN CREATE ROLE ds_it_db_owner LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
    CREATE TABLE IF NOT EXISTS public.ds_it_trap (who text NOT NULL, op text NOT NULL);
    GRANT INSERT, SELECT ON public.ds_it_trap TO PUBLIC;
    GRANT CREATE ON SCHEMA public TO ds_it_db_owner;
    TRUNCATE public.ds_it_trap;
    SET ROLE ds_it_db_owner;
    CREATE FUNCTION public.trap_mul(bigint, interval) RETURNS interval LANGUAGE plpgsql AS
      $$ BEGIN INSERT INTO public.ds_it_trap VALUES (current_user, '*(bigint, interval)');
               RETURN $1::float8 OPERATOR(pg_catalog.*) $2; END $$;
    CREATE OPERATOR public.* (LEFTARG = bigint, RIGHTARG = interval, FUNCTION = public.trap_mul);
    CREATE FUNCTION public.trap_add(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql AS
      $$ BEGIN INSERT INTO public.ds_it_trap VALUES (current_user, '+(timestamptz, interval)');
               RETURN $1 OPERATOR(pg_catalog.+) $2; END $$;
    CREATE OPERATOR public.+ (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = public.trap_add);
    CREATE FUNCTION public.trap_sub(timestamptz, interval) RETURNS timestamptz LANGUAGE plpgsql AS
      $$ BEGIN INSERT INTO public.ds_it_trap VALUES (current_user, '-(timestamptz, interval)');
               RETURN $1 OPERATOR(pg_catalog.-) $2; END $$;
    CREATE OPERATOR public.- (LEFTARG = timestamptz, RIGHTARG = interval, FUNCTION = public.trap_sub);
    CREATE FUNCTION public.trap_minus(bigint, bigint) RETURNS bigint LANGUAGE plpgsql AS
      $$ BEGIN INSERT INTO public.ds_it_trap VALUES (current_user, '-(bigint, bigint)');
               RETURN $1 OPERATOR(pg_catalog.-) $2; END $$;
    CREATE OPERATOR public.- (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.trap_minus);
    CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS
      $$ BEGIN INSERT INTO public.ds_it_trap VALUES (current_user, 'now()');
               RETURN pg_catalog.now(); END $$;
    RESET ROLE;
";

const TRAP_TEARDOWN: &str = "
    DROP OPERATOR IF EXISTS public.* (bigint, interval);
    DROP OPERATOR IF EXISTS public.+ (timestamptz, interval);
    DROP OPERATOR IF EXISTS public.- (timestamptz, interval);
    DROP OPERATOR IF EXISTS public.- (bigint, bigint);
    DROP FUNCTION IF EXISTS public.trap_mul(bigint, interval), public.trap_add(timestamptz, interval),
        public.trap_sub(timestamptz, interval), public.trap_minus(bigint, bigint), public.now();
";

#[tokio::test]
async fn the_workers_never_run_operators_a_database_owner_planted() {
    let c = connect().await;
    let db: String = c.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    c.batch_execute(TRAP_TEARDOWN).await.unwrap();
    c.batch_execute(TRAP_SETUP).await.unwrap();
    // What a database owner may do: put their schema first, ahead of pg_catalog.
    c.batch_execute(&format!("ALTER DATABASE \"{db}\" SET search_path = public, pg_catalog"))
        .await
        .unwrap();
    configure(
        &c,
        &[
            ("ds.rotation_interval_ms", "200"),
            ("ds.segment_target_bytes", "10"),
            ("ds.hot_tail_bytes", "0"),
        ],
    )
    .await;
    // Work for every kind of statement a pass runs: a TTL stream, an expired
    // one, a rotatable one.
    let ttl = unique_path("trap-ttl");
    c.execute("SELECT ds.create($1, ttl_seconds => 3600)", &[&ttl]).await.unwrap();
    let expired = unique_path("trap-expired");
    c.execute("SELECT ds.create($1, ttl_seconds => 1)", &[&expired]).await.unwrap();
    let rotated = unique_path("trap-rotated");
    c.execute("SELECT ds.create($1, 'text/plain')", &[&rotated]).await.unwrap();
    append_lines(&c, &rotated, 0..20).await;
    sleep(Duration::from_millis(1100)).await;
    // The workers pick the database's settings up when they (re)connect.
    let c = crash_restart(c).await;
    // Wait for the work itself, not a number of passes: the shared test
    // database can hold hundreds of other streams that these settings make
    // rotatable, and a pass takes 100 of them round-robin.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut reaped, mut rotated_segments) = (1i64, 0i64);
    while Instant::now() < deadline {
        reaped = c
            .query_one("SELECT count(*) FROM ds.streams WHERE path = $1", &[&expired])
            .await
            .unwrap()
            .get(0);
        rotated_segments = segments_of(&c, &rotated).await;
        if reaped == 0 && rotated_segments > 0 {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    wait_for_passes(&c, 1).await;
    // The doorbell: announce an append.
    c.execute("SELECT ds.append($1, 'x'::bytea)", &[&ttl]).await.unwrap();
    sleep(Duration::from_millis(500)).await;
    let calls: Vec<(String, String)> = c
        .query("SELECT who, op FROM public.ds_it_trap", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    c.batch_execute(&format!("ALTER DATABASE \"{db}\" RESET search_path")).await.unwrap();
    c.batch_execute(TRAP_TEARDOWN).await.unwrap();
    reset(&c, &ROTATION).await;
    assert_eq!(calls, [], "no planted operator or function ran (as any role)");
    assert_eq!(reaped, 0, "the pass did its work: the expired stream was reaped");
    assert!(rotated_segments > 0, "and the rotatable stream was rotated");
}

/// A SIGTERM that arrives while a maintenance pass rotates ends the worker
/// after the stream it is on. pgrx's flag clears when read, and the pass
/// read it between streams: the worker went on, and a fast shutdown hung
/// on it until pg_ctl gave up.
#[tokio::test]
async fn a_sigterm_in_the_middle_of_a_pass_ends_the_maintenance_worker() {
    let admin = connect().await;
    for name in ["sigterm-a", "sigterm-b"] {
        let path = unique_path(name);
        admin.execute("SELECT ds.create($1, 'text/plain')", &[&path]).await.unwrap();
        append_lines(&admin, &path, 0..100).await;
    }
    configure(
        &admin,
        &[
            ("ds.rotation_interval_ms", "200"),
            ("ds.segment_target_bytes", "300"),
            ("ds.hot_tail_bytes", "100"),
            ("ds.debug_rotation_pause_ms", "2000"),
        ],
    )
    .await;
    // In the middle of a rotation (more streams wait after this one).
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid: i32 = loop {
        let row = admin
            .query_opt(
                "SELECT DISTINCT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid \
                 WHERE a.backend_type = 'durable_streams maintenance' AND l.locktype = 'relation' \
                   AND l.relation = 'ds.segments'::regclass",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(Instant::now() < deadline, "the worker started rotating");
        sleep(Duration::from_millis(50)).await;
    };
    admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let alive: bool = admin
            .query_one("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)", &[&pid])
            .await
            .unwrap()
            .get(0);
        if !alive {
            break;
        }
        if Instant::now() >= deadline {
            reset(&admin, &ROTATION).await;
            panic!("the maintenance worker {pid} still runs 20 s after SIGTERM");
        }
        sleep(Duration::from_millis(100)).await;
    }
    reset(&admin, &ROTATION).await;
    // The postmaster starts it again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let back: bool = admin
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_stat_activity \
                 WHERE backend_type = 'durable_streams maintenance')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if back {
            break;
        }
        assert!(Instant::now() < deadline, "the maintenance worker was restarted");
        sleep(Duration::from_millis(200)).await;
    }
}

/// Every worker terminated on its own (`pg_terminate_backend`) comes back:
/// it exits with code 1, which the postmaster restarts (code 0 would leave
/// the database without announcements, sequencing or maintenance).
#[tokio::test]
async fn terminated_workers_are_restarted() {
    let admin = connect().await;
    for worker in ["durable_streams doorbell", "durable_streams sequencer"] {
        let pid: i32 = admin
            .query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = $1", &[&worker])
            .await
            .unwrap()
            .get(0);
        admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let back: Option<i32> = admin
                .query_opt(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = $1 AND pid <> $2",
                    &[&worker, &pid],
                )
                .await
                .unwrap()
                .map(|r| r.get(0));
            if back.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "{worker} was restarted after SIGTERM");
            sleep(Duration::from_millis(200)).await;
        }
    }
}
