//! In-backend tests of stream registries (`cargo pgrx test`), one
//! transaction each. The test cluster does not preload the library, so
//! registry appends are locking appends, readable in the same transaction;
//! the lock-free path and concurrency are tested in
//! `pgrx-tests/tests/it/registry.rs`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use serde_json::Value;

    fn run(query: &str) {
        Spi::run(query).unwrap();
    }

    /// The registry's messages, in order.
    fn messages(registry: &str) -> Vec<Value> {
        let json = Spi::get_one_with_args::<pgrx::JsonB>(
            "SELECT coalesce(jsonb_agg(convert_from(data, 'UTF8')::jsonb ORDER BY start_offset), \
                             '[]') FROM ds.read($1)",
            &[registry.into()],
        )
        .unwrap()
        .expect("an array");
        json.0.as_array().unwrap().clone()
    }

    fn sqlstate(query: &str) -> Option<String> {
        run("CREATE OR REPLACE FUNCTION pg_temp.registry_sqlstate(q text) RETURNS text \
             LANGUAGE plpgsql AS $$ BEGIN EXECUTE q; RETURN NULL; \
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$");
        Spi::get_one_with_args::<String>("SELECT pg_temp.registry_sqlstate($1)", &[query.into()])
            .unwrap()
    }

    #[pg_test]
    fn changes_are_recorded_in_the_changing_transaction_in_order() {
        run("SET LOCAL ds.registry = on");
        run("SELECT ds.create_registry('pgt/')");
        run("SELECT ds.create('pgt/a', 'text/plain', ttl_seconds => 5)");
        run("SELECT ds.fork('pgt/b', 'pgt/a')");
        run("SELECT ds.delete('pgt/b')");
        let m = messages("pgt/__registry__");
        let ops: Vec<(&str, &str)> = m
            .iter()
            .map(|m| (m["key"].as_str().unwrap(), m["headers"]["operation"].as_str().unwrap()))
            .collect();
        assert_eq!(ops, [("pgt/a", "insert"), ("pgt/b", "insert"), ("pgt/b", "delete")]);
        assert_eq!(m[1]["type"], "stream");
        assert_eq!(m[1]["value"]["forked_from"], "pgt/a");
        assert_eq!(m[1]["value"]["ttl_seconds"], 5, "inherited from the source");
        assert_eq!(m[1]["value"]["content_type"], "text/plain");
        let txid = Spi::get_one::<String>("SELECT pg_current_xact_id()::text").unwrap().unwrap();
        assert!(m.iter().all(|m| m["headers"]["txid"] == txid.as_str()), "{m:?}");
        let now = Spi::get_one::<String>(
            "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(m[0]["headers"]["timestamp"], now.as_str());
        assert_eq!(m[0]["value"]["created_at"], now.as_str());
        assert!(m[2].get("value").is_none());
    }

    #[pg_test]
    fn registries_are_not_listed_and_belong_to_no_role() {
        run("SET LOCAL ds.registry = on");
        run("SELECT ds.create_registry('')");
        run("SELECT ds.create_registry('pgt2/')");
        run("SELECT ds.create('pgt2/x')");
        let root: Vec<String> = messages("__registry__")
            .iter()
            .map(|m| m["key"].as_str().unwrap().to_owned())
            .filter(|k| k.starts_with("pgt2/"))
            .collect();
        assert_eq!(root, ["pgt2/x"], "the pgt2/ registry itself is not listed");
        let owner = Spi::get_one::<bool>(
            "SELECT owner_role IS NULL FROM ds.streams WHERE path = 'pgt2/__registry__'",
        );
        assert_eq!(owner.unwrap(), Some(true));
        assert_eq!(
            sqlstate("SELECT ds.append('pgt2/__registry__', 'x'::text)").as_deref(),
            Some("42501")
        );
        assert_eq!(sqlstate("SELECT ds.delete('__registry__')").as_deref(), Some("42501"));
        assert_eq!(sqlstate("SELECT ds.create_registry('pgt2')").as_deref(), Some("22023"));
        assert_eq!(sqlstate("SELECT ds.drop_registry('x/*/')").as_deref(), Some("22023"));
        assert!(Spi::get_one::<bool>("SELECT ds.drop_registry('')").unwrap().unwrap());
    }

    #[pg_test]
    fn nothing_is_recorded_while_the_switch_is_off() {
        run("SELECT ds.create_registry('pgt3/')");
        run("SELECT ds.create('pgt3/quiet')");
        assert!(messages("pgt3/__registry__").is_empty());
        run("SET LOCAL ds.registry = on");
        run("SELECT ds.delete('pgt3/quiet')");
        assert_eq!(messages("pgt3/__registry__").len(), 1);
    }
}
