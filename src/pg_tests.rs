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

    /// A trigger on `ds.messages` that runs `raise` (a PL/pgSQL `RAISE`) for
    /// every row: appends then go through SQL and fail inside it.
    fn refuse_messages(raise: &str) {
        Spi::run(&format!(
            "CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN {raise}; END $$"
        ))
        .unwrap();
        Spi::run(
            "CREATE TRIGGER refuse BEFORE INSERT ON ds.messages \
             FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse()",
        )
        .unwrap();
    }

    /// The extension's kept plans run generic (storage.rs, `GenericPlans`)
    /// without a `SET` clause: the caller's own setting must be back after
    /// every call, also after an error raised while a kept statement ran.
    #[pg_test]
    fn kept_plans_leave_the_callers_plan_cache_mode_alone() {
        Spi::run("SET LOCAL plan_cache_mode = force_custom_plan").unwrap();
        Spi::run("SELECT ds.create('pcm', 'text/plain')").unwrap();
        Spi::run("SELECT ds.append('pcm', 'a')").unwrap();
        assert_eq!(text("SHOW plan_cache_mode"), "force_custom_plan");
        // A trigger on ds.messages sends the append through SQL (the kept
        // INSERT) and fails inside it, saying what mode it ran under.
        refuse_messages("RAISE EXCEPTION 'mode %', current_setting('plan_cache_mode')");
        Spi::run(
            "CREATE FUNCTION pg_temp.message_of(q text) RETURNS text LANGUAGE plpgsql AS $$ \
             BEGIN EXECUTE q; RETURN NULL; EXCEPTION WHEN OTHERS THEN RETURN SQLERRM; END $$",
        )
        .unwrap();
        assert_eq!(
            text("SELECT pg_temp.message_of($q$SELECT ds.append('pcm', 'b')$q$)"),
            "mode force_generic_plan"
        );
        assert_eq!(text("SHOW plan_cache_mode"), "force_custom_plan");
    }

    /// An error raised inside a statement our code runs reaches the client
    /// with its own detail, never with a Rust backtrace (pgrx attaches one
    /// whenever backtraces are enabled in the server's environment).
    #[pg_test]
    fn errors_from_inside_our_statements_carry_no_backtrace() {
        assert_ne!(
            std::backtrace::Backtrace::capture().status(),
            std::backtrace::BacktraceStatus::Captured,
            "_PG_init turns library backtraces off (RUST_LIB_BACKTRACE=0)"
        );
        Spi::run("SELECT ds.create('bt', 'text/plain')").unwrap();
        refuse_messages("RAISE EXCEPTION 'refused' USING DETAIL = 'the trigger said no'");
        Spi::run(
            "CREATE FUNCTION pg_temp.detail_of(q text) RETURNS text LANGUAGE plpgsql AS $$ \
             DECLARE d text; BEGIN EXECUTE q; RETURN NULL; \
             EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL; \
             RETURN SQLERRM || ' / ' || d; END $$",
        )
        .unwrap();
        assert_eq!(
            text("SELECT pg_temp.detail_of($q$SELECT ds.append('bt', 'x')$q$)"),
            "refused / the trigger said no"
        );
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
        // Every function runs as the extension's owner, except the capture
        // trigger: it runs as the writer and switches identities itself
        // (capture.rs), so the capture's own SQL never runs as the owner.
        assert!(boolean(
            "SELECT bool_and(prosecdef) FROM pg_proc WHERE pronamespace = 'ds'::regnamespace \
             AND oid <> 'ds.capture_trigger()'::regprocedure"
        ));
        assert!(!boolean(
            "SELECT prosecdef FROM pg_proc WHERE oid = 'ds.capture_trigger()'::regprocedure"
        ));
    }

    /// EXECUTE plus path grants are enough, and no more than needed.
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
                 ds.close(text), ds.delete(text) TO ds_test_writer; \
             SELECT ds.grant('ds_test_writer', 'g', 'append'); \
             SELECT ds.grant('ds_test_reader', 'g', 'read')",
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

    fn body(path: &str) -> String {
        text(&format!("SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('{path}')"))
    }

    #[pg_test]
    fn forks_inherit_without_copying_and_diverge() {
        Spi::run("SELECT ds.create('src', 'text/plain', body => 'first')").unwrap();
        Spi::run("SELECT ds.append('src', 'second'::text)").unwrap();
        // At the head (default), at an offset, at zero.
        assert!(boolean("SELECT created FROM ds.fork('f-head', 'src')"));
        assert!(boolean(&format!("SELECT created FROM ds.fork('f-mid', 'src', '{}')", off(5))));
        assert!(boolean(&format!("SELECT created FROM ds.fork('f-zero', 'src', '{}')", off(0))));
        assert_eq!(body("f-head"), "firstsecond");
        assert_eq!(body("f-mid"), "first");
        assert_eq!(body("f-zero"), "");
        // Same offset space; own appends diverge from the source's.
        assert_eq!(text("SELECT ds.append('f-mid', 'FORK'::text)"), off(9));
        Spi::run("SELECT ds.append('src', 'third'::text)").unwrap();
        assert_eq!(body("f-mid"), "firstFORK");
        assert_eq!(body("src"), "firstsecondthird");
        assert_eq!(
            text(
                "SELECT count(*)::text FROM ds.messages WHERE stream_id = (SELECT stream_id FROM ds.head('f-mid'))"
            ),
            "1"
        );
        // Reading from inside the inherited range.
        assert_eq!(
            text(&format!(
                "SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('f-mid', '{}')",
                off(2)
            )),
            "rstFORK"
        );
        // Content type inherited; no copy of producer or Stream-Seq state.
        assert_eq!(text("SELECT content_type FROM ds.head('f-head')"), "text/plain");
        assert!(!boolean("SELECT closed FROM ds.head('f-head')"));
    }

    #[pg_test]
    fn fork_chains_stitch_every_level() {
        Spi::run("SELECT ds.create('l0', 'text/plain', body => 'A')").unwrap();
        Spi::run("SELECT ds.fork('l1', 'l0')").unwrap();
        Spi::run("SELECT ds.append('l1', 'B'::text)").unwrap();
        Spi::run("SELECT ds.fork('l2', 'l1')").unwrap();
        Spi::run("SELECT ds.append('l2', 'C'::text)").unwrap();
        for i in 3..12 {
            Spi::run(&format!("SELECT ds.fork('l{i}', 'l{}')", i - 1)).unwrap();
            Spi::run(&format!("SELECT ds.append('l{i}', '{i}'::text)")).unwrap();
        }
        assert_eq!(body("l2"), "ABC");
        // Sub-offsets compose: a fork of a fork below the first fork point.
        Spi::run("SELECT ds.create('s0', 'text/plain', body => 'abcdef')").unwrap();
        Spi::run(&format!("SELECT ds.fork('s1', 's0', '{}', 4)", off(0))).unwrap();
        Spi::run(&format!("SELECT ds.fork('s2', 's1', '{}', 2)", off(0))).unwrap();
        assert_eq!(body("s1"), "abcd");
        assert_eq!(body("s2"), "ab");
        Spi::run("SELECT ds.append('s2', 'Z'::text)").unwrap();
        assert_eq!(body("s2"), "abZ");
        assert_eq!(body("l11"), "ABC34567891011");
        assert_eq!(
            text(
                "SELECT string_agg(convert_from(data, 'UTF8'), '|' ORDER BY start_offset) FROM ds.read('l11')"
            ),
            "A|B|C|3|4|5|6|7|8|9|10|11"
        );
    }

    #[pg_test]
    fn json_forks_and_sub_offsets() {
        Spi::run(r#"SELECT ds.create('js', 'application/json', body => '[{"a":1},{"b":2},{"c":3},{"d":4}]')"#).unwrap();
        Spi::run(&format!("SELECT ds.fork('js-2', 'js', '{}', 2)", off(0))).unwrap();
        assert_eq!(body("js-2"), r#"[{"a":1},{"b":2}]"#);
        Spi::run(r#"SELECT ds.append('js-2', '{"x":9}'::jsonb)"#).unwrap();
        assert_eq!(body("js-2"), r#"[{"a":1},{"b":2},{"x":9}]"#, "one array across the fork point");
        Spi::run(&format!("SELECT ds.fork('js-4', 'js', '{}', 4)", off(0))).unwrap();
        assert_eq!(body("js-4"), r#"[{"a":1},{"b":2},{"c":3},{"d":4}]"#);
        assert_eq!(
            sqlstate(&format!("SELECT ds.fork('js-5', 'js', '{}', 5)", off(0))).as_deref(),
            Some("22023")
        );
        // Bytes: a sub-offset counts bytes within the next stored chunk.
        Spi::run("SELECT ds.create('bin', 'text/plain', body => 'hello')").unwrap();
        Spi::run(&format!("SELECT ds.fork('bin-3', 'bin', '{}', 3)", off(0))).unwrap();
        assert_eq!(body("bin-3"), "hel");
        Spi::run("SELECT ds.append('bin-3', 'p!'::text)").unwrap();
        assert_eq!(body("bin-3"), "help!");
        assert_eq!(
            sqlstate(&format!("SELECT ds.fork('bin-9', 'bin', '{}', 6)", off(0))).as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate(&format!("SELECT ds.fork('bin-9', 'bin', '{}', -1)", off(0))).as_deref(),
            Some("22023")
        );
    }

    #[pg_test]
    fn fork_creation_errors_and_idempotency() {
        Spi::run("SELECT ds.create('s1', 'text/plain', body => 'data')").unwrap();
        assert_eq!(sqlstate("SELECT ds.fork('x', 'missing')").as_deref(), Some("42704"));
        assert_eq!(
            sqlstate(&format!("SELECT ds.fork('x', 's1', '{}')", off(5))).as_deref(),
            Some("22023")
        );
        assert_eq!(sqlstate("SELECT ds.fork('x', 's1', 'garbage')").as_deref(), Some("22P02"));
        assert_eq!(
            sqlstate("SELECT ds.fork('x', 's1', content_type => 'application/json')").as_deref(),
            Some("42804")
        );
        assert!(boolean(
            "SELECT created FROM ds.fork('x', 's1', content_type => 'text/plain; charset=utf-8')"
        ));
        assert!(!boolean("SELECT created FROM ds.fork('x', 's1')"), "same config: 200");
        assert!(!boolean(&format!("SELECT created FROM ds.fork('x', 's1', '{}', 0)", off(4))));
        assert_eq!(
            sqlstate(&format!("SELECT ds.fork('x', 's1', '{}')", off(0))).as_deref(),
            Some("42710")
        );
        assert_eq!(
            sqlstate("SELECT ds.create('x', 'text/plain')").as_deref(),
            Some("42710"),
            "not a fork"
        );
        Spi::run("SELECT ds.create('other', 'text/plain')").unwrap();
        assert_eq!(sqlstate("SELECT ds.fork('other', 's1')").as_deref(), Some("42710"));
        // A rejected fork takes no reference: the source can be deleted for real.
        Spi::run("SELECT ds.create('s2', 'text/plain')").unwrap();
        assert_eq!(
            sqlstate("SELECT ds.fork('y', 's2', content_type => 'image/png')").as_deref(),
            Some("42804")
        );
        Spi::run("SELECT ds.delete('s2')").unwrap();
        assert_eq!(sqlstate("SELECT ds.head('s2')").as_deref(), Some("42704"));
        // Closed sources fork into open streams.
        Spi::run("SELECT ds.create('c1', 'text/plain', body => 'end', closed => true)").unwrap();
        assert!(!boolean("SELECT closed FROM ds.fork('c1-fork', 'c1')"));
        assert_eq!(text("SELECT ds.append('c1-fork', '+'::text)"), off(4));
    }

    #[pg_test]
    fn fork_expiry_follows_the_inheritance_table() {
        Spi::run("SELECT ds.create('t-ttl', ttl_seconds => 3600)").unwrap();
        Spi::run("SELECT ds.create('t-exp', expires_at => '2100-01-01Z')").unwrap();
        Spi::run("SELECT ds.create('t-none')").unwrap();
        let head = |p: &str| {
            text(&format!(
                "SELECT concat_ws('|', ttl_seconds, expires_at AT TIME ZONE 'UTC') FROM ds.head('{p}')"
            ))
        };
        Spi::run("SELECT ds.fork('f1', 't-ttl')").unwrap();
        assert_eq!(head("f1"), "3600");
        Spi::run("SELECT ds.fork('f2', 't-ttl', ttl_seconds => 60)").unwrap();
        assert_eq!(head("f2"), "60");
        Spi::run("SELECT ds.fork('f3', 't-exp')").unwrap();
        assert_eq!(head("f3"), "2100-01-01 00:00:00");
        Spi::run("SELECT ds.fork('f4', 't-exp', ttl_seconds => 99999)").unwrap();
        assert_eq!(head("f4"), "99999");
        Spi::run("SELECT ds.fork('f5', 't-none')").unwrap();
        assert_eq!(head("f5"), "");
        Spi::run("SELECT ds.fork('f6', 't-ttl', expires_at => '2200-01-01Z')").unwrap();
        assert_eq!(head("f6"), "2200-01-01 00:00:00");
        assert!(
            !boolean("SELECT created FROM ds.fork('f1', 't-ttl')"),
            "inherited expiry is not a conflict"
        );
    }

    #[pg_test]
    fn soft_delete_and_cascading_cleanup() {
        Spi::run("SELECT ds.create('a', 'text/plain', body => 'A')").unwrap();
        Spi::run("SELECT ds.fork('b', 'a')").unwrap();
        Spi::run("SELECT ds.append('b', 'B'::text)").unwrap();
        Spi::run("SELECT ds.fork('c', 'b')").unwrap();
        Spi::run("SELECT ds.append('c', 'C'::text)").unwrap();
        // Deleting sources with forks soft-deletes them: 410 everywhere, path blocked.
        Spi::run("SELECT ds.delete('a')").unwrap();
        Spi::run("SELECT ds.delete('b')").unwrap();
        for q in [
            "SELECT ds.head('a')",
            "SELECT * FROM ds.read('b')",
            "SELECT ds.append('b', 'x'::text)",
            "SELECT ds.delete('a')",
            "SELECT ds.close('b')",
        ] {
            assert_eq!(sqlstate(q).as_deref(), Some("55006"), "{q}");
        }
        assert!(try_append("'a', 'x'").starts_with("gone|"));
        assert_eq!(sqlstate("SELECT ds.create('a', 'text/plain')").as_deref(), Some("42710"));
        assert_eq!(sqlstate("SELECT ds.fork('d', 'b')").as_deref(), Some("42710"));
        assert_eq!(body("c"), "ABC", "forks keep reading what they inherited");
        // Deleting the last fork cleans up the whole chain.
        Spi::run("SELECT ds.delete('c')").unwrap();
        assert!(boolean("SELECT count(*) = 0 FROM ds.streams WHERE path IN ('a', 'b', 'c')"));
        assert!(boolean("SELECT count(*) = 0 FROM ds.messages"));
        // A source whose forks are all gone is alive and deletable normally.
        Spi::run("SELECT ds.create('p', 'text/plain', body => 'alive')").unwrap();
        Spi::run("SELECT ds.fork('q1', 'p'); SELECT ds.fork('q2', 'p')").unwrap();
        Spi::run("SELECT ds.delete('q1'); SELECT ds.delete('q2')").unwrap();
        assert_eq!(body("p"), "alive");
        assert!(boolean("SELECT fork_count = 0 FROM ds.streams WHERE path = 'p'"));
    }

    #[pg_test]
    fn expired_sources_keep_data_for_their_forks() {
        Spi::run("SELECT ds.create('old', 'text/plain', ttl_seconds => 0, body => 'kept')")
            .unwrap();
        // ttl 0 at now(): already expired, but the fork was made "before" in the same instant;
        // create the fork through the stored row to model a fork made while it lived.
        Spi::run("UPDATE ds.streams SET ttl_seconds = NULL WHERE path = 'old'").unwrap();
        Spi::run("SELECT ds.fork('young', 'old')").unwrap();
        Spi::run("UPDATE ds.streams SET ttl_seconds = 0 WHERE path = 'old'").unwrap();
        assert_eq!(sqlstate("SELECT ds.head('old')").as_deref(), Some("42704"));
        assert_eq!(body("young"), "kept");
        // Its path is free again; the old data stays for the fork.
        assert!(boolean("SELECT created FROM ds.create('old', 'text/plain')"));
        assert_eq!(body("young"), "kept");
        assert_eq!(body("old"), "");
        Spi::run("SELECT ds.delete('young')").unwrap();
        assert!(
            boolean("SELECT count(*) = 1 FROM ds.streams"),
            "the detached source went with its last fork"
        );
    }

    /// Everything a reader can see of a stream, read several ways.
    fn snapshot(path: &str) -> String {
        let rows = text(&format!(
            "SELECT string_agg(start_offset || '>' || next_offset || '=' || encode(data, 'escape'), ' ' ORDER BY start_offset) FROM ds.read('{path}')"
        ));
        let mut chunks = Vec::new();
        let mut from = "-1".to_owned();
        loop {
            let row = text(&format!(
                "SELECT concat_ws('|', encode(body, 'escape'), next_offset, up_to_date::text) FROM ds.read_chunk('{path}', '{from}', 7)"
            ));
            let parts: Vec<&str> = row.rsplitn(3, '|').collect();
            chunks.push(parts[2].to_owned());
            from = parts[1].to_owned();
            if parts[0] == "true" {
                break;
            }
        }
        format!("{rows}\n{}", chunks.join("/"))
    }

    #[pg_test]
    fn rotation_changes_no_byte_and_no_offset() {
        Spi::run("SET ds.segment_target_bytes = 10; SET ds.hot_tail_bytes = 6").unwrap();
        Spi::run("SELECT ds.create('rot', 'text/plain')").unwrap();
        for i in 0..20 {
            Spi::run(&format!("SELECT ds.append('rot', 'm{i:02};'::text)")).unwrap();
        }
        Spi::run(r#"SELECT ds.create('rj', 'application/json', body => '[{"a":1},{"b":[2,3]},"s",4,null]')"#).unwrap();
        Spi::run(&format!("SELECT ds.fork('rot-fork', 'rot', '{}', 2)", off(40))).unwrap();
        Spi::run("SELECT ds.append('rot-fork', 'F'::text)").unwrap();
        let before: Vec<String> = ["rot", "rj", "rot-fork"].iter().map(|p| snapshot(p)).collect();
        let mid = text(&format!(
            "SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('rot', '{}', 100)",
            off(13)
        ));

        assert_eq!(
            text("SELECT concat_ws(',', segments, messages, bytes) FROM ds.rotate('rot')"),
            "6,18,72"
        );
        assert_eq!(
            text("SELECT concat_ws(',', segments, messages, bytes) FROM ds.rotate('rot')"),
            "0,0,0",
            "idempotent"
        );
        Spi::run("SET ds.hot_tail_bytes = 0; SET ds.segment_target_bytes = 1").unwrap();
        Spi::run("SELECT ds.rotate('rj'); SELECT ds.rotate('rot-fork')").unwrap();
        let after: Vec<String> = ["rot", "rj", "rot-fork"].iter().map(|p| snapshot(p)).collect();
        assert_eq!(before, after, "reads are byte-identical before and after rotation");
        assert_eq!(
            mid,
            text(&format!(
                "SELECT convert_from(body, 'UTF8') FROM ds.read_chunk('rot', '{}', 100)",
                off(13)
            ))
        );
        assert_eq!(
            text("SELECT concat_ws(',', hot_rows, segments) FROM ds.stats() WHERE path = 'rot'"),
            "2,6"
        );
        assert_eq!(
            text("SELECT concat_ws(',', hot_rows, segments) FROM ds.stats() WHERE path = 'rj'"),
            "0,5"
        );
        // Appends continue after rotation at the same offsets.
        assert_eq!(text("SELECT ds.append('rot', 'x'::text)"), off(81));
        // Deleting a rotated stream removes its segments.
        let id = text("SELECT stream_id::text FROM ds.head('rj')");
        Spi::run("SELECT ds.delete('rj')").unwrap();
        assert!(boolean(&format!(
            "SELECT NOT EXISTS (SELECT 1 FROM ds.segments WHERE stream_id = {id})"
        )));
    }

    #[pg_test]
    fn batches_apply_in_order_with_one_outcome_each() {
        Spi::run(
            "SELECT ds.create('g1', 'text/plain'); SELECT ds.create('g2', 'application/json')",
        )
        .unwrap();
        let rows = text(
            "SELECT string_agg(idx || ':' || outcome || ':' || coalesce(next_offset, '-'), ' ' ORDER BY idx) \
             FROM ds.try_append_batch( \
               ARRAY['g1', 'g1', 'g2', 'g2', 'missing', 'g1', 'g1', 'g1'], \
               ARRAY['ab', 'cd', '[1,2]', '{bad', 'x', 'ef', 'ef', '']::bytea[], \
               ARRAY['text/plain', 'text/plain', 'application/json', 'application/json', NULL, 'text/plain', 'text/plain', NULL], \
               ARRAY[NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL]::text[], \
               ARRAY[NULL, NULL, NULL, NULL, NULL, 'p', 'p', NULL], \
               ARRAY[NULL, NULL, NULL, NULL, NULL, 0, 0, NULL]::bigint[], \
               ARRAY[NULL, NULL, NULL, NULL, NULL, 0, 0, NULL]::bigint[], \
               ARRAY[false, false, false, false, false, false, false, true])",
        );
        assert_eq!(
            rows,
            format!(
                "1:ok:{} 2:ok:{} 3:ok:{} 4:invalid_request:- 5:not_found:- 6:ok:{} 7:duplicate:{} 8:ok:{}",
                off(2),
                off(4),
                off(2),
                off(6),
                off(6),
                off(6)
            )
        );
        assert_eq!(body("g1"), "abcdef");
        assert!(boolean("SELECT closed FROM ds.head('g1')"));
        assert_eq!(body("g2"), "[1,2]");
        assert_eq!(
            sqlstate("SELECT * FROM ds.try_append_batch(ARRAY['g1'], ARRAY[]::bytea[], ARRAY[NULL], ARRAY[NULL], ARRAY[NULL], ARRAY[NULL]::bigint[], ARRAY[NULL]::bigint[], ARRAY[false])").as_deref(),
            Some("22023")
        );
    }

    #[pg_test]
    fn batches_see_their_own_earlier_requests_and_persist_state() {
        Spi::run("SELECT ds.create('h1', 'text/plain'); SELECT ds.create('h2', 'text/plain')")
            .unwrap();
        let batch = |paths: &str,
                     datas: &str,
                     seqs: &str,
                     pids: &str,
                     pseqs: &str,
                     closes: &str| {
            text(&format!(
                "SELECT string_agg(idx || ':' || outcome, ' ' ORDER BY idx) \
                 FROM ds.try_append_batch(ARRAY[{paths}], ARRAY[{datas}]::bytea[], \
                   array_fill(NULL::text, ARRAY[cardinality(ARRAY[{paths}])]), ARRAY[{seqs}]::text[], \
                   ARRAY[{pids}]::text[], \
                   (SELECT array_agg(CASE WHEN s IS NULL THEN NULL ELSE 0::bigint END ORDER BY o) \
                    FROM unnest(ARRAY[{pseqs}]::bigint[]) WITH ORDINALITY AS u(s, o)), \
                   ARRAY[{pseqs}]::bigint[], ARRAY[{closes}])"
            ))
        };
        // Stream-Seq and producer seqs advance within the batch; a close
        // rejects what follows it in the same batch.
        assert_eq!(
            batch(
                "'h1', 'h1', 'h2', 'h2', 'h2', 'h1', 'h1'",
                "'a', 'b', 'c', 'd', 'e', '', 'f'",
                "'s1', 's1', NULL, NULL, NULL, NULL, NULL",
                "NULL, NULL, 'p', 'p', 'p', NULL, NULL",
                "NULL, NULL, 0, 2, 1, NULL, NULL",
                "false, false, false, false, false, true, false"
            ),
            "1:ok 2:stream_seq_conflict 3:ok 4:seq_gap 5:ok 6:ok 7:stream_closed"
        );
        assert_eq!(body("h1"), "a");
        assert_eq!(body("h2"), "ce");
        // The next batch sees what the first stored.
        assert_eq!(
            batch("'h2', 'h2'", "'x', 'y'", "NULL, NULL", "'p', 'p'", "1, 2", "false, false"),
            "1:duplicate 2:ok"
        );
        assert_eq!(body("h2"), "cey");
        assert!(boolean("SELECT closed FROM ds.head('h1')"));
    }

    #[pg_test]
    fn json_depth_is_bounded_and_checked_without_recursion() {
        Spi::run("SELECT ds.create('deep', 'application/json')").unwrap();
        // 100,000 levels: rejected (a recursive check would overflow the stack).
        assert_eq!(
            sqlstate(
                "SELECT ds.append('deep', (repeat('[', 100000) || '1' || repeat(']', 100000))::text)"
            )
            .as_deref(),
            Some("22P02")
        );
        assert_eq!(
            text(
                "SELECT outcome || ' ' || sqlstate FROM ds.try_append('deep', \
                 convert_to(repeat('[', 100000) || repeat(']', 100000), 'UTF8'))"
            ),
            "invalid_request 22P02"
        );
        Spi::run("SET ds.json_max_depth = 3").unwrap();
        assert_eq!(text("SELECT ds.append('deep', '[[[1]]]'::text)"), off(5));
        assert_eq!(
            sqlstate("SELECT ds.append('deep', '[[[[1]]]]'::text)").as_deref(),
            Some("22P02")
        );
        assert_eq!(text("SELECT ds.append('deep', '{\"a\":[1]}'::text)"), off(14));
        assert_eq!(
            sqlstate("SELECT ds.append('deep', '{\"a\":[[1]]}'::text)").as_deref(),
            Some("22P02")
        );
        assert_eq!(
            sqlstate("SELECT ds.create('deep2', 'application/json', body => '[[[[1]]]]')")
                .as_deref(),
            Some("22P02")
        );
        assert!(boolean("SELECT count(*) = 2 FROM ds.read('deep')"), "nothing else stored");
        assert_eq!(sqlstate("SET ds.json_max_depth = 1025").as_deref(), Some("22023"));
    }

    #[pg_test]
    fn messages_per_append_are_capped() {
        Spi::run("SELECT ds.create('many', 'application/json')").unwrap();
        // 200,001 messages in 400 kB: over the default cap of 100,000.
        assert_eq!(
            sqlstate("SELECT ds.append('many', ('[' || repeat('1,', 200000) || '1]')::text)")
                .as_deref(),
            Some("54000")
        );
        assert_eq!(
            text(
                "SELECT outcome || ' ' || sqlstate FROM ds.try_append('many', \
                 convert_to('[' || repeat('1,', 200000) || '1]', 'UTF8'))"
            ),
            "invalid_request 54000"
        );
        assert_eq!(
            text("SELECT ds.append('many', ('[' || repeat('1,', 99999) || '1]')::text)"),
            off(100_000)
        );
        Spi::run("SET ds.max_messages_per_append = 3").unwrap();
        assert_eq!(
            sqlstate("SELECT ds.append('many', '[1,2,3,4]'::text)").as_deref(),
            Some("54000")
        );
        assert_eq!(
            sqlstate("SELECT ds.create('many2', 'application/json', body => '[1,2,3,4]')")
                .as_deref(),
            Some("54000")
        );
        assert_eq!(text("SELECT ds.append('many', '[1,2,3]'::text)"), off(100_003));
    }

    #[pg_test]
    fn reads_are_bounded_in_rows_and_bytes() {
        Spi::run("SELECT ds.create('rows', 'application/json')").unwrap();
        Spi::run("SELECT ds.append('rows', ('[' || repeat('1,', 29) || '1]')::text)").unwrap();
        Spi::run("SET ds.read_max_rows = 10").unwrap();
        assert!(boolean("SELECT count(*) = 10 FROM ds.read('rows')"), "default cap");
        assert!(boolean("SELECT count(*) = 10 FROM ds.read('rows', max_rows => 1000)"), "capped");
        assert!(boolean("SELECT count(*) = 4 FROM ds.read('rows', max_rows => 4)"));
        // Paging on from the last next_offset reaches everything.
        assert!(boolean(&format!("SELECT count(*) = 10 FROM ds.read('rows', '{}')", off(20))));
        // A chunk holds at most ds.max_messages_per_append messages.
        Spi::run("SET ds.max_messages_per_append = 5").unwrap();
        assert_eq!(
            text(
                "SELECT convert_from(body, 'UTF8') || ' ' || up_to_date FROM ds.read_chunk('rows')"
            ),
            "[1,1,1,1,1] false"
        );
        // max_bytes is clamped to ds.read_chunk_max_bytes, and so is ds.read.
        Spi::run("SELECT ds.create('big', 'application/octet-stream')").unwrap();
        for _ in 0..10 {
            Spi::run("SELECT ds.append('big', convert_to(repeat('x', 512), 'UTF8'))").unwrap();
        }
        Spi::run("SET ds.read_chunk_max_bytes = 1024").unwrap();
        assert!(boolean(
            "SELECT octet_length(body) = 1024 AND NOT up_to_date \
             FROM ds.read_chunk('big', max_bytes => 1000000000)"
        ));
        assert!(boolean("SELECT count(*) = 2 FROM ds.read('big')"));
    }

    #[pg_test]
    fn fork_sub_offset_scans_are_bounded() {
        Spi::run("SELECT ds.create('fsrc', 'application/json', body => '[1,2,3,4,5,6,7,8,9,10]')")
            .unwrap();
        Spi::run("SET ds.max_messages_per_append = 5").unwrap();
        assert_eq!(
            sqlstate("SELECT ds.fork('fdst', 'fsrc', '0000000000000000_0000000000000000', 7)")
                .as_deref(),
            Some("54000"),
            "more messages than one call may handle"
        );
        Spi::run("SELECT ds.fork('fdst', 'fsrc', '0000000000000000_0000000000000000', 3)").unwrap();
        assert_eq!(body("fdst"), "[1,2,3]");
        // The byte budget of the scan: past it, 54000 rather than a full scan.
        Spi::run("RESET ds.max_messages_per_append; SET ds.read_chunk_max_bytes = 1024").unwrap();
        Spi::run("SELECT ds.create('fwide', 'application/json')").unwrap();
        for _ in 0..3 {
            Spi::run(&format!("SELECT ds.append('fwide', '[\"{}\"]'::text)", "y".repeat(600)))
                .unwrap();
        }
        assert_eq!(
            sqlstate("SELECT ds.fork('fw2', 'fwide', '0000000000000000_0000000000000000', 3)")
                .as_deref(),
            Some("54000")
        );
    }

    #[pg_test]
    fn ttl_and_expiry_are_bounded_and_huge_old_ttls_are_harmless() {
        assert_eq!(
            sqlstate("SELECT ds.create('t1', ttl_seconds => 3155760001)").as_deref(),
            Some("22023")
        );
        Spi::run("SELECT ds.create('t1', ttl_seconds => 3155760000)").unwrap();
        assert_eq!(
            sqlstate("SELECT ds.create('t2', expires_at => 'infinity')").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate("SELECT ds.create('t2', expires_at => '10000-01-01Z')").as_deref(),
            Some("22023")
        );
        Spi::run("SELECT ds.create('t2', expires_at => '9999-12-31 23:59:59Z')").unwrap();
        // A row from before the limit: 2^53 seconds overflows last_access + ttl.
        Spi::run(
            "INSERT INTO ds.streams (path, content_type, ttl_seconds) \
             VALUES ('huge', 'text/plain', 9007199254740992)",
        )
        .unwrap();
        Spi::run(
            "INSERT INTO ds.streams (path, content_type, expires_at) \
             VALUES ('gone', 'text/plain', now() - interval '1 second')",
        )
        .unwrap();
        assert!(!boolean("SELECT closed FROM ds.head('huge')"), "readable, not 22008");
        assert_eq!(text("SELECT ds.append('huge', 'x'::text)"), off(1));
        let expired = Spi::connect(|c| {
            let mut cursor = crate::maintenance::Cursor::default();
            crate::maintenance::expired_streams(c, &mut cursor, 100)
        })
        .unwrap();
        let paths: Vec<&str> = expired.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(paths, ["gone"], "expiry lists the other stream and does not fail");
        Spi::run("SELECT ds.delete('huge')").unwrap();
        assert!(boolean("SELECT NOT EXISTS (SELECT FROM ds.streams WHERE path = 'huge')"));
    }

    #[pg_test]
    fn rotation_reaches_every_stream_despite_tiny_messages() {
        Spi::run("SET ds.hot_tail_bytes = 0; SET ds.segment_target_bytes = 200").unwrap();
        // 100 streams of 250 one-byte messages, created first (lower ids).
        Spi::run(
            "SELECT ds.create('tiny/' || i, 'text/plain') FROM generate_series(1, 100) i; \
             INSERT INTO ds.messages (stream_id, start_pos, data) \
               SELECT s.stream_id, g, 'x' FROM ds.streams s, generate_series(0, 249) g \
               WHERE s.path LIKE 'tiny/%'; \
             UPDATE ds.streams SET tail_pos = 250 WHERE path LIKE 'tiny/%'",
        )
        .unwrap();
        Spi::run("SELECT ds.create('bulky', 'text/plain')").unwrap();
        for _ in 0..4 {
            Spi::run("SELECT ds.append('bulky', repeat('b', 100))").unwrap();
        }
        // One rotation loads at most 50 rows here (100,000 in production):
        // 50 tiny messages never reach the segment target of 200 bytes.
        let settings = crate::gucs::RotationSettings { max_rows: 50, ..crate::gucs::rotation() };
        let bulky = text("SELECT stream_id::text FROM ds.head('bulky')").parse::<i64>().unwrap();
        let mut cursor = crate::maintenance::Cursor::default();
        let mut passes = 0;
        let rotated = Spi::connect_mut(|c| -> crate::error::DsResult<bool> {
            while passes < 5 {
                passes += 1;
                for id in crate::maintenance::rotation_candidates(c, &mut cursor, 100)? {
                    let done = crate::storage::rotate(c, id, &settings)?;
                    if id == bulky && done.segments > 0 {
                        return Ok(true);
                    }
                }
            }
            Ok(false)
        })
        .unwrap();
        assert!(rotated, "the big stream was rotated within {passes} passes");
        assert!(passes <= 2, "took {passes} passes");
        assert!(
            boolean("SELECT sum(segments) >= 100 FROM ds.stats() WHERE path LIKE 'tiny/%'"),
            "tiny streams progress too"
        );
        assert_eq!(
            text("SELECT string_agg(convert_from(data, 'UTF8'), '') FROM ds.read('tiny/7')"),
            "x".repeat(250),
            "reads unchanged"
        );
    }

    #[pg_test]
    fn malloc_tuning_is_opt_in() {
        // What this proves: the setting exists, is off by default, can only
        // be changed in the server configuration, and a read with it off does
        // not reach our mallopt call. glibc's own state is not observable.
        assert_eq!(
            text("SELECT setting || ' ' || context FROM pg_settings WHERE name = 'ds.tune_malloc'"),
            "off sighup"
        );
        Spi::run("SELECT ds.create('m', 'text/plain'); SELECT ds.append('m', 'x'::text)").unwrap();
        Spi::run("SELECT * FROM ds.read_chunk('m'); SELECT * FROM ds.read('m')").unwrap();
        assert!(!crate::malloc_tuned(), "no mallopt with ds.tune_malloc off");
        assert_eq!(sqlstate("SET ds.tune_malloc = on").as_deref(), Some("55P02"));
    }

    /// `ds.touch`: what a sidecar forwards for reads its standbys served.
    #[pg_test]
    fn touch_restarts_sliding_ttls_of_readable_streams_only() {
        Spi::run(
            "SELECT ds.create('ttl/a', 'text/plain', ttl_seconds => 60); \
             SELECT ds.create('ttl/b', 'text/plain', ttl_seconds => 60); \
             SELECT ds.create('plain', 'text/plain'); \
             UPDATE ds.streams SET last_access = now() - interval '30 seconds'",
        )
        .unwrap();
        let aged = "SELECT count(*)::text FROM ds.streams WHERE last_access < now()";
        assert_eq!(text(aged), "3");
        // Missing streams and streams without TTL are skipped, duplicates count once.
        assert_eq!(text("SELECT ds.touch(ARRAY['ttl/a', 'ttl/a', 'plain', 'missing'])::text"), "1");
        assert_eq!(text(aged), "2");
        assert_eq!(text("SELECT ds.touch('{}'::text[])::text"), "0");
        // Bad input: each with its own SQLSTATE.
        assert_eq!(sqlstate("SELECT ds.touch(ARRAY['']::text[])").as_deref(), Some("42602"));
        assert_eq!(sqlstate("SELECT ds.touch(ARRAY[NULL]::text[])").as_deref(), Some("42602"));
        assert_eq!(
            sqlstate("SELECT ds.touch(ARRAY['ttl/b'], as_roles => ARRAY['a', 'b'])").as_deref(),
            Some("22023")
        );
        assert_eq!(
            sqlstate("SELECT ds.touch(array_fill('x'::text, ARRAY[10001]))").as_deref(),
            Some("54000")
        );
        assert_eq!(sqlstate("SELECT ds.touch(NULL)").as_deref(), Some("22023"));
        // The read privilege decides, as for a read.
        Spi::run(
            "CREATE ROLE ds_test_toucher; GRANT USAGE ON SCHEMA ds TO ds_test_toucher; \
             GRANT EXECUTE ON FUNCTION ds.touch(text[], text[]) TO ds_test_toucher; \
             SELECT ds.grant('ds_test_toucher', 'ttl/a', 'read')",
        )
        .unwrap();
        define_sqlstate_of();
        Spi::run("SET ROLE ds_test_toucher").unwrap();
        assert_eq!(sqlstate("SELECT ds.touch(ARRAY['ttl/b'])").as_deref(), Some("42501"));
        assert_eq!(text("SELECT ds.touch(ARRAY['ttl/a'])::text"), "1");
        Spi::run("RESET ROLE").unwrap();
        // With as_roles, what a role may not read is skipped, not an error.
        assert_eq!(
            text(
                "SELECT ds.touch(ARRAY['ttl/a', 'ttl/b', 'ttl/b'], \
                     as_roles => ARRAY['ds_test_toucher', 'ds_test_toucher', 'no_such_role'])::text"
            ),
            "1"
        );
        assert_eq!(text(aged), "2", "ttl/b was not touched");
        assert_eq!(
            text("SELECT ds.touch(ARRAY['ttl/b'], as_roles => ARRAY[NULL]::text[])::text"),
            "1"
        );
        assert_eq!(text(aged), "1");
    }
}
