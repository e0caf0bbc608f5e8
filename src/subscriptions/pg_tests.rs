//! In-backend tests of the subscription functions (`cargo pgrx test`), one
//! transaction each. Concurrency is tested in `pgrx-tests/tests/subscriptions.rs`.

#[pgrx::pg_schema]
mod tests {
    use ds_core::subscription::ErrorCode;
    use pgrx::prelude::*;
    use serde_json::{Value, json};

    fn off(pos: u64) -> String {
        ds_core::Offset(pos).to_string()
    }

    /// Runs `query` (one jsonb value) and returns it.
    fn jsonb(query: &str) -> Value {
        Spi::get_one::<pgrx::JsonB>(query).unwrap().expect("non-NULL result").0
    }

    fn call(function: &str, args: &[Value]) -> Value {
        let args: Vec<String> = args
            .iter()
            .map(|a| match a {
                Value::String(s) => format!("'{}'", s.replace('\'', "''")),
                Value::Array(items) if items.iter().all(Value::is_string) => format!(
                    "ARRAY[{}]::text[]",
                    items
                        .iter()
                        .map(|s| format!("'{}'", s.as_str().unwrap().replace('\'', "''")))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                other => format!("'{}'::jsonb", other.to_string().replace('\'', "''")),
            })
            .collect();
        jsonb(&format!("SELECT ds.{function}({})", args.join(", ")))
    }

    fn code(v: &Value) -> Option<&str> {
        v["error"]["code"].as_str()
    }

    fn put(id: &str, config: Value) -> Value {
        call("try_subscription_put", &[json!(id), config])
    }

    fn pull(pattern: &str, wake: &str) -> Value {
        json!({"type": "pull-wake", "pattern": pattern, "wake_stream": wake, "lease_ttl_ms": 1000})
    }

    fn sqlstate(query: &str) -> Option<String> {
        let defined =
            Spi::get_one::<bool>("SELECT to_regprocedure('pg_temp.sqlstate_of(text)') IS NOT NULL");
        if defined.unwrap() != Some(true) {
            Spi::run(
                "CREATE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text \
                 LANGUAGE plpgsql AS $$ BEGIN EXECUTE q; RETURN NULL; \
                 EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
            )
            .unwrap();
        }
        Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[query.into()]).unwrap()
    }

    fn create(path: &str) {
        Spi::run(&format!("SELECT ds.create('{path}', 'application/json')")).unwrap();
    }

    fn append(path: &str) -> String {
        Spi::get_one::<String>(&format!("SELECT ds.append('{path}', '{{\"n\":1}}'::jsonb)"))
            .unwrap()
            .unwrap()
    }

    fn streams(id: &str) -> Value {
        call("try_subscription_get", &[json!(id)])["subscription"]["streams"].clone()
    }

    fn wake_events(path: &str) -> Vec<Value> {
        let text = Spi::get_one::<String>(&format!(
            "SELECT coalesce(string_agg(convert_from(data, 'UTF8'), E'\\n'), '') FROM ds.read('{path}')"
        ))
        .unwrap()
        .unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[pg_test]
    fn create_confirm_conflict_and_recreate_keeps_generation() {
        create("wake/w");
        let created = put("s", pull("events/*", "wake/w"));
        assert_eq!(created["created"], true, "{created}");
        let doc = &created["subscription"];
        assert_eq!((doc["id"].clone(), doc["subscription_id"].clone()), (json!("s"), json!("s")));
        assert_eq!(doc["type"], "pull-wake");
        assert_eq!(doc["status"], "active");
        assert_eq!(doc["lease_ttl_ms"], 1000);
        assert!(doc["created_at"].as_str().unwrap().ends_with('Z'));
        // Same configuration, other field order and unknown fields: confirmed.
        let again = put(
            "s",
            json!({"lease_ttl_ms": 1000, "wake_stream": "wake/w", "x": 1,
                                   "pattern": "events/*", "type": "pull-wake"}),
        );
        assert_eq!(again["created"], false, "{again}");
        assert_eq!(code(&put("s", pull("other/*", "wake/w"))), Some("SUBSCRIPTION_ALREADY_EXISTS"));
        // A wake bumps the generation; delete + re-create keeps it.
        create("events/a");
        append("events/a");
        assert_eq!(Spi::get_one::<i32>("SELECT ds.subscription_tick(10)").unwrap(), Some(1));
        assert_eq!(call("try_subscription_delete", &[json!("s")]), json!({}));
        assert_eq!(call("try_subscription_delete", &[json!("s")]), json!({}));
        assert_eq!(
            code(&call("try_subscription_get", &[json!("s")])),
            Some("SUBSCRIPTION_NOT_FOUND")
        );
        assert_eq!(put("s", pull("events/*", "wake/w"))["created"], true);
        append("events/a");
        let claim = call("try_subscription_claim", &[json!("s"), json!("w1")]);
        assert_eq!(claim["generation"], 2, "{claim}");
    }

    #[pg_test]
    fn invalid_requests_are_error_objects() {
        assert_eq!(
            code(&put("s", json!({"type": "nope", "pattern": "a"}))),
            Some("INVALID_REQUEST")
        );
        assert_eq!(code(&put("", pull("a/*", "w"))), Some("INVALID_REQUEST"));
        assert_eq!(
            code(&put(
                "s",
                json!({"type": "webhook", "pattern": "a/*",
                                  "webhook": {"url": "http://10.0.0.1/hook"}})
            )),
            Some("WEBHOOK_URL_REJECTED")
        );
        assert_eq!(
            code(&put("s", json!({"type": "pull-wake", "streams": ["w"], "wake_stream": "w"}))),
            Some("INVALID_REQUEST")
        );
    }

    #[pg_test]
    fn membership_glob_links_on_create_and_fork() {
        create("wake/w");
        create("events/old");
        append("events/old");
        put(
            "s",
            json!({"type": "pull-wake", "pattern": "events/*", "streams": ["manual/a"],
                        "wake_stream": "wake/w"}),
        );
        // Backfill at the tail; explicit at the tail (0: absent).
        assert_eq!(
            streams("s"),
            json!([{"path": "events/old", "link_type": "glob", "acked_offset": off(7)},
                   {"path": "manual/a", "link_type": "explicit", "acked_offset": off(0)}])
        );
        // A new matching stream is linked at 0 in the creating transaction.
        create("events/new");
        create("other/x");
        let s = streams("s");
        assert_eq!(
            s[0],
            json!({"path": "events/new", "link_type": "glob", "acked_offset": off(0)})
        );
        assert_eq!(s.as_array().unwrap().len(), 3);
        // A fork is linked at its tail when created.
        Spi::run("SELECT ds.fork('events/fork', 'events/old')").unwrap();
        let s = streams("s");
        assert_eq!(
            s[0],
            json!({"path": "events/fork", "link_type": "glob", "acked_offset": off(7)})
        );
        // Add / remove explicit streams; a glob link made explicit keeps its position.
        assert_eq!(
            call("try_subscription_add_streams", &[json!("s"), json!(["manual/b", "events/old"])]),
            json!({})
        );
        let s = streams("s");
        assert_eq!(
            s[2],
            json!({"path": "events/old", "link_type": "explicit", "acked_offset": off(7)})
        );
        call("try_subscription_remove_stream", &[json!("s"), json!("manual/b")]);
        call("try_subscription_remove_stream", &[json!("s"), json!("events/old")]);
        call("try_subscription_remove_stream", &[json!("s"), json!("never/there")]);
        let s = streams("s");
        let paths: Vec<&str> =
            s.as_array().unwrap().iter().map(|l| l["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["events/fork", "events/new", "events/old", "manual/a"]);
        assert_eq!(s[2]["link_type"], "glob");
        // Deleting a stream drops its links.
        Spi::run("SELECT ds.delete('events/new')").unwrap();
        assert_eq!(streams("s").as_array().unwrap().len(), 3);
    }

    #[pg_test]
    fn the_wake_stream_is_never_linked() {
        put("s", pull("events/*", "events/wake"));
        create("events/wake");
        create("events/a");
        let s = streams("s");
        assert_eq!(s.as_array().unwrap().len(), 1, "{s}");
        assert_eq!(s[0]["path"], "events/a");
    }

    #[pg_test]
    fn pending_is_derived_from_tails_and_claim_rules() {
        create("wake/w");
        create("events/a");
        put("s", pull("events/*", "wake/w"));
        assert_eq!(
            code(&call("try_subscription_claim", &[json!("s"), json!("w1")])),
            Some("NO_PENDING_WORK")
        );
        assert_eq!(Spi::get_one::<i32>("SELECT ds.subscription_tick(10)").unwrap(), Some(0));
        let tail = append("events/a");
        assert_eq!(Spi::get_one::<i32>("SELECT ds.subscription_tick(10)").unwrap(), Some(1));
        // An idle subscription with a wake in flight is not woken again.
        assert_eq!(Spi::get_one::<i32>("SELECT ds.subscription_tick(10)").unwrap(), Some(0));
        let events = wake_events("wake/w");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["type"], "wake");
        assert_eq!(events[0]["subscription_id"], "s");
        assert_eq!(events[0]["stream"], "events/a");
        assert_eq!(events[0]["generation"], 1);
        let claim = call("try_subscription_claim", &[json!("s"), json!("w1")]);
        assert_eq!(claim["generation"], 1, "{claim}");
        assert!(claim["token"].as_str().unwrap().starts_with("dst_"));
        assert_eq!(claim["token"].as_str().unwrap().len(), 4 + 64);
        assert_eq!(claim["lease_ttl_ms"], 1000);
        assert_eq!(
            claim["streams"],
            json!([{"path": "events/a", "link_type": "glob", "acked_offset": off(0),
                    "tail_offset": tail, "has_pending": true}])
        );
        let busy = call("try_subscription_claim", &[json!("s"), json!("w2")]);
        assert_eq!(code(&busy), Some("ALREADY_CLAIMED"));
        assert_eq!(busy["error"]["current_holder"], "w1");
        assert_eq!(busy["error"]["generation"], 1);
        // done with everything acked: no next wake; the old token is fenced.
        let token = claim["token"].as_str().unwrap();
        let wake = json!({"wake_id": claim["wake_id"], "generation": 1,
                          "acks": [{"stream": "events/a", "offset": tail}], "done": true});
        let ack = call("try_subscription_ack", &[json!("s"), json!(token), wake.clone()]);
        assert_eq!(ack, json!({"ok": true, "next_wake": false}));
        assert_eq!(
            code(&call("try_subscription_ack", &[json!("s"), json!(token), wake])),
            Some("FENCED")
        );
        assert_eq!(streams("s")[0]["acked_offset"], json!(tail));
        // More data: claim starts a wake itself, release ends it and wakes again.
        append("events/a");
        let claim = call("try_subscription_claim", &[json!("s"), json!("w1")]);
        assert_eq!(claim["generation"], 2);
        let release = json!({"wake_id": claim["wake_id"], "generation": 2});
        assert_eq!(
            code(&call(
                "try_subscription_release",
                &[json!("s"), json!("dst_wrong"), release.clone()]
            )),
            Some("TOKEN_INVALID")
        );
        assert_eq!(
            call("try_subscription_release", &[json!("s"), claim["token"].clone(), release]),
            json!({})
        );
        assert_eq!(wake_events("wake/w").len(), 3, "release woke again (generation 3)");
    }

    fn claimed(id: &str) -> (Value, Value) {
        let claim = call("try_subscription_claim", &[json!(id), json!("w")]);
        let wake = json!({"wake_id": claim["wake_id"], "generation": claim["generation"]});
        (claim, wake)
    }

    #[pg_test]
    fn acks_are_validated_before_any_is_applied() {
        create("wake/w");
        create("events/a");
        create("events/b");
        put("s", pull("events/*", "wake/w"));
        append("events/a");
        let tail_b = append("events/b");
        let (claim, wake) = claimed("s");
        let token = claim["token"].clone();
        let ack = |acks: Value| {
            let mut req = wake.clone();
            req["acks"] = acks;
            call("try_subscription_ack", &[json!("s"), token.clone(), req])
        };
        let good = json!({"stream": "events/b", "offset": tail_b});
        for bad in [
            json!({"stream": "nope/x", "offset": off(0)}),
            json!({"stream": "events/a", "offset": "-1"}),
            json!({"stream": "events/a", "offset": "garbage"}),
            json!({"stream": "events/a", "offset": off(8)}),
        ] {
            let r = ack(json!([good, bad]));
            assert_eq!(code(&r), Some("INVALID_OFFSET"), "{bad} -> {r}");
        }
        // Nothing was applied.
        assert_eq!(streams("s")[1]["acked_offset"], off(0));
        assert_eq!(
            ack(json!([{"path": "events/a", "offset": off(3)}, good])),
            json!({"ok": true, "next_wake": false})
        );
        // Below the acknowledged position now.
        assert_eq!(
            code(&ack(json!([{"stream": "events/a", "offset": off(2)}]))),
            Some("INVALID_OFFSET")
        );
        assert_eq!(streams("s")[0]["acked_offset"], off(3));
        // Malformed requests.
        assert_eq!(
            code(&call(
                "try_subscription_ack",
                &[json!("s"), token.clone(), json!({"generation": 1})]
            )),
            Some("INVALID_REQUEST")
        );
        assert_eq!(
            code(&call("try_subscription_ack", &[json!("nope"), token.clone(), wake.clone()])),
            Some("SUBSCRIPTION_NOT_FOUND")
        );
        // done with work left: the next wake starts at once.
        let mut req = wake.clone();
        req["done"] = json!(true);
        assert_eq!(
            call("try_subscription_ack", &[json!("s"), token, req]),
            json!({"ok": true, "next_wake": true})
        );
    }

    #[pg_test]
    fn fenced_after_delete_and_after_lease_expiry() {
        create("wake/w");
        create("events/a");
        put("s", pull("events/*", "wake/w"));
        append("events/a");
        let (claim, wake) = claimed("s");
        call("try_subscription_delete", &[json!("s")]);
        assert_eq!(
            code(&call("try_subscription_ack", &[json!("s"), claim["token"].clone(), wake])),
            Some("FENCED")
        );
        put("s", pull("events/*", "wake/w"));
        append("events/a");
        let (claim, wake) = claimed("s");
        // Let the lease run out (as if 1 s had passed).
        Spi::run(
            "UPDATE ds.subscriptions SET lease_expires_at = now() - interval '1 s' WHERE id = 's'",
        )
        .unwrap();
        assert_eq!(
            code(&call("try_subscription_ack", &[json!("s"), claim["token"].clone(), wake])),
            Some("FENCED")
        );
        // The tick expires leases and wakes again.
        let (claim, _) = claimed("s");
        assert!(claim["generation"].as_i64().unwrap() > 0);
        Spi::run(
            "UPDATE ds.subscriptions SET lease_expires_at = now() - interval '1 s' WHERE id = 's'",
        )
        .unwrap();
        assert_eq!(Spi::get_one::<i32>("SELECT ds.subscription_tick(10)").unwrap(), Some(1));
        let held =
            Spi::get_one::<bool>("SELECT holder IS NULL FROM ds.subscriptions WHERE id = 's'")
                .unwrap();
        assert_eq!(held, Some(true));
    }

    fn webhook(id: &str) {
        put(
            id,
            json!({"type": "webhook", "pattern": "hooks/*", "webhook": {"url": "https://example.com/h"}}),
        );
    }

    fn deliveries() -> Vec<(String, String, i64, String, Value, String, i32)> {
        Spi::connect(|c| {
            c.select("SELECT * FROM ds.subscription_deliveries(10, 60000)", None, &[])
                .unwrap()
                .map(|r| {
                    (
                        r.get::<String>(1).unwrap().unwrap(),
                        r.get::<String>(2).unwrap().unwrap(),
                        r.get::<i64>(3).unwrap().unwrap(),
                        r.get::<String>(4).unwrap().unwrap(),
                        r.get::<pgrx::JsonB>(5).unwrap().unwrap().0,
                        r.get::<String>(6).unwrap().unwrap(),
                        r.get::<i32>(7).unwrap().unwrap(),
                    )
                })
                .collect()
        })
    }

    fn result(id: &str, wake_id: &str, generation: i64, outcome: &str) -> bool {
        Spi::get_one::<bool>(&format!(
            "SELECT ds.subscription_delivery_result('{id}', '{wake_id}', {generation}, '{outcome}', 'HTTP 500')"
        ))
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn webhook_deliveries_results_and_backoff() {
        webhook("h");
        Spi::run("SELECT ds.create('hooks/a', 'application/json', body => convert_to('{\"n\":1}', 'UTF8'))").unwrap();
        assert_eq!(Spi::get_one::<i32>("SELECT ds.subscription_tick(10)").unwrap(), Some(1));
        let d = deliveries();
        assert_eq!(d.len(), 1);
        let (id, wake_id, generation, url, streams, token, attempts) = d[0].clone();
        assert_eq!((id.as_str(), url.as_str(), attempts), ("h", "https://example.com/h", 0));
        assert!(token.starts_with("dst_"));
        assert_eq!(streams[0]["path"], "hooks/a");
        assert_eq!(streams[0]["has_pending"], true);
        // In flight: not handed out again.
        assert!(deliveries().is_empty());
        // A failure is counted and the next attempt is 0.8-1.2 s away.
        assert!(result("h", &wake_id, generation, "failed"));
        let (attempts, status, delay) = Spi::get_three::<i32, String, f64>(
            "SELECT attempts, status, extract(epoch FROM delivery_due_at - now())::float8 \
             FROM ds.subscriptions WHERE id = 'h'",
        )
        .unwrap();
        assert_eq!((attempts, status.as_deref()), (Some(1), Some("failed")));
        let delay = delay.unwrap();
        assert!((0.79..=1.21).contains(&delay), "{delay}");
        assert!(result("h", &wake_id, generation, "failed"));
        let delay = Spi::get_one::<f64>(
            "SELECT extract(epoch FROM delivery_due_at - now())::float8 FROM ds.subscriptions WHERE id = 'h'",
        )
        .unwrap()
        .unwrap();
        assert!((1.59..=2.41).contains(&delay), "{delay}");
        // A stale wake is ignored.
        assert!(!result("h", "w_other", generation, "delivered"));
        assert!(!result("h", &wake_id, generation + 1, "delivered"));
        // delivered: active, the lease starts; done: the snapshot is acked.
        assert!(result("h", &wake_id, generation, "delivered"));
        let (status, leased) = Spi::get_two::<String, bool>(
            "SELECT status, lease_expires_at > now() FROM ds.subscriptions WHERE id = 'h'",
        )
        .unwrap();
        assert_eq!((status.as_deref(), leased), (Some("active"), Some(true)));
        // The callback with the delivered token acks; a done result auto-acks.
        assert!(result("h", &wake_id, generation, "done"));
        let acked = call("try_subscription_get", &[json!("h")])["subscription"]["streams"][0]["acked_offset"].clone();
        assert_eq!(acked, streams[0]["tail_offset"]);
        assert!(!result("h", &wake_id, generation, "done"));
        assert_eq!(
            sqlstate("SELECT ds.subscription_delivery_result('h', 'x', 1, 'maybe', NULL)")
                .as_deref(),
            Some("22023")
        );
    }

    #[pg_test]
    fn webhook_callback_acks_and_fences() {
        webhook("h");
        Spi::run("SELECT ds.create('hooks/a', 'application/json', body => convert_to('{\"n\":1}', 'UTF8'))").unwrap();
        Spi::run("SELECT ds.subscription_tick(10)").unwrap();
        let (_, wake_id, generation, _, streams, token, _) = deliveries()[0].clone();
        let req = json!({"wake_id": wake_id, "generation": generation,
                         "acks": [{"stream": "hooks/a", "offset": streams[0]["tail_offset"]}], "done": true});
        assert_eq!(
            code(&call("try_subscription_ack", &[json!("h"), json!(token), req.clone()])),
            Some("INVALID_REQUEST")
        );
        assert_eq!(
            call("try_subscription_callback", &[json!("h"), json!(token), req.clone()]),
            json!({"ok": true, "next_wake": false})
        );
        assert_eq!(
            code(&call("try_subscription_callback", &[json!("h"), json!(token), req])),
            Some("FENCED")
        );
        assert!(deliveries().is_empty());
    }

    #[pg_test]
    fn signing_keys_and_jwks() {
        assert_eq!(
            Spi::get_one::<bool>("SELECT count(*) = 0 FROM ds.subscription_signing_key()").unwrap(),
            Some(true)
        );
        assert_eq!(jsonb("SELECT ds.subscription_jwks()"), json!({"keys": []}));
        let add = |kid: &str, byte: &str| {
            Spi::get_one::<String>(&format!(
                "SELECT kid FROM ds.subscription_add_signing_key('{kid}', decode(repeat('{byte}', 32), 'hex'), decode(repeat('{byte}', 32), 'hex'))"
            ))
            .unwrap()
            .unwrap()
        };
        assert_eq!(add("k1", "ab"), "k1");
        // Another sidecar's key loses: the active one comes back.
        assert_eq!(add("k2", "cd"), "k1");
        let jwks = jsonb("SELECT ds.subscription_jwks()");
        assert_eq!(
            jwks,
            json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": "k1",
                             "x": "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s"}]})
        );
        Spi::run("SELECT ds.subscription_rotate_signing_key()").unwrap();
        assert_eq!(add("k2", "cd"), "k2");
        let kids: Vec<Value> = jsonb("SELECT ds.subscription_jwks()")["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].clone())
            .collect();
        assert_eq!(kids.len(), 2, "the retired key stays published");
        Spi::run("UPDATE ds.signing_keys SET retired_at = now() - interval '16 minutes' WHERE kid = 'k1'").unwrap();
        assert_eq!(jsonb("SELECT ds.subscription_jwks()")["keys"].as_array().unwrap().len(), 1);
        assert_eq!(
            sqlstate("SELECT ds.subscription_add_signing_key('k3', '\\x00', '\\x00')").as_deref(),
            Some("22023")
        );
    }

    #[pg_test]
    fn wrappers_raise_every_sqlstate() {
        create("wake/w");
        create("events/a");
        let setup = [
            "SELECT ds.subscription_put('s', '{\"type\":\"pull-wake\",\"pattern\":\"events/*\",\"wake_stream\":\"wake/w\"}')",
            "SELECT ds.append('events/a', '{\"n\":1}'::jsonb)",
        ];
        for q in setup {
            Spi::run(q).unwrap();
        }
        let claim = jsonb("SELECT ds.subscription_claim('s', 'w1')");
        let wake = json!({"wake_id": claim["wake_id"], "generation": claim["generation"]});
        let cases = [
            (ErrorCode::InvalidRequest, "SELECT ds.subscription_put('x', '{}')".to_owned()),
            (ErrorCode::WebhookUrlRejected, "SELECT ds.subscription_put('x', '{\"type\":\"webhook\",\"pattern\":\"a\",\"webhook\":{\"url\":\"https://127.0.0.1/\"}}')".to_owned()),
            (ErrorCode::NotFound, "SELECT ds.subscription_get('nope')".to_owned()),
            (ErrorCode::AlreadyExists, "SELECT ds.subscription_put('s', '{\"type\":\"pull-wake\",\"pattern\":\"x/*\",\"wake_stream\":\"wake/w\"}')".to_owned()),
            (ErrorCode::TokenInvalid, format!("SELECT ds.subscription_ack('s', 'dst_bad', '{wake}')")),
            (ErrorCode::Fenced, "SELECT ds.subscription_ack('s', 'dst_bad', '{\"wake_id\":\"w_old\",\"generation\":0}')".to_owned()),
            (ErrorCode::AlreadyClaimed, "SELECT ds.subscription_claim('s', 'w2')".to_owned()),
            (ErrorCode::InvalidOffset, format!("SELECT ds.subscription_ack('s', '{}', '{}')", claim["token"].as_str().unwrap(),
                json!({"wake_id": claim["wake_id"], "generation": claim["generation"], "acks": [{"stream": "events/a", "offset": "-1"}]}))),
        ];
        for (code, query) in cases {
            assert_eq!(sqlstate(&query).as_deref(), Some(code.sqlstate()), "{query}");
        }
        Spi::run("SELECT ds.subscription_put('t', '{\"type\":\"pull-wake\",\"streams\":[\"none/x\"],\"wake_stream\":\"wake/w\"}')").unwrap();
        assert_eq!(
            sqlstate("SELECT ds.subscription_claim('t', 'w')").as_deref(),
            Some(ErrorCode::NoPendingWork.sqlstate())
        );
        // Success passes the result through.
        assert_eq!(jsonb("SELECT ds.subscription_delete('t')"), json!({}));
    }

    #[pg_test]
    fn privileges() {
        create("wake/w");
        create("events/a");
        Spi::run(
            "CREATE ROLE ds_sub_a; CREATE ROLE ds_sub_b; \
             GRANT USAGE ON SCHEMA ds TO ds_sub_a, ds_sub_b; \
             GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ds TO ds_sub_a, ds_sub_b; \
             SELECT ds.grant('ds_sub_a', 'events/**', 'read'); \
             SELECT ds.grant('ds_sub_a', 'wake/w', 'append'); \
             SELECT ds.grant('ds_sub_b', 'events/a', 'read'); \
             SELECT ds.grant('ds_sub_b', 'wake/w', 'append')",
        )
        .unwrap();
        Spi::run("SET ROLE ds_sub_b").unwrap();
        // Read on one stream does not cover the pattern.
        assert_eq!(code(&put("b", pull("events/*", "wake/w"))), Some("FORBIDDEN"));
        assert_eq!(
            code(&put(
                "b",
                json!({"type": "pull-wake", "streams": ["other/x"], "wake_stream": "wake/w"})
            )),
            Some("FORBIDDEN")
        );
        assert_eq!(
            put(
                "b",
                json!({"type": "pull-wake", "streams": ["events/a"], "wake_stream": "wake/w"})
            )["created"],
            true
        );
        assert_eq!(sqlstate("SELECT ds.subscription_put('b2', '{\"type\":\"pull-wake\",\"pattern\":\"events/*\",\"wake_stream\":\"wake/w\"}')").as_deref(), Some("42501"));
        Spi::run("RESET ROLE; SET ROLE ds_sub_a").unwrap();
        assert_eq!(put("a", pull("events/*", "wake/w"))["created"], true);
        // Another role's subscription.
        for q in [
            call("try_subscription_get", &[json!("b")]),
            call("try_subscription_delete", &[json!("b")]),
            call("try_subscription_claim", &[json!("b"), json!("w")]),
            call("try_subscription_add_streams", &[json!("b"), json!(["events/a"])]),
            put(
                "b",
                json!({"type": "pull-wake", "streams": ["events/a"], "wake_stream": "wake/w"}),
            ),
        ] {
            assert_eq!(code(&q), Some("FORBIDDEN"), "{q}");
        }
        assert_eq!(sqlstate("SELECT ds.subscription_get('b')").as_deref(), Some("42501"));
        Spi::run("RESET ROLE").unwrap();
        // The superuser may manage both.
        assert_eq!(call("try_subscription_get", &[json!("b")])["subscription"]["id"], "b");
    }
}
