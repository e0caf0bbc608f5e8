//! In-backend tests of the SQL contracts (`cargo pgrx test`). Each test runs
//! in its own transaction, rolled back at the end. Behaviour across
//! transactions (concurrency, NOTIFY, sliding TTL) is tested in `pgrx-tests/`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Runs `query`, returning the SQLSTATE it raised (None if it succeeded).
    /// A PL/pgSQL exception block rolls the failed part back properly.
    fn sqlstate(query: &str) -> Option<String> {
        let defined =
            Spi::get_one::<bool>("SELECT to_regprocedure('pg_temp.sqlstate_of(text)') IS NOT NULL");
        if defined.unwrap() != Some(true) {
            define_sqlstate_of();
        }
        Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[query.into()]).unwrap()
    }

    fn define_sqlstate_of() {
        Spi::run(
            "CREATE OR REPLACE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text \
             LANGUAGE plpgsql AS $$ BEGIN EXECUTE q; RETURN NULL; \
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
        )
        .unwrap();
    }

    fn text(query: &str) -> String {
        Spi::get_one::<String>(query).unwrap().expect("non-NULL result")
    }

    fn boolean(query: &str) -> bool {
        Spi::get_one::<bool>(query).unwrap().expect("non-NULL result")
    }

    fn off(pos: u64) -> String {
        ds_core::Offset(pos).to_string()
    }

    /// One row of ds.try_append, as `outcome|next_offset|closed|epoch|seq|expected|received|sqlstate`.
    fn try_append(args: &str) -> String {
        text(&format!(
            "SELECT concat_ws('|', outcome, next_offset, closed::text, producer_epoch, producer_seq, \
             expected_seq, received_seq, sqlstate) FROM ds.try_append({args})"
        ))
    }

    #[pg_test]
    fn offsets_are_fixed_width_and_increase() {
        Spi::run("SELECT ds.create('o', 'text/plain')").unwrap();
        assert_eq!(text("SELECT next_offset FROM ds.head('o')"), off(0));
        assert_eq!(text("SELECT ds.append('o', 'abc'::text)"), off(3));
        assert_eq!(text("SELECT ds.append('o', 'de'::text)"), off(5));
        assert_eq!(
            text(
                "SELECT string_agg(start_offset || '>' || next_offset || '=' || convert_from(data, 'UTF8'), ' ') FROM ds.read('o')"
            ),
            format!("{}>{}=abc {}>{}=de", off(0), off(3), off(3), off(5))
        );
        // From a previous offset, `-1`, `now`, and from inside a stored chunk.
        assert_eq!(
            text(&format!(
                "SELECT string_agg(convert_from(data, 'UTF8'), '') FROM ds.read('o', '{}')",
                off(3)
            )),
            "de"
        );
        assert_eq!(
            text("SELECT string_agg(convert_from(data, 'UTF8'), '') FROM ds.read('o', '-1')"),
            "abcde"
        );
        assert!(boolean("SELECT count(*) = 0 FROM ds.read('o', 'now')"));
        assert_eq!(
            text(&format!(
                "SELECT string_agg(convert_from(data, 'UTF8'), '') FROM ds.read('o', '{}')",
                off(1)
            )),
            "bcde"
        );
        for bad in ["x", "-2", "NOW", "0000000000000001_0000000000000000", "0_1"] {
            assert_eq!(
                sqlstate(&format!("SELECT * FROM ds.read('o', '{bad}')")).as_deref(),
                Some("22P02"),
                "{bad}"
            );
        }
    }

    #[pg_test]
    fn json_mode_flattens_one_level_and_reads_arrays() {
        Spi::run("SELECT ds.create('j', 'application/json; charset=utf-8', body => '[]')").unwrap();
        assert_eq!(text("SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('j')"), "[]");
        Spi::run("SELECT ds.append('j', '{\"a\": 1}'::text)").unwrap();
        Spi::run("SELECT ds.append('j', '[[1, 2], {\"b\" : \"x y\"}]'::jsonb)").unwrap();
        Spi::run("SELECT ds.append('j', '[[[3]]]'::text)").unwrap();
        assert_eq!(
            text("SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('j')"),
            r#"[{"a":1},[1,2],{"b":"x y"},[[3]]]"#
        );
        assert_eq!(text("SELECT count(*)::text FROM ds.read('j')"), "4");
        assert_eq!(sqlstate("SELECT ds.append('j', '[]'::text)").as_deref(), Some("22023"));
        assert_eq!(sqlstate("SELECT ds.append('j', '{nope'::text)").as_deref(), Some("22P02"));
        // Content type compared by essence: params and case ignored.
        assert!(try_append("'j', '1', 'APPLICATION/JSON'").starts_with("ok|"));
        assert!(try_append("'j', '1', 'text/plain'").starts_with("content_type_mismatch|"));
        assert!(try_append("'j', '[]', 'application/json'").ends_with("|22023"));
        // Invalid JSON on create writes nothing.
        assert_eq!(
            sqlstate("SELECT ds.create('j2', 'application/json', body => '[1,')").as_deref(),
            Some("22P02")
        );
        assert_eq!(sqlstate("SELECT ds.head('j2')").as_deref(), Some("42704"));
        // jsonb appends need a JSON stream.
        Spi::run("SELECT ds.create('b')").unwrap();
        assert_eq!(sqlstate("SELECT ds.append('b', '1'::jsonb)").as_deref(), Some("42804"));
    }

    #[pg_test]
    fn producers_fence_epochs_and_dedupe() {
        Spi::run("SELECT ds.create('p', 'text/plain')").unwrap();
        let t =
            |e: i64, s: i64| try_append(&format!("'p', 'x', 'text/plain', NULL, 'w', {e}, {s}"));
        assert_eq!(t(0, 0), format!("ok|{}|false|0|0", off(1)));
        assert_eq!(t(0, 0), format!("duplicate|{}|false|0|0", off(1)));
        assert_eq!(t(0, 2), format!("seq_gap|{}|false|0|1|2", off(1)));
        assert_eq!(t(0, 1), format!("ok|{}|false|0|1", off(2)));
        assert_eq!(t(1, 1), format!("invalid_epoch_seq|{}|false|1", off(2)));
        assert_eq!(t(1, 0), format!("ok|{}|false|1|0", off(3)));
        assert_eq!(t(0, 2), format!("stale_epoch|{}|false|1", off(3)));
        // A new producer must start at seq 0.
        assert_eq!(
            try_append("'p', 'x', NULL, NULL, 'new', 0, 3"),
            format!("seq_gap|{}|false|0|0|3", off(3))
        );
        // Incomplete or out-of-range producer arguments.
        for args in
            ["'w', NULL, 0", "'w', 0, NULL", "'', 0, 0", "'w', -1, 0", "'w', 0, 9007199254740992"]
        {
            assert_eq!(
                try_append(&format!("'p', 'x', NULL, NULL, {args}")),
                "invalid_request|false|22023",
                "{args}"
            );
        }
        assert_eq!(text("SELECT count(*)::text FROM ds.read('p')"), "3");
    }

    #[pg_test]
    fn closing_is_durable_idempotent_and_remembers_the_producer() {
        Spi::run("SELECT ds.create('c', 'text/plain')").unwrap();
        let closing = "'c', 'end', 'text/plain', NULL, 'w', 0, 0, true";
        assert_eq!(try_append(closing), format!("ok|{}|true|0|0", off(3)));
        // The same producer request again is a duplicate; anything else is rejected.
        assert_eq!(try_append(closing), format!("duplicate|{}|true|0|0", off(3)));
        assert_eq!(
            try_append("'c', 'more', 'text/plain', NULL, 'w', 0, 1"),
            format!("stream_closed|{}|true", off(3))
        );
        assert_eq!(try_append("'c', 'more'"), format!("stream_closed|{}|true", off(3)));
        assert_eq!(try_append("'c', '', close => true"), format!("already_closed|{}|true", off(3)));
        assert_eq!(text("SELECT ds.close('c')"), off(3));
        assert_eq!(sqlstate("SELECT ds.append('c', 'x'::text)").as_deref(), Some("55000"));
        assert!(boolean("SELECT closed FROM ds.head('c')"));
        // Close-only takes no content type into account; empty append needs close.
        Spi::run("SELECT ds.create('c2', 'text/plain')").unwrap();
        assert_eq!(
            try_append("'c2', '', 'image/png', close => true"),
            format!("ok|{}|true", off(0))
        );
        assert_eq!(try_append("'c2', ''"), "invalid_request|false|22023");
    }

    #[pg_test]
    fn stream_seq_is_bytewise_and_strictly_increasing() {
        Spi::run("SELECT ds.create('s')").unwrap();
        let t = |seq: &str| try_append(&format!("'s', 'x', NULL, '{seq}'"));
        assert!(t("b").starts_with("ok|"));
        assert!(t("b").starts_with("stream_seq_conflict|"));
        assert!(t("a").starts_with("stream_seq_conflict|"));
        assert!(t("c").starts_with("ok|"));
        assert!(t("B").starts_with("stream_seq_conflict|"), "byte-wise: 'B' < 'c'");
        assert_eq!(text("SELECT count(*)::text FROM ds.read('s')"), "2");
    }

    #[pg_test]
    fn create_is_idempotent_or_conflicts() {
        assert!(boolean("SELECT created FROM ds.create('k', 'text/plain', ttl_seconds => 60)"));
        assert!(!boolean(
            "SELECT created FROM ds.create('k', 'text/plain; charset=utf-8', ttl_seconds => 60)"
        ));
        for conflicting in [
            "ds.create('k', 'application/json', ttl_seconds => 60)",
            "ds.create('k', 'text/plain')",
            "ds.create('k', 'text/plain', ttl_seconds => 61)",
            "ds.create('k', 'text/plain', ttl_seconds => 60, closed => true)",
        ] {
            assert_eq!(
                sqlstate(&format!("SELECT * FROM {conflicting}")).as_deref(),
                Some("42710"),
                "{conflicting}"
            );
        }
        assert!(boolean("SELECT created FROM ds.create('k2', closed => true, body => 'abc')"));
        assert!(!boolean("SELECT created FROM ds.create('k2', closed => true)"));
        assert_eq!(text("SELECT next_offset FROM ds.head('k2')"), off(3));
        assert_eq!(sqlstate("SELECT ds.create('k2')").as_deref(), Some("42710"));
    }

    #[pg_test]
    fn bad_input_gets_a_specific_sqlstate_and_writes_nothing() {
        let cases = [
            ("SELECT ds.create('')", "42602"),
            ("SELECT ds.create(repeat('x', 1025))", "42602"),
            ("SELECT ds.create(E'a\\nb')", "42602"),
            ("SELECT ds.create('v', 'not a type')", "22023"),
            ("SELECT ds.create('v', ttl_seconds => -1)", "22023"),
            (
                "SELECT ds.create('v', ttl_seconds => 5, expires_at => now() + interval '1 hour')",
                "22023",
            ),
            ("SELECT ds.create('v', 'text/plain', body => '\\xff'::bytea)", "22021"),
            ("SELECT ds.append('missing', 'x'::text)", "42704"),
            ("SELECT ds.delete('missing')", "42704"),
            ("SELECT ds.close('missing')", "42704"),
            ("SELECT * FROM ds.read('missing')", "42704"),
        ];
        for (query, code) in cases {
            assert_eq!(sqlstate(query).as_deref(), Some(code), "{query}");
        }
        assert!(boolean("SELECT count(*) = 0 FROM ds.streams"), "nothing partially written");

        Spi::run("SELECT ds.create('v', 'text/plain')").unwrap();
        assert_eq!(sqlstate("SELECT ds.append('v', '\\xff'::bytea)").as_deref(), Some("22021"));
        assert_eq!(sqlstate("SELECT ds.append('v', ''::text)").as_deref(), Some("22023"));
        Spi::run("SET ds.max_append_bytes = 4").unwrap();
        assert_eq!(sqlstate("SELECT ds.append('v', '12345'::text)").as_deref(), Some("54000"));
        assert!(try_append("'v', '12345'").ends_with("|54000"));
        assert_eq!(text("SELECT ds.append('v', '1234'::text)"), off(4));
        assert_eq!(text("SELECT count(*)::text FROM ds.messages"), "1");
    }

    #[pg_test]
    fn expired_streams_are_absent_at_once() {
        // now() is fixed inside the test transaction: expiry at now() has passed.
        Spi::run("SELECT ds.create('e1', expires_at => now())").unwrap();
        Spi::run("SELECT ds.create('e2', ttl_seconds => 0)").unwrap();
        Spi::run("SELECT ds.create('e3', ttl_seconds => 3600)").unwrap();
        for p in ["e1", "e2"] {
            assert_eq!(sqlstate(&format!("SELECT ds.head('{p}')")).as_deref(), Some("42704"));
            assert_eq!(
                sqlstate(&format!("SELECT * FROM ds.read_chunk('{p}')")).as_deref(),
                Some("42704")
            );
            assert!(try_append(&format!("'{p}', 'x'")).starts_with("not_found|"));
            // The path is free again: create makes a new, empty stream.
            assert!(boolean(&format!("SELECT created FROM ds.create('{p}', 'text/plain')")));
        }
        assert!(boolean("SELECT ttl_seconds = 3600 FROM ds.head('e3')"));
    }

    #[pg_test]
    fn read_chunk_follows_the_catch_up_rules() {
        Spi::run("SELECT ds.create('r', 'application/octet-stream')").unwrap();
        for part in ["aaaa", "bbbb", "cccc"] {
            Spi::run(&format!("SELECT ds.append('r', '{part}'::text)")).unwrap();
        }
        Spi::run("SELECT ds.close('r')").unwrap();
        let chunk = |from: &str, max: i64| {
            text(&format!(
                "SELECT concat_ws('|', convert_from(body, 'UTF8'), next_offset, up_to_date::text, closed::text) \
                 FROM ds.read_chunk('r', '{from}', {max})"
            ))
        };
        // Partial chunks: neither up-to-date nor closed.
        assert_eq!(chunk("-1", 5), format!("aaaabbbb|{}|false|false", off(8)));
        // The final chunk of a closed stream carries closed.
        assert_eq!(chunk(&off(8), 100), format!("cccc|{}|true|true", off(12)));
        // At the tail: empty body, next offset unchanged, EOF.
        assert_eq!(chunk(&off(12), 100), format!("|{}|true|true", off(12)));
        assert_eq!(chunk("now", 100), format!("|{}|true|true", off(12)));
        // A single message larger than the budget still comes whole.
        assert_eq!(chunk("-1", 1), format!("aaaa|{}|false|false", off(4)));
    }

    #[pg_test]
    fn delete_removes_everything_and_frees_the_path() {
        Spi::run("SELECT ds.create('d', 'text/plain')").unwrap();
        Spi::run("SELECT ds.try_append('d', 'x', producer_id => 'w', producer_epoch => 0, producer_seq => 0)").unwrap();
        let id = text("SELECT stream_id::text FROM ds.head('d')");
        Spi::run("SELECT ds.delete('d')").unwrap();
        assert_eq!(sqlstate("SELECT ds.head('d')").as_deref(), Some("42704"));
        assert!(boolean(&format!(
            "SELECT NOT EXISTS (SELECT 1 FROM ds.messages WHERE stream_id = {id}) \
             AND NOT EXISTS (SELECT 1 FROM ds.producers WHERE stream_id = {id})"
        )));
        assert!(boolean("SELECT created FROM ds.create('d', 'text/plain')"));
        assert_ne!(text("SELECT stream_id::text FROM ds.head('d')"), id);
    }

    #[pg_test]
    fn nothing_is_executable_by_public() {
        Spi::run("CREATE ROLE ds_test_nobody").unwrap();
        let executable = text(
            "SELECT coalesce(string_agg(p.oid::regprocedure::text, ', '), '') FROM pg_proc p \
             WHERE p.pronamespace = 'ds'::regnamespace \
               AND has_function_privilege('ds_test_nobody', p.oid, 'EXECUTE')",
        );
        assert_eq!(executable, "");
        assert!(!boolean("SELECT has_table_privilege('ds_test_nobody', 'ds.messages', 'SELECT')"));
        assert!(boolean(
            "SELECT bool_and(prosecdef) FROM pg_proc WHERE pronamespace = 'ds'::regnamespace"
        ));
    }

    /// The grants the README prescribes are enough, and no more than needed.
    #[pg_test]
    fn readme_grants_give_readers_and_writers_what_they_need() {
        Spi::run("SELECT ds.create('g', 'text/plain')").unwrap();
        Spi::run("CREATE ROLE ds_test_reader; CREATE ROLE ds_test_writer").unwrap();
        Spi::run(
            "GRANT USAGE ON SCHEMA ds TO ds_test_reader, ds_test_writer; \
             GRANT EXECUTE ON FUNCTION ds.read(text, text, bigint), ds.read_chunk(text, text, bigint), \
                 ds.head(text) TO ds_test_reader; \
             GRANT EXECUTE ON FUNCTION ds.create(text, text, bigint, timestamptz, boolean, bytea), \
                 ds.append(text, bytea), ds.append(text, text), ds.append(text, jsonb), \
                 ds.try_append(text, bytea, text, text, text, bigint, bigint, boolean), \
                 ds.close(text), ds.delete(text) TO ds_test_writer",
        )
        .unwrap();
        define_sqlstate_of();
        Spi::run("SET ROLE ds_test_writer").unwrap();
        assert_eq!(text("SELECT ds.append('g', 'abc'::text)"), off(3));
        assert_eq!(sqlstate("SELECT * FROM ds.read('g')").as_deref(), Some("42501"));
        Spi::run("RESET ROLE; SET ROLE ds_test_reader").unwrap();
        assert_eq!(text("SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('g')"), "abc");
        assert_eq!(sqlstate("SELECT ds.append('g', 'x'::text)").as_deref(), Some("42501"));
        assert_eq!(sqlstate("SELECT count(*) FROM ds.messages").as_deref(), Some("42501"));
        Spi::run("RESET ROLE").unwrap();
    }
}
