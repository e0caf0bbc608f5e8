//! Many appends in one transaction: only the first writes the stream's row,
//! the rest advance a tail the backend remembers and writes once before
//! commit (src/tails.rs). What must hold: every byte and the tail are
//! stored, savepoints undo exactly their appends, a waiting appender and a
//! prepared transaction see the right tail, reads and quotas inside the
//! transaction see its own appends.

use std::time::Duration;

use crate::{connect, off, sqlstate, unique_path};

async fn tail(client: &tokio_postgres::Client, path: &str) -> String {
    client.query_one("SELECT next_offset FROM ds.head($1)", &[&path]).await.unwrap().get(0)
}

/// Every byte of the stream, paging with `ds.read_chunk`.
async fn body(client: &tokio_postgres::Client, path: &str) -> Vec<u8> {
    let (mut out, mut from) = (Vec::new(), "-1".to_owned());
    loop {
        let row = client
            .query_one(
                "SELECT body, next_offset, up_to_date FROM ds.read_chunk($1, $2)",
                &[&path, &from],
            )
            .await
            .unwrap();
        out.extend_from_slice(&row.get::<_, Vec<u8>>(0));
        from = row.get(1);
        if row.get::<_, bool>(2) {
            return out;
        }
    }
}

#[tokio::test]
async fn twenty_thousand_appends_in_one_statement_store_every_byte_and_the_tail() {
    let path = unique_path("bulk");
    let client = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    // Message i is i % 7 + 1 bytes of the letter for i % 26.
    let n: i64 = 20_000;
    let last: String = client
        .query_one(
            "SELECT max(ds.append($1, convert_to(repeat(chr(97 + (i % 26)::int), (i % 7)::int + 1), 'UTF8'))) \
             FROM generate_series(0, $2::bigint - 1) i",
            &[&path, &n],
        )
        .await
        .unwrap()
        .get(0);
    let expected: Vec<u8> = (0..n)
        .flat_map(|i| std::iter::repeat_n(b'a' + (i % 26) as u8, (i % 7) as usize + 1))
        .collect();
    assert_eq!(last, off(expected.len() as u64));
    assert_eq!(tail(&client, &path).await, last, "the committed row holds the tail");
    let stored = body(&client, &path).await;
    assert!(stored == expected, "{} bytes stored, {} appended", stored.len(), expected.len());
    // The next transaction continues exactly there.
    let next: String =
        client.query_one("SELECT ds.append($1, 'z'::bytea)", &[&path]).await.unwrap().get(0);
    assert_eq!(next, off(expected.len() as u64 + 1));
}

#[tokio::test]
async fn savepoints_undo_exactly_their_appends() {
    let path = unique_path("bulk-savepoints");
    let client = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    client
        .batch_execute(&format!(
            "BEGIN;
             SELECT ds.append('{path}', 'a'::bytea);
             SAVEPOINT s1;
             SELECT ds.append('{path}', 'bb'::bytea);
             SELECT ds.append('{path}', 'cc'::bytea);
             ROLLBACK TO SAVEPOINT s1;
             SELECT ds.append('{path}', 'd'::bytea);
             SAVEPOINT s2;
             SELECT ds.append('{path}', 'e'::bytea);
             SAVEPOINT s3;
             SELECT ds.append('{path}', 'ff'::bytea);
             RELEASE SAVEPOINT s3;
             RELEASE SAVEPOINT s2;
             SAVEPOINT s4;
             SELECT ds.append('{path}', 'gg'::bytea);
             ROLLBACK TO SAVEPOINT s4;
             COMMIT;"
        ))
        .await
        .unwrap();
    assert_eq!(body(&client, &path).await, b"adeff");
    assert_eq!(tail(&client, &path).await, off(5));

    // A savepoint that made the transaction's first append (its row write)
    // and was rolled back: the next append writes the row again.
    let other = unique_path("bulk-first-in-savepoint");
    client.execute("SELECT ds.create($1)", &[&other]).await.unwrap();
    client
        .batch_execute(&format!(
            "BEGIN;
             SAVEPOINT s1;
             SELECT ds.append('{other}', 'xx'::bytea);
             SELECT ds.append('{other}', 'yy'::bytea);
             ROLLBACK TO SAVEPOINT s1;
             SELECT ds.append('{other}', 'k'::bytea);
             SELECT ds.append('{other}', 'l'::bytea);
             COMMIT;"
        ))
        .await
        .unwrap();
    assert_eq!(body(&client, &other).await, b"kl");
    assert_eq!(tail(&client, &other).await, off(2));

    // PL/pgSQL exception blocks are subtransactions too.
    let looped = unique_path("bulk-exception-blocks");
    client.execute("SELECT ds.create($1)", &[&looped]).await.unwrap();
    client
        .batch_execute(&format!(
            "DO $$ BEGIN
               FOR i IN 1..50 LOOP
                 BEGIN
                   PERFORM ds.append('{looped}', convert_to(i::text || ',', 'UTF8'));
                   IF i % 10 = 0 THEN RAISE EXCEPTION 'drop %', i; END IF;
                 EXCEPTION WHEN raise_exception THEN NULL;
                 END;
               END LOOP;
             END $$"
        ))
        .await
        .unwrap();
    let expected: String = (1..=50).filter(|i| i % 10 != 0).map(|i| format!("{i},")).collect();
    assert_eq!(String::from_utf8(body(&client, &looped).await).unwrap(), expected);
    assert_eq!(tail(&client, &looped).await, off(expected.len() as u64));
}

#[tokio::test]
async fn a_waiting_appender_continues_at_the_deferred_tail() {
    let path = unique_path("bulk-waiter");
    let mut first = connect().await;
    let second = connect().await;
    first.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    let tx = first.transaction().await.unwrap();
    tx.execute("SELECT count(ds.append($1, 'abcd'::bytea)) FROM generate_series(1, 100)", &[&path])
        .await
        .unwrap();
    let p = path.clone();
    let waiter = tokio::spawn(async move {
        second
            .query_one("SELECT ds.append($1, 'w'::bytea)", &[&p])
            .await
            .unwrap()
            .get::<_, String>(0)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the second appender waits for the first transaction");
    tx.commit().await.unwrap();
    let offset = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert_eq!(offset, off(401));
}

#[tokio::test]
async fn a_prepared_transaction_stores_its_deferred_tail() {
    let path = unique_path("bulk-2pc");
    let client = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    let gid = format!("ds-it-{}", unique_path("bulk-gid"));
    client
        .batch_execute(&format!(
            "BEGIN; SELECT count(ds.append('{path}', 'xyz'::bytea)) FROM generate_series(1, 10);
             PREPARE TRANSACTION '{gid}'"
        ))
        .await
        .unwrap();
    assert_eq!(tail(&client, &path).await, off(0), "nothing visible before COMMIT PREPARED");
    client.batch_execute(&format!("COMMIT PREPARED '{gid}'")).await.unwrap();
    assert_eq!(tail(&client, &path).await, off(30));
    assert_eq!(body(&client, &path).await, b"xyz".repeat(10));
}

#[tokio::test]
async fn reads_and_quotas_inside_the_transaction_see_its_own_appends() {
    let path = unique_path("bulk-own-reads");
    let mut client = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    client.execute("SELECT ds.set_stream_quota($1, 250)", &[&path]).await.unwrap();
    let tx = client.transaction().await.unwrap();
    for _ in 0..2 {
        tx.execute("SELECT ds.append($1, repeat('q', 100))", &[&path]).await.unwrap();
    }
    let seen: String =
        tx.query_one("SELECT next_offset FROM ds.head($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(seen, off(200));
    let n: i64 = tx.query_one("SELECT count(*) FROM ds.read($1)", &[&path]).await.unwrap().get(0);
    assert_eq!(n, 2);
    let e = tx.execute("SELECT ds.append($1, repeat('q', 100))", &[&path]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "53400", "the stream quota counts the deferred bytes: {e}");
    tx.rollback().await.unwrap();
    assert_eq!(tail(&client, &path).await, off(0));
}

#[tokio::test]
async fn tails_written_early_in_a_rolled_back_savepoint_are_written_again() {
    let path = unique_path("bulk-early-write");
    let client = connect().await;
    client.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    // ds.rotate and ds.stats read tail_pos in SQL, so they write the
    // transaction's remembered tails first; here inside a savepoint that
    // rolls back, which undoes that write.
    client
        .batch_execute(&format!(
            "BEGIN;
             SELECT count(ds.append('{path}', 'abcd'::bytea)) FROM generate_series(1, 5);
             SAVEPOINT s;
             SELECT count(*) FROM ds.stats();
             ROLLBACK TO SAVEPOINT s;
             COMMIT;"
        ))
        .await
        .unwrap();
    assert_eq!(tail(&client, &path).await, off(20));
    let next: String =
        client.query_one("SELECT ds.append($1, 'y'::bytea)", &[&path]).await.unwrap().get(0);
    assert_eq!(next, off(21));
}

/// Appends write their `ds.messages` row without the executor only while the
/// table has the shape that code knows (storage/direct.rs): a trigger on it
/// (anything an INSERT would run) sends them back through SQL, so it fires.
#[tokio::test]
async fn a_trigger_on_ds_messages_sends_appends_back_through_sql() {
    let c = connect().await;
    let path = unique_path("messages-shape");
    c.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    // Both writers of message rows, without the executor: one message, and
    // a batch of two (as the sidecar's group commit sends).
    c.execute("SELECT ds.append($1, 'before'::bytea)", &[&path]).await.unwrap();
    append_two(&c, &path, b"be", b"fore").await.unwrap();
    c.batch_execute(
        "CREATE TABLE public.it_messages_seen (stream_id bigint); \
         CREATE FUNCTION public.it_messages_seen() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO public.it_messages_seen VALUES (NEW.stream_id); RETURN NULL; END $$; \
         CREATE TRIGGER it_messages_seen AFTER INSERT ON ds.messages \
           FOR EACH ROW EXECUTE FUNCTION public.it_messages_seen();",
    )
    .await
    .unwrap();
    let appended = c.execute("SELECT ds.append($1, 'during'::bytea)", &[&path]).await;
    let batched = append_two(&c, &path, b"du", b"ring").await;
    let seen: Result<i64, _> = c
        .query_one(
            "SELECT count(*) FROM public.it_messages_seen s, ds.head($1) h \
             WHERE s.stream_id = h.stream_id",
            &[&path],
        )
        .await
        .map(|r| r.get(0));
    // Clean up before asserting: the trigger must not outlive this test.
    c.batch_execute(
        "DROP TRIGGER it_messages_seen ON ds.messages; \
         DROP FUNCTION public.it_messages_seen(); DROP TABLE public.it_messages_seen;",
    )
    .await
    .unwrap();
    appended.unwrap();
    batched.unwrap();
    assert_eq!(seen.unwrap(), 3, "the appends went through SQL: the trigger saw their rows");
    c.execute("SELECT ds.append($1, 'after'::bytea)", &[&path]).await.unwrap();
    assert_eq!(body(&c, &path).await, b"beforebeforeduringduringafter");
}

/// Appends `a` and `b` to `path` in one `ds.try_append_batch` call.
async fn append_two(
    c: &tokio_postgres::Client,
    path: &str,
    a: &[u8],
    b: &[u8],
) -> Result<(), tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT outcome FROM ds.try_append_batch(ARRAY[$1, $1], ARRAY[$2, $3]::bytea[], \
               ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[], ARRAY[NULL, NULL]::text[], \
               ARRAY[NULL, NULL]::bigint[], ARRAY[NULL, NULL]::bigint[], ARRAY[false, false]) \
             ORDER BY idx",
            &[&path, &a, &b],
        )
        .await?;
    let outcomes: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(outcomes, ["ok", "ok"]);
    Ok(())
}

/// A READ ONLY transaction writes nothing, whichever path an append takes:
/// `ds.enqueue` to a stream its backend knows (written without SQL) and
/// `ds.append` both refuse with 25006.
#[tokio::test]
async fn a_read_only_transaction_neither_enqueues_nor_appends() {
    let c = connect().await;
    let path = unique_path("read-only");
    c.execute("SELECT ds.create($1)", &[&path]).await.unwrap();
    // Twice: the second enqueue of this backend takes the path without SQL.
    for _ in 0..2 {
        c.execute("SELECT ds.enqueue($1, 'warm'::bytea)", &[&path]).await.unwrap();
    }
    for sql in ["SELECT ds.enqueue($1, 'ro'::bytea)", "SELECT ds.append($1, 'ro'::bytea)"] {
        c.batch_execute("BEGIN READ ONLY").await.unwrap();
        let e = c.execute(sql, &[&path]).await.unwrap_err();
        c.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(sqlstate(&e), "25006", "{sql}: {e}");
    }
    c.execute("SELECT ds.append($1, 'rw'::bytea)", &[&path]).await.unwrap();
    assert_eq!(body(&c, &path).await, b"warmwarmrw");
}
