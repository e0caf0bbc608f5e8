//! Path grants: a role reaches exactly the paths its grants cover, from
//! every function, with 42501 naming path and privilege; revokes count from
//! the next transaction; batches check each request as its own role;
//! quotas refuse with 53400 and append nothing; notifications reveal
//! nothing to roles that may not read.
//!
//! Roles are NOLOGIN tenants the superuser test connection acts as with
//! `SET ROLE` (what the sidecar does per request). They get EXECUTE on every
//! function but `ds.notify_channel()`, so only path grants decide.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::timeout;
use tokio_postgres::Client;

use crate::{connect, connect_with_notifications, listen, sqlstate, unique_path};

/// The server's message of a failed call.
fn msg(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

/// Creates a tenant role with a unique name; returns the name.
async fn tenant(admin: &Client, name: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let role = format!("it_{name}_{nanos}");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} NOLOGIN; GRANT USAGE ON SCHEMA ds TO {role}; \
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ds TO {role}; \
             REVOKE EXECUTE ON FUNCTION ds.notify_channel() FROM {role}; \
             GRANT SELECT ON ds.grants TO {role};"
        ))
        .await
        .unwrap();
    role
}

async fn grant(admin: &Client, role: &str, pattern: &str, privileges: &str) {
    admin.execute("SELECT ds.grant($1, $2, $3)", &[&role, &pattern, &privileges]).await.unwrap();
}

async fn act_as(client: &Client, role: &str) {
    client.batch_execute(&format!("SET ROLE {role}")).await.unwrap();
}

async fn reset(client: &Client) {
    client.batch_execute("RESET ROLE").await.unwrap();
}

/// Runs `sql` with one text parameter; returns the SQLSTATE and message of
/// its failure, or None if it succeeded.
async fn failure(client: &Client, sql: &str, path: &str) -> Option<(String, String)> {
    match client.execute(sql, &[&path]).await {
        Ok(_) => None,
        Err(e) => Some((sqlstate(&e), msg(&e))),
    }
}

#[tokio::test]
async fn tenants_reach_only_their_own_paths() {
    let admin = connect().await;
    let (a, b) = (tenant(&admin, "a").await, tenant(&admin, "b").await);
    let root = unique_path("acl");
    let (pa, pb) = (format!("{root}/a"), format!("{root}/b"));
    grant(&admin, &a, &format!("{pa}/**"), "all").await;
    grant(&admin, &b, &format!("{pb}/**"), "read, append, create").await;

    let client = connect().await;
    act_as(&client, &b).await;
    let theirs = format!("{pb}/secret");
    client.execute("SELECT ds.create($1, 'text/plain')", &[&theirs]).await.unwrap();
    client.execute("SELECT ds.append($1, 'b data'::text)", &[&theirs]).await.unwrap();

    act_as(&client, &a).await;
    let mine = format!("{pa}/events");
    client.execute("SELECT ds.create($1, 'text/plain')", &[&mine]).await.unwrap();
    client.execute("SELECT ds.append($1, 'a data'::text)", &[&mine]).await.unwrap();
    let rows = client.query("SELECT data FROM ds.read($1)", &[&mine]).await.unwrap();
    assert_eq!(rows.len(), 1);

    // Every function, on an existing and on a missing path of B's: the same
    // 42501, so A cannot even tell whether the stream exists.
    for path in [theirs.clone(), format!("{pb}/missing")] {
        for (sql, privilege) in [
            ("SELECT * FROM ds.read($1)", "read"),
            ("SELECT * FROM ds.read_chunk($1)", "read"),
            ("SELECT * FROM ds.head($1)", "read"),
            ("SELECT ds.append($1, 'x'::text)", "append"),
            ("SELECT ds.close($1)", "append"),
            ("SELECT ds.delete($1)", "delete"),
            ("SELECT * FROM ds.create($1)", "create"),
            ("SELECT * FROM ds.rotate($1)", "admin"),
        ] {
            let (state, message) =
                failure(&client, sql, &path).await.unwrap_or_else(|| panic!("{sql} on {path}"));
            assert_eq!(state, "42501", "{sql}: {message}");
            assert!(
                message.contains(&format!("{privilege} privilege"))
                    && message.contains(&path)
                    && message.contains(&a),
                "{sql}: {message}"
            );
        }
    }
    // A fork needs read on the source and create + fork on the new path.
    let forked = format!("{pa}/fork");
    let e = client.execute("SELECT ds.fork($1, $2)", &[&forked, &theirs]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    assert!(msg(&e).contains("read privilege"), "{e}");
    let e = client
        .execute("SELECT ds.fork($1, $2)", &[&format!("{pb}/fork"), &mine])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    client.execute("SELECT ds.fork($1, $2)", &[&forked, &mine]).await.unwrap();
    // B has create but not fork on its prefix.
    act_as(&client, &b).await;
    let e = client
        .execute("SELECT ds.fork($1, $2)", &[&format!("{pb}/f2"), &theirs])
        .await
        .unwrap_err();
    assert!(msg(&e).contains("fork privilege"), "{e}");

    // try_append reports the refusal as data.
    act_as(&client, &a).await;
    let row = client
        .query_one("SELECT outcome, sqlstate, detail FROM ds.try_append($1, 'x')", &[&theirs])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "forbidden");
    assert_eq!(row.get::<_, String>(1), "42501");

    // ds.stats lists only what A may read.
    let listed: Vec<String> = client
        .query("SELECT path FROM ds.stats() WHERE path LIKE $1", &[&format!("{root}/%")])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(listed.contains(&mine) && listed.contains(&forked), "{listed:?}");
    assert!(!listed.contains(&theirs), "{listed:?}");

    // Nothing of B's changed.
    reset(&client).await;
    let data: Vec<u8> =
        client.query_one("SELECT data FROM ds.read($1)", &[&theirs]).await.unwrap().get(0);
    assert_eq!(data, b"b data");
    let n: i64 =
        client.query_one("SELECT count(*) FROM ds.read($1)", &[&theirs]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_revoke_counts_from_the_next_transaction() {
    let admin = connect().await;
    let reader = tenant(&admin, "reader").await;
    let path = unique_path("revoke");
    admin.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    grant(&admin, &reader, &path, "read").await;

    let mut client = connect().await;
    act_as(&client, &reader).await;
    client.query("SELECT * FROM ds.read($1)", &[&path]).await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.query("SELECT * FROM ds.head($1)", &[&path]).await.unwrap();
    admin.execute("SELECT ds.revoke($1, $2, 'read')", &[&reader, &path]).await.unwrap();
    // Grants were read once for this transaction: it keeps them.
    tx.query("SELECT * FROM ds.head($1)", &[&path]).await.unwrap();
    tx.commit().await.unwrap();
    let e = client.query("SELECT * FROM ds.head($1)", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // The grant row is gone once it holds nothing.
    let left: i64 = admin
        .query_one("SELECT count(*) FROM ds.grants WHERE grantee = $1", &[&reader])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn the_path_grants_of_a_dropped_role_are_forgotten() {
    let admin = connect().await;
    let (gone, kept) = (tenant(&admin, "gone").await, tenant(&admin, "kept").await);
    let pattern = format!("{}/**", unique_path("dropped-role"));
    grant(&admin, &gone, &pattern, "read, append").await;
    grant(&admin, &kept, &pattern, "read").await;
    let oid: u32 = admin
        .query_one("SELECT oid FROM pg_roles WHERE rolname = $1", &[&gone])
        .await
        .unwrap()
        .get(0);
    admin.batch_execute(&format!("DROP OWNED BY {gone}; DROP ROLE {gone}")).await.unwrap();
    // DROP ROLE leaves the row (an OID a later role could get); the
    // maintenance worker's next pass deletes it, and only it.
    let count = |sql: &'static str| {
        let admin = &admin;
        let pattern = &pattern;
        async move { admin.query_one(sql, &[pattern, &oid]).await.unwrap().get::<_, i64>(0) }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while count("SELECT count(*) FROM ds.path_grants WHERE pattern = $1 AND grantee::oid = $2")
        .await
        > 0
    {
        assert!(std::time::Instant::now() < deadline, "the dropped role's grant is still there");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let others =
        count("SELECT count(*) FROM ds.path_grants WHERE pattern = $1 AND grantee::oid <> $2")
            .await;
    assert_eq!(others, 1, "{kept}'s grant on the same pattern stays");
}

#[tokio::test]
async fn group_roles_pass_their_grants_to_members() {
    let admin = connect().await;
    let (team, member) = (tenant(&admin, "team").await, tenant(&admin, "member").await);
    admin.batch_execute(&format!("GRANT {team} TO {member}")).await.unwrap();
    let path = unique_path("team");
    admin.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    grant(&admin, &team, &path, "read").await;
    let client = connect().await;
    act_as(&client, &member).await;
    client.query("SELECT * FROM ds.head($1)", &[&path]).await.unwrap();
}

#[tokio::test]
async fn a_batch_checks_each_request_as_its_own_role() {
    let admin = connect().await;
    let (a, b) = (tenant(&admin, "ba").await, tenant(&admin, "bb").await);
    let sidecar = tenant(&admin, "sidecar").await;
    admin.batch_execute(&format!("GRANT {a} TO {sidecar}")).await.unwrap();
    let root = unique_path("batch");
    let (pa, pb) = (format!("{root}/a"), format!("{root}/b"));
    for p in [&pa, &pb] {
        admin.execute("SELECT ds.create($1)", &[p]).await.unwrap();
    }
    grant(&admin, &a, &pa, "append").await;
    grant(&admin, &b, &pb, "append").await;

    let client = connect().await;
    let batch = "SELECT outcome, coalesce(sqlstate, ''), coalesce(detail, '') \
         FROM ds.try_append_batch($1, ARRAY['x','y','z','w']::bytea[], \
              ARRAY[NULL,NULL,NULL,NULL]::text[], ARRAY[NULL,NULL,NULL,NULL]::text[], \
              ARRAY[NULL,NULL,NULL,NULL]::text[], ARRAY[NULL,NULL,NULL,NULL]::bigint[], \
              ARRAY[NULL,NULL,NULL,NULL]::bigint[], ARRAY[false,false,false,false], \
              as_roles => $2) ORDER BY idx";
    let paths = vec![pa.clone(), pb.clone(), pb.clone(), pa.clone()];
    // A superuser may act as anyone; each request is checked as its role.
    let roles =
        vec![Some(a.clone()), Some(a.clone()), Some(b.clone()), Some("it_no_such_role".into())];
    let outcomes: Vec<(String, String, String)> = client
        .query(batch, &[&paths, &roles])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(outcomes[0].0, "ok");
    assert_eq!((outcomes[1].0.as_str(), outcomes[1].1.as_str()), ("forbidden", "42501"));
    assert_eq!(outcomes[2].0, "ok");
    assert_eq!(outcomes[3].0, "forbidden");
    assert!(outcomes[3].2.contains("does not exist"), "{:?}", outcomes[3]);

    // A non-superuser may name only roles it could SET ROLE to.
    act_as(&client, &sidecar).await;
    let roles = vec![Some(a.clone()), Some(b.clone()), Some(b.clone()), Some(a.clone())];
    let outcomes: Vec<(String, String)> = client
        .query(batch, &[&paths, &roles])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(2)))
        .collect();
    assert_eq!(outcomes[0].0, "ok");
    assert_eq!(outcomes[1].0, "forbidden");
    assert!(outcomes[1].1.contains("may not act as"), "{:?}", outcomes[1]);
    assert_eq!(outcomes[3].0, "ok");
    reset(&client).await;
    let read = |p: String| {
        let client = &client;
        async move {
            let rows = client.query("SELECT data FROM ds.read($1)", &[&p]).await.unwrap();
            rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect::<Vec<_>>().concat()
        }
    };
    assert_eq!(read(pa).await, b"xxw");
    assert_eq!(read(pb).await, b"z");
}

#[tokio::test]
async fn admins_grant_only_within_their_prefix() {
    let admin = connect().await;
    let (boss, worker, other) = (
        tenant(&admin, "boss").await,
        tenant(&admin, "worker").await,
        tenant(&admin, "other").await,
    );
    let root = unique_path("admin");
    grant(&admin, &boss, &format!("{root}/team/**"), "admin").await;
    grant(&admin, &other, &format!("{root}/elsewhere/*"), "read").await;

    let client = connect().await;
    act_as(&client, &boss).await;
    client
        .execute("SELECT ds.grant($1, $2, 'read,append')", &[&worker, &format!("{root}/team/*")])
        .await
        .unwrap();
    for pattern in [format!("{root}/**"), "**".to_owned(), format!("{root}/elsewhere/*")] {
        let e = client
            .execute("SELECT ds.grant($1, $2, 'read')", &[&worker, &pattern])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{pattern}: {e}");
    }
    // The view shows the boss's own grant and those within its prefix only.
    let seen: Vec<(String, String)> = client
        .query(
            "SELECT grantee, pattern FROM ds.grants WHERE pattern LIKE $1 ORDER BY pattern",
            &[&format!("{root}/%")],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        seen,
        vec![(worker.clone(), format!("{root}/team/*")), (boss.clone(), format!("{root}/team/**"))]
    );
    // Bad input says what to fix.
    for (pattern, privileges, state) in [
        (format!("{root}/team/room-*"), "read", "22023"),
        (format!("{root}/team/x"), "write", "22023"),
        (format!("{root}/team/x"), "", "22023"),
    ] {
        let e = client
            .execute("SELECT ds.grant($1, $2, $3)", &[&worker, &pattern, &privileges])
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), state, "{pattern} {privileges}: {e}");
    }
    let e = client
        .execute("SELECT ds.grant('it_no_such_role', $1, 'read')", &[&format!("{root}/team/x")])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42704");
    // Path checks cannot be switched off by a non-superuser.
    let e = client.batch_execute("SET ds.path_checks = off").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
}

#[tokio::test]
async fn an_application_security_definer_function_lends_no_stream_privileges() {
    let admin = connect().await;
    let user = tenant(&admin, "app_user").await;
    let path = unique_path("definer");
    admin.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    let function = format!("it_read_{}", user.trim_start_matches("it_"));
    admin
        .batch_execute(&format!(
            "CREATE FUNCTION public.{function}(p text) RETURNS bigint SECURITY DEFINER \
             LANGUAGE sql AS $$ SELECT count(*) FROM ds.read(p) $$; \
             GRANT EXECUTE ON FUNCTION public.{function}(text) TO {user};"
        ))
        .await
        .unwrap();
    let client = connect().await;
    act_as(&client, &user).await;
    let e = client.query(&format!("SELECT public.{function}($1)"), &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
}

#[tokio::test]
async fn quotas_refuse_with_53400_and_append_nothing() {
    let admin = connect().await;
    let owner = tenant(&admin, "quota").await;
    let root = unique_path("quota");
    grant(&admin, &owner, &format!("{root}/**"), "all").await;
    admin
        .execute("SELECT ds.set_quota($1, max_bytes => 10, max_streams => 2)", &[&owner])
        .await
        .unwrap();
    let client = connect().await;
    act_as(&client, &owner).await;
    let (s1, s2, s3) = (format!("{root}/1"), format!("{root}/2"), format!("{root}/3"));
    client.execute("SELECT ds.create($1, 'text/plain')", &[&s1]).await.unwrap();
    client.execute("SELECT ds.create($1, 'text/plain', body => 'abc')", &[&s2]).await.unwrap();
    let e = client.execute("SELECT ds.create($1)", &[&s3]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53400", "{e}");
    assert!(msg(&e).contains("already holds 2 streams"), "{e}");

    client.execute("SELECT ds.append($1, '1234567'::text)", &[&s1]).await.unwrap();
    let e = client.execute("SELECT ds.append($1, 'x'::text)", &[&s1]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53400", "{e}");
    assert!(msg(&e).contains("over its quota of 10 bytes"), "{e}");
    let row = client
        .query_one("SELECT outcome, sqlstate FROM ds.try_append($1, 'x')", &[&s2])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("quota_exceeded".into(), "53400".into())
    );
    let tail: String =
        client.query_one("SELECT next_offset FROM ds.head($1)", &[&s1]).await.unwrap().get(0);
    assert_eq!(tail, crate::off(7), "nothing appended");
    let usage: (i64, i64) = {
        let r = client.query_one("SELECT bytes, streams FROM ds.quota_usage()", &[]).await.unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(usage, (10, 2));

    // Per-stream limits, and only superusers set role quotas.
    let e = client.execute("SELECT ds.set_quota($1, 1, 1)", &[&owner]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    reset(&client).await;
    client.execute("SELECT ds.set_quota($1, NULL, NULL)", &[&owner]).await.unwrap();
    client.execute("SELECT ds.set_stream_quota($1, 8)", &[&s1]).await.unwrap();
    client.execute("SELECT ds.append($1, 'a'::text)", &[&s1]).await.unwrap();
    let e = client.execute("SELECT ds.append($1, 'b'::text)", &[&s1]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53400");
    assert!(msg(&e).contains("ds.set_stream_quota"), "{e}");
    let e = client.execute("SELECT ds.set_stream_quota($1, -1)", &[&s1]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "22023");
}

#[tokio::test]
async fn notifications_reveal_nothing_to_roles_that_may_not_read() {
    let admin = connect().await;
    let outsider = tenant(&admin, "outsider").await;
    let path = unique_path("quiet");
    admin.execute("SELECT ds.create($1)", &[&path]).await.unwrap();

    // The private channel's name is not the outsider's to learn.
    let (spy, mut spy_rx) = connect_with_notifications().await;
    act_as(&spy, &outsider).await;
    let e = spy.query_one("SELECT ds.notify_channel()", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    spy.batch_execute("LISTEN durable_streams").await.unwrap();
    let e = spy.query("SELECT * FROM ds.settings", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");

    let (listener, mut rx) = connect_with_notifications().await;
    let channel = listen(&listener).await;
    assert!(channel.starts_with("durable_streams_") && channel.len() > 40, "{channel}");
    admin.execute("SELECT ds.append($1, 'x'::bytea)", &[&path]).await.unwrap();
    let (got, payload, _) =
        timeout(Duration::from_secs(5), rx.recv()).await.expect("announced").unwrap();
    assert_eq!(got, channel);
    assert!(payload.contains(&path) || payload == "*", "{payload}");
    assert!(
        timeout(Duration::from_millis(500), spy_rx.recv()).await.is_err(),
        "nothing on the public channel"
    );
}

#[tokio::test]
async fn a_role_without_table_privileges_appends_many_times_in_one_transaction() {
    // The transaction's later appends only remember the tail; it is written
    // at pre-commit, outside the SECURITY DEFINER functions, as their owner.
    let admin = connect().await;
    let role = tenant(&admin, "bulk").await;
    let path = format!("{}/s", unique_path("acl-bulk"));
    grant(&admin, &role, &format!("{}/**", path.rsplit_once('/').unwrap().0), "all").await;
    let client = connect().await;
    act_as(&client, &role).await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    client
        .batch_execute(&format!(
            "BEGIN; SELECT count(ds.append('{path}', 'abc'::bytea)) FROM generate_series(1, 50); COMMIT;"
        ))
        .await
        .unwrap();
    let tail: String =
        client.query_one("SELECT next_offset FROM ds.head($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(tail, crate::off(150));
    let user: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(user, role, "the session's role is unchanged after the commit");
    reset(&client).await;
}

#[tokio::test]
async fn enqueue_needs_the_append_privilege() {
    let admin = connect().await;
    let role = tenant(&admin, "enqueue").await;
    let root = unique_path("acl-enqueue");
    let (mine, theirs) = (format!("{root}/mine"), format!("{root}/theirs"));
    grant(&admin, &role, &format!("{mine}/**"), "read").await;
    admin.execute("SELECT ds.create($1)", &[&theirs]).await.unwrap();
    admin.execute("SELECT ds.create($1)", &[&format!("{mine}/s")]).await.unwrap();
    let client = connect().await;
    act_as(&client, &role).await;
    for path in [format!("{mine}/s"), theirs] {
        let e = client.execute("SELECT ds.enqueue($1, 'x'::bytea)", &[&path]).await.unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{path}: {e}");
    }
    reset(&client).await;
}
