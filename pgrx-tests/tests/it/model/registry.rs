//! The stream registry in the model test (README "Stream registries"): each
//! case records into a registry of its own prefix, and at its end the
//! registry must list exactly the creates, forks, deletes (soft ones too)
//! and expiries that happened, in order, as State Protocol changes (txid
//! and timestamps left out); failed calls, confirmations of an existing
//! stream and the cascade that removes a soft-deleted source record nothing.

use super::ops::Ct;
use super::state::Res;

/// One change as compared: operation, path index, and for an insert the
/// stream's content type, TTL, whether it has an expiry time, and the path
/// index of its fork source.
#[derive(Debug, Clone)]
pub struct Change {
    pub insert: Option<(Ct, Option<i64>, bool, Option<usize>)>,
    pub p: usize,
}

fn prefix(paths: &[String]) -> String {
    format!("{}/", paths[0].rsplit_once('/').expect("case paths have a base").0)
}

pub fn setup_sql(paths: &[String]) -> String {
    format!("SELECT count(*) FROM ds.create_registry('{}');", prefix(paths))
}

pub fn teardown_sql(paths: &[String]) -> String {
    format!("SELECT ds.drop_registry('{}');", prefix(paths))
}

/// Waits (at most 10 s) until the registry's entries are sequenced, then
/// reads them.
pub fn read_sql(paths: &[String]) -> String {
    format!(
        "DO $$ BEGIN FOR i IN 1..1000 LOOP EXIT WHEN NOT EXISTS (SELECT FROM ds.pending); \
         PERFORM pg_sleep(0.01); END LOOP; END $$; \
         SELECT m #>> '{{headers,operation}}', m ->> 'key', m #>> '{{value,content_type}}', \
                m #>> '{{value,ttl_seconds}}', \
                CASE WHEN m ? 'value' THEN m #> '{{value,expires_at}}' <> 'null' END, \
                m #>> '{{value,forked_from}}' \
         FROM ds.read('{}__registry__') r, \
              LATERAL (SELECT convert_from(r.data, 'UTF8')::jsonb AS m) j \
         ORDER BY r.start_offset;",
        prefix(paths)
    )
}

/// The rows `read_sql` gives for `changes`.
pub fn expected(changes: &[Change], paths: &[String]) -> Res {
    let s = |v: &str| Some(v.to_owned());
    Ok(changes
        .iter()
        .map(|c| match c.insert {
            None => vec![s("delete"), s(&paths[c.p]), None, None, None, None],
            Some((ct, ttl, expires, source)) => vec![
                s("insert"),
                s(&paths[c.p]),
                s(ct.name()),
                ttl.map(|t| t.to_string()),
                s(if expires { "t" } else { "f" }),
                source.map(|q| paths[q].clone()),
            ],
        })
        .collect())
}
