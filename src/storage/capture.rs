//! The SQL of change capture: `ds.captures`, the catalog look-ups
//! `ds.capture` needs, and the DDL of its triggers. Decides nothing.

use pgrx::pg_sys::Oid;
use pgrx::spi::SpiClient;

use super::{select, update};
use crate::error::{DsError, DsResult};

/// One row of `ds.captures`.
#[derive(Debug, Clone)]
pub struct CaptureRow {
    pub path: String,
    pub entity_type: String,
    pub columns: Option<Vec<String>>,
    pub key_columns: Option<Vec<String>>,
    pub key_expression: Option<String>,
    pub row_filter: Option<String>,
    pub owner_role: Oid,
}

/// What `ds.capture` needs to know of a table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Schema-qualified and quoted, for DDL.
    pub name: String,
    /// The table's own name: the default entity type.
    pub relname: String,
    pub relkind: i8,
    /// The row type, for parameters that carry a row.
    pub row_type: Oid,
    pub columns: Vec<String>,
    /// The primary key's columns in key order; empty without one.
    pub primary_key: Vec<String>,
}

pub fn table_info(client: &SpiClient<'_>, relid: Oid) -> DsResult<TableInfo> {
    let table = select(
        client,
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relname::pg_catalog.text, \
                c.relkind, c.reltype, \
                ARRAY(SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_attribute a \
                      WHERE a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attnum OPERATOR(pg_catalog.>) 0 \
                        AND NOT a.attisdropped ORDER BY a.attnum), \
                ARRAY(SELECT a.attname::pg_catalog.text \
                      FROM pg_catalog.pg_index i, \
                           pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, n), \
                           pg_catalog.pg_attribute a \
                      WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisprimary \
                        AND a.attrelid OPERATOR(pg_catalog.=) c.oid \
                        AND a.attnum OPERATOR(pg_catalog.=) k.attnum \
                      ORDER BY k.n) \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE c.oid OPERATOR(pg_catalog.=) $1",
        Some(1),
        &[relid.into()],
    )?;
    let row = table.first();
    Ok(TableInfo {
        name: row.get(1)?.ok_or_else(|| DsError::Internal("table vanished".into()))?,
        relname: row.get(2)?.unwrap_or_default(),
        relkind: row.get(3)?.unwrap_or_default(),
        row_type: row.get(4)?.unwrap_or(Oid::INVALID),
        columns: row.get(5)?.unwrap_or_default(),
        primary_key: row.get(6)?.unwrap_or_default(),
    })
}

pub fn find_capture(client: &SpiClient<'_>, relid: Oid) -> DsResult<Option<CaptureRow>> {
    let table = select(
        client,
        "SELECT path, entity_type, columns, key_columns, key_expression, row_filter, \
                owner_role::pg_catalog.oid \
         FROM ds.captures WHERE tbl OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
        Some(1),
        &[relid.into()],
    )?;
    let Some(row) = table.into_iter().next() else {
        return Ok(None);
    };
    Ok(Some(CaptureRow {
        path: row.get(1)?.unwrap_or_default(),
        entity_type: row.get(2)?.unwrap_or_default(),
        columns: row.get(3)?,
        key_columns: row.get(4)?,
        key_expression: row.get(5)?,
        row_filter: row.get(6)?,
        owner_role: row.get(7)?.unwrap_or(Oid::INVALID),
    }))
}

pub fn insert_capture(client: &mut SpiClient<'_>, relid: Oid, c: &CaptureRow) -> DsResult<()> {
    update(
        client,
        "INSERT INTO ds.captures (tbl, path, entity_type, columns, key_columns, key_expression, \
                                  row_filter, owner_role) \
         VALUES ($1::pg_catalog.regclass, $2, $3, $4, $5, $6, $7, $8::pg_catalog.regrole)",
        None,
        &[
            relid.into(),
            c.path.as_str().into(),
            c.entity_type.as_str().into(),
            c.columns.clone().into(),
            c.key_columns.clone().into(),
            c.key_expression.clone().into(),
            c.row_filter.clone().into(),
            c.owner_role.into(),
        ],
    )?;
    Ok(())
}

pub fn delete_capture(client: &mut SpiClient<'_>, relid: Oid) -> DsResult<bool> {
    let table = update(
        client,
        "DELETE FROM ds.captures WHERE tbl OPERATOR(pg_catalog.=) $1::pg_catalog.regclass \
         RETURNING 1",
        None,
        &[relid.into()],
    )?;
    Ok(!table.is_empty())
}

/// Whether `role` holds every one of `privileges` (comma-separated) on the table.
pub fn has_table_privileges(
    client: &SpiClient<'_>,
    role: Oid,
    relid: Oid,
    privileges: &str,
) -> DsResult<bool> {
    Ok(select(
        client,
        "SELECT pg_catalog.has_table_privilege($1, $2, $3)",
        Some(1),
        &[role.into(), relid.into(), privileges.into()],
    )?
    .first()
    .get_one::<bool>()?
    .unwrap_or(false))
}

/// Blocks the table's writers until this transaction ends (readers go on),
/// so the snapshot and the triggers start at one point.
pub fn lock_out_writers(client: &mut SpiClient<'_>, table: &str) -> DsResult<()> {
    client.update(&format!("LOCK TABLE ONLY {table} IN SHARE ROW EXCLUSIVE MODE"), None, &[])?;
    Ok(())
}

pub fn create_triggers(client: &mut SpiClient<'_>, table: &str) -> DsResult<()> {
    client.update(
        &format!(
            "CREATE TRIGGER ds_capture AFTER INSERT OR UPDATE OR DELETE ON {table} \
             FOR EACH ROW EXECUTE FUNCTION ds.capture_trigger()"
        ),
        None,
        &[],
    )?;
    client.update(
        &format!(
            "CREATE TRIGGER ds_capture_truncate AFTER TRUNCATE ON {table} \
             FOR EACH STATEMENT EXECUTE FUNCTION ds.capture_trigger()"
        ),
        None,
        &[],
    )?;
    Ok(())
}

pub fn drop_triggers(client: &mut SpiClient<'_>, table: &str) -> DsResult<()> {
    for name in ["ds_capture", "ds_capture_truncate"] {
        client.update(&format!("DROP TRIGGER IF EXISTS {name} ON {table}"), None, &[])?;
    }
    Ok(())
}

/// The query a capture evaluates its row filter and key expression with:
/// `$1` is a row of the table; the row's columns are in scope by name.
pub fn eval_query(
    row_type_name: &str,
    key_expression: Option<&str>,
    filter: Option<&str>,
) -> String {
    format!(
        "SELECT ({})::pg_catalog.text, ({})::pg_catalog.bool FROM (SELECT ($1::{row_type_name}).*) AS ds_capture_row",
        key_expression.unwrap_or("NULL"),
        filter.unwrap_or("true"),
    )
}

/// The snapshot's query: every row of the table (not its children) that
/// passes the filter, as `row_to_json` text, with the key expression.
pub fn snapshot_query(table: &str, key_expression: Option<&str>, filter: Option<&str>) -> String {
    format!(
        "SELECT pg_catalog.row_to_json(ds_capture_row)::pg_catalog.text, ({})::pg_catalog.text \
         FROM ONLY {table} AS ds_capture_row WHERE ({})::pg_catalog.bool",
        key_expression.unwrap_or("NULL"),
        filter.unwrap_or("true"),
    )
}

/// Every capture of a table `role` may SELECT from, by table name.
pub fn list_captures(client: &SpiClient<'_>, role: Oid) -> DsResult<Vec<(String, CaptureRow)>> {
    let table = select(
        client,
        "SELECT c.tbl::pg_catalog.text, c.path, c.entity_type, c.columns, c.key_expression, \
                c.row_filter, c.owner_role::pg_catalog.oid \
         FROM ds.captures c \
         WHERE pg_catalog.has_table_privilege($1, c.tbl::pg_catalog.oid, 'SELECT') \
         ORDER BY c.tbl::pg_catalog.text",
        None,
        &[role.into()],
    )?;
    let mut out = Vec::new();
    for row in table {
        out.push((
            row.get(1)?.unwrap_or_default(),
            CaptureRow {
                path: row.get(2)?.unwrap_or_default(),
                entity_type: row.get(3)?.unwrap_or_default(),
                columns: row.get(4)?,
                key_columns: None,
                key_expression: row.get(5)?,
                row_filter: row.get(6)?,
                owner_role: row.get(7)?.unwrap_or(Oid::INVALID),
            },
        ));
    }
    Ok(out)
}
