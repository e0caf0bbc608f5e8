//! Change capture: a table's committed changes as a State Protocol stream.
//!
//! `ds.capture(table, path)` creates (or reuses) the JSON stream at `path`,
//! appends a snapshot of the table's rows between `snapshot-start` and
//! `snapshot-end`, and installs two triggers: `ds_capture` (AFTER each row
//! INSERT/UPDATE/DELETE) and `ds_capture_truncate` (AFTER TRUNCATE, a
//! `reset`). The triggers write with `ds.enqueue`'s lock-free path in the
//! writing transaction, so a change is in the stream if and only if it
//! committed, and concurrent writers of the table do not serialise on the
//! stream. Per row, changes are sequenced in commit order: the sequencer
//! orders transactions by their last write, and a transaction that waited
//! for another's row lock writes after that one's commit (see `ds.pending`).
//!
//! The snapshot and the triggers start at one point: `ds.capture` locks the
//! table's writers out (SHARE ROW EXCLUSIVE) until it commits, so a change
//! is either in the snapshot or fired the trigger, never both or neither.
//!
//! Who runs what: the triggers run as the writing role, switch to the
//! extension's owner only to read `ds.captures` and write the stream, and
//! evaluate the capture's row filter and key expression as the role that
//! called `ds.capture` (restricted, as maintenance commands do), so an
//! expression never runs with more rights than its author had.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use ds_core::state_change::{self, Change, Control, Operation, Row};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{PgOid, PgRelation, datum::DatumWithOid};

use crate::acl;
use crate::enqueue;
use crate::error::{DsError, DsResult};
use crate::storage::{
    self,
    capture::{self as store, CaptureRow},
};

/// Snapshot messages per append (bounded bytes too: `SNAPSHOT_CHUNK_BYTES`).
const SNAPSHOT_CHUNK_ROWS: usize = 1_000;
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Captured tables whose configuration a backend keeps.
const CACHE_CAPACITY: usize = 256;

/// A capture's configuration as the trigger uses it.
struct Capture {
    row: CaptureRow,
    /// Statement evaluating the key expression and row filter, when either
    /// is set: parsed once under a pinned search_path and kept.
    eval: Option<OwnedPreparedStatement>,
    row_type: pg_sys::Oid,
    /// The extension's owner, who writes the stream.
    owner: pg_sys::Oid,
}

thread_local! {
    /// Table oid → capture. Entries go stale on the table's relcache
    /// invalidation (`ds.capture` / `ds.uncapture` create and drop triggers,
    /// `ALTER TABLE` changes it): the callback only records that, and
    /// `load` drops them, so no kept plan is freed inside invalidation
    /// processing.
    static CACHE: RefCell<HashMap<pg_sys::Oid, Rc<Capture>>> = RefCell::new(HashMap::new());
    /// Invalidated since the last `load`: (every table, these tables).
    static STALE: RefCell<(bool, Vec<pg_sys::Oid>)> = const { RefCell::new((false, Vec::new())) };
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    STALE.with(|s| {
        let mut stale = s.borrow_mut();
        if relid == pg_sys::InvalidOid || stale.1.len() >= CACHE_CAPACITY {
            *stale = (true, Vec::new());
        } else if !stale.0 {
            stale.1.push(relid);
        }
    });
}

/// Drops the cache entries invalidated since the last call.
fn drop_stale() {
    let (all, relids) = STALE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        if all {
            cache.clear();
        }
        for relid in relids {
            cache.remove(&relid);
        }
    });
}

fn register_invalidation_callback() {
    if CALLBACK.with(|c| c.replace(true)) {
        return;
    }
    // SAFETY: registers a callback for this backend's lifetime.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0),
        )
    };
}

/// Runs `f` as `role` (restricted: no SET ROLE, no temporary objects, as
/// Postgres runs maintenance commands), then switches back. An error in
/// between aborts the (sub)transaction, which restores the user itself.
fn as_role<T>(role: pg_sys::Oid, restricted: bool, f: impl FnOnce() -> T) -> T {
    let (mut user, mut context) = (pg_sys::Oid::INVALID, 0);
    let mut flags = pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
    if restricted {
        flags |= pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
    }
    // SAFETY: the save / switch / restore SECURITY DEFINER does.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(role, context | flags);
    }
    let out = f();
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    out
}

/// Raises `e` as a Postgres error (the trigger has no `Result` boundary
/// that keeps the SQLSTATE).
fn raise(e: DsError) -> ! {
    ErrorReport::from(e).report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// The message text of a row image: `row_to_json` of the tuple, exactly what
/// the snapshot's `row_to_json(row)` prints.
///
/// SAFETY: `tuple` and `desc` must be the trigger's valid tuple and descriptor.
unsafe fn row_json(tuple: pg_sys::HeapTuple, desc: pg_sys::TupleDesc) -> (String, pg_sys::Datum) {
    unsafe {
        let composite = pg_sys::heap_copy_tuple_as_datum(tuple, desc);
        let text = pgrx::direct_function_call::<String>(pg_sys::row_to_json, &[Some(composite)])
            .unwrap_or_default();
        (text, composite)
    }
}

/// Evaluates the capture's key expression and row filter for one row, as
/// the capture's owner. (None, true) when it has neither.
fn evaluate(capture: &Capture, composite: pg_sys::Datum) -> DsResult<(Option<String>, bool)> {
    let Some(query) = &capture.eval else {
        return Ok((None, true));
    };
    as_role(capture.row.owner_role, true, || {
        Spi::connect(|client| {
            // SAFETY: `composite` is a row of the table, of type `row_type`.
            let arg = unsafe { DatumWithOid::new(composite, capture.row_type) };
            let _generic = storage::GenericPlans::new();
            let table = client.select(query, Some(1), &[arg])?;
            let row = table.first();
            Ok((row.get::<String>(1)?, row.get::<bool>(2)?.unwrap_or(false)))
        })
    })
}

fn load(relid: pg_sys::Oid) -> DsResult<Option<Rc<Capture>>> {
    register_invalidation_callback();
    drop_stale();
    if let Some(c) = CACHE.with(|c| c.borrow().get(&relid).cloned()) {
        return Ok(Some(c));
    }
    let owner = extension_owner()?;
    let found = as_role(owner, false, || {
        Spi::connect(|client| -> DsResult<_> {
            let Some(row) = store::find_capture(client, relid)? else { return Ok(None) };
            let info = store::table_info(client, relid)?;
            Ok(Some((row, info)))
        })
    })?;
    let Some((mut row, info)) = found else { return Ok(None) };
    if row.key_expression.is_none() {
        // The primary key as it is now: a renamed or changed key follows.
        if info.primary_key.is_empty() {
            return Err(DsError::NoKey(format!(
                "table {} is captured by its primary key, which it no longer has; run \
                 ds.uncapture on it, then ds.capture with a key_expression",
                info.name
            )));
        }
        row.key_columns = Some(info.primary_key.clone());
    }
    let eval = if row.key_expression.is_some() || row.row_filter.is_some() {
        let query =
            store::eval_query(&info.name, row.key_expression.as_deref(), row.row_filter.as_deref());
        Some(prepare_pinned(row.owner_role, &query, info.row_type)?)
    } else {
        None
    };
    let capture = Rc::new(Capture { row, eval, row_type: info.row_type, owner });
    CACHE.with(|c| {
        let mut cache = c.borrow_mut();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(relid, Rc::clone(&capture));
    });
    Ok(Some(capture))
}

/// Prepares `query` (one parameter of type `row_type`) as `role` with
/// `search_path = pg_catalog, pg_temp`, as `ds.capture`'s snapshot runs it:
/// a kept plan re-parses with the search_path it was made with, so the
/// expressions mean the same whatever the writer's search_path is.
fn prepare_pinned(
    role: pg_sys::Oid,
    query: &str,
    row_type: pg_sys::Oid,
) -> DsResult<OwnedPreparedStatement> {
    as_role(role, true, || {
        with_settings(&[(c"search_path", c"pg_catalog, pg_temp")], || {
            Spi::connect(|client| client.prepare(query, &[PgOid::from(row_type)]).map(|p| p.keep()))
        })
        .map_err(|e| invalid(format!("the capture's row filter or key expression: {e}")))
    })
}

/// The settings row images and keys are printed with, whatever the writing
/// session set: otherwise two writers of one table would print one value
/// two ways (`TimeZone` moves timestamps' offsets, `IntervalStyle` and
/// `DateStyle` reword values, `extra_float_digits` below 1 cuts floats,
/// `bytea_output = escape` changes bytea).
const OUTPUT_SETTINGS: [(&std::ffi::CStr, &std::ffi::CStr); 5] = [
    (c"TimeZone", c"UTC"),
    (c"DateStyle", c"ISO, MDY"),
    (c"IntervalStyle", c"postgres"),
    (c"extra_float_digits", c"1"),
    (c"bytea_output", c"hex"),
];

unsafe extern "C" {
    /// `bytea_output` (utils/bytea.h, not in pgrx's bindings): 0 escape, 1 hex.
    static bytea_output: std::ffi::c_int;
}
const BYTEA_OUTPUT_HEX: std::ffi::c_int = 1;

thread_local! {
    /// The last time zone `session_is_utc` judged, and its answer: a
    /// `pg_tz` is cached by Postgres for the backend's life, so one pointer
    /// always means one zone.
    static UTC_ZONE: std::cell::Cell<(usize, bool)> = const { std::cell::Cell::new((0, false)) };
}

/// Whether the session's time zone is a fixed offset of zero (prints like UTC).
fn session_is_utc() -> bool {
    // SAFETY: reads the session's time zone, which Postgres always sets.
    let tz = unsafe { pg_sys::session_timezone };
    if tz.is_null() {
        return false;
    }
    let (known, utc) = UTC_ZONE.with(std::cell::Cell::get);
    if known == tz as usize {
        return utc;
    }
    let mut offset: std::ffi::c_long = 1;
    // SAFETY: a valid zone (checked above).
    let utc = unsafe { pg_sys::pg_get_timezone_offset(tz, &mut offset) } && offset == 0;
    UTC_ZONE.with(|z| z.set((tz as usize, utc)));
    utc
}

/// Whether the session already prints as `OUTPUT_SETTINGS` asks, read from
/// the settings' own variables: every captured row asks, and reading each
/// setting by name (`with_settings`) cost 2.5% of a captured insert's CPU.
fn output_settings_hold() -> bool {
    // SAFETY: plain reads of the backend's settings variables.
    let settings = unsafe {
        pg_sys::DateStyle == pg_sys::USE_ISO_DATES as i32
            && pg_sys::DateOrder == pg_sys::DATEORDER_MDY as i32
            && pg_sys::IntervalStyle == pg_sys::INTSTYLE_POSTGRES as i32
            && pg_sys::extra_float_digits == 1
            && bytea_output == BYTEA_OUTPUT_HEX
    };
    settings && session_is_utc()
}

/// `with_settings(&OUTPUT_SETTINGS, f)`, without looking when they hold.
fn with_output_settings<T>(f: impl FnOnce() -> T) -> T {
    if output_settings_hold() { f() } else { with_settings(&OUTPUT_SETTINGS, f) }
}

/// Runs `f` with `settings`, setting (for its duration) only those whose
/// current value differs: sessions that keep the defaults pay nothing.
fn with_settings<T>(settings: &[(&std::ffi::CStr, &std::ffi::CStr)], f: impl FnOnce() -> T) -> T {
    // SAFETY: reads of GUC values by name; the pointers are valid until the
    // next change of that setting, and are compared at once.
    let differing: Vec<_> = settings
        .iter()
        .filter(|(name, value)| unsafe {
            if *name == c"TimeZone" && *value == c"UTC" && session_is_utc() {
                // "Etc/UTC", "GMT", ...: the same output. Setting TimeZone
                // would also send the client a ParameterStatus each time.
                return false;
            }
            let current = pg_sys::GetConfigOption(name.as_ptr(), true, false);
            current.is_null() || std::ffi::CStr::from_ptr(current) != *value
        })
        .collect();
    if differing.is_empty() {
        return f();
    }
    // SAFETY: a GUC nest level, closed below, as a function's SET clause
    // does; an error in between aborts the (sub)transaction, which closes it.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in differing {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    };
    let out = f();
    // SAFETY: closes the nest level opened above (restores the settings).
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    out
}

/// One side (old or new) of a row change, if it passes the filter.
struct Image {
    json: String,
    key: String,
}

fn image(capture: &Capture, json: String, composite: pg_sys::Datum) -> DsResult<Option<Image>> {
    let (expression_key, passes) = evaluate(capture, composite)?;
    if !passes {
        return Ok(None);
    }
    let row = Row::parse(&json)?;
    let key = match (&capture.row.key_expression, expression_key) {
        (Some(_), Some(k)) if !k.is_empty() => k,
        (Some(e), _) => {
            return Err(DsError::Invalid(ds_core::Error::InvalidArguments(format!(
                "the key expression {e:?} of the capture of {:?} gave NULL or an empty key",
                capture.row.entity_type
            ))));
        }
        (None, _) => {
            let names: Vec<&str> =
                capture.row.key_columns.iter().flatten().map(String::as_str).collect();
            row.key(&names)?
        }
    };
    let columns: Option<Vec<&str>> =
        capture.row.columns.as_ref().map(|c| c.iter().map(String::as_str).collect());
    let json = row.project(columns.as_deref());
    Ok(Some(Image { json, key }))
}

/// The change messages of one row event (none, one, or delete + insert
/// when an update changed the key or moved the row across the filter).
fn row_messages(
    capture: &Capture,
    old: Option<Image>,
    new: Option<Image>,
    txid: u64,
    timestamp: &str,
) -> Vec<String> {
    let change = |operation, key: &str, value: Option<&str>, old_value: Option<&str>| {
        state_change::change_message(&Change {
            entity_type: &capture.row.entity_type,
            key,
            operation,
            value,
            old_value,
            txid,
            timestamp,
        })
    };
    match (old, new) {
        (None, None) => vec![],
        (None, Some(n)) => vec![change(Operation::Insert, &n.key, Some(&n.json), None)],
        (Some(o), None) => vec![change(Operation::Delete, &o.key, None, Some(&o.json))],
        (Some(o), Some(n)) if o.key == n.key => {
            vec![change(Operation::Update, &n.key, Some(&n.json), Some(&o.json))]
        }
        (Some(o), Some(n)) => vec![
            change(Operation::Delete, &o.key, None, Some(&o.json)),
            change(Operation::Insert, &n.key, Some(&n.json), None),
        ],
    }
}

/// Appends `messages` to the capture's stream in this transaction, as the
/// extension's owner (the writer of the table needs no stream privilege).
fn write(capture: &Capture, messages: &[String]) -> DsResult<()> {
    let owner = capture.owner;
    if messages.is_empty() {
        return Ok(());
    }
    as_role(owner, false, || {
        enqueue::enqueue_as(&capture.row.path, enqueue::Payload::BuiltJson(messages), Some(owner))
    })
    .map_err(|e| match e {
        DsError::NotFound(_) | DsError::Gone(_) | DsError::Closed { .. } => {
            DsError::CaptureTarget(format!(
                "table {:?} is captured into stream {:?}, which cannot take its changes ({e}); \
                     run ds.uncapture on the table, or re-create the stream",
                capture.row.entity_type, capture.row.path
            ))
        }
        other => other,
    })
}

fn extension_owner() -> DsResult<pg_sys::Oid> {
    // The trigger function belongs to the extension's owner: read it as them.
    Spi::connect(acl::extension_owner)
}

/// The row and TRUNCATE trigger of every captured table.
#[pg_trigger]
fn capture_trigger<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    if let Err(e) = fire(trigger) {
        raise(e);
    }
    Ok(None)
}

fn fire(trigger: &PgTrigger<'_>) -> DsResult<()> {
    let data = trigger.trigger_data();
    // SAFETY: a valid relation of a firing trigger.
    let (relid, desc) = unsafe { ((*data.tg_relation).rd_id, (*data.tg_relation).rd_att) };
    let event = data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK;
    let Some(capture) = load(relid)? else {
        return Err(DsError::CaptureTarget(format!(
            "trigger {:?} fired for a table that is not captured (ds.capture); drop the trigger",
            trigger.name().unwrap_or("?")
        )));
    };
    if event == pg_sys::TRIGGER_EVENT_TRUNCATE {
        return write(&capture, &[state_change::control_message(Control::Reset)]);
    }
    if data.tg_event & pg_sys::TRIGGER_EVENT_ROW == 0 {
        return Ok(());
    }
    let (old, new) = with_output_settings(|| -> DsResult<_> {
        // SAFETY: tuples of a row trigger, valid for the call.
        let (old, new) = unsafe {
            match event {
                pg_sys::TRIGGER_EVENT_INSERT => (None, Some(row_json(data.tg_trigtuple, desc))),
                pg_sys::TRIGGER_EVENT_DELETE => (Some(row_json(data.tg_trigtuple, desc)), None),
                _ => (
                    Some(row_json(data.tg_trigtuple, desc)),
                    Some(row_json(data.tg_newtuple, desc)),
                ),
            }
        };
        let old = old.map(|(j, d)| image(&capture, j, d)).transpose()?.flatten();
        let new = new.map(|(j, d)| image(&capture, j, d)).transpose()?.flatten();
        Ok((old, new))
    })?;
    // SAFETY: plain reads of the transaction's state.
    let (txid, now) = unsafe {
        (pg_sys::GetTopFullTransactionId().value, pg_sys::GetCurrentStatementStartTimestamp())
    };
    let timestamp = state_change::rfc3339_from_pg_micros(now);
    write(&capture, &row_messages(&capture, old, new, txid, &timestamp))
}

/// Captures `tbl`'s changes into the JSON stream at `path` (created if
/// absent); returns the stream's offset after the snapshot.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn capture(
    tbl: Option<PgRelation>,
    path: Option<&str>,
    entity_type: default!(Option<&str>, "NULL"),
    columns: default!(Option<Vec<String>>, "NULL"),
    row_filter: default!(Option<&str>, "NULL"),
    key_expression: default!(Option<&str>, "NULL"),
) -> Result<String, ErrorReport> {
    let tbl = tbl.ok_or(DsError::NullArgument("tbl"))?;
    let path = path.ok_or(DsError::NullArgument("path"))?;
    let request =
        Request { relid: tbl.oid(), path, entity_type, columns, row_filter, key_expression };
    drop(tbl);
    Ok(start_capture(request)?)
}

struct Request<'a> {
    relid: pg_sys::Oid,
    path: &'a str,
    entity_type: Option<&'a str>,
    columns: Option<Vec<String>>,
    row_filter: Option<&'a str>,
    key_expression: Option<&'a str>,
}

fn invalid(msg: String) -> DsError {
    DsError::Invalid(ds_core::Error::InvalidArguments(msg))
}

fn start_capture(req: Request<'_>) -> DsResult<String> {
    storage::require_primary("ds.capture")?;
    ds_core::limits::validate_path(req.path)?;
    let me = acl::caller();
    let (capture, info, reused) = Spi::connect_mut(|client| -> DsResult<_> {
        let info = store::table_info(client, req.relid)?;
        if info.relkind != b'r' as i8 {
            return Err(invalid(format!(
                "{} is not a plain table: only ordinary tables can be captured \
                 (partitioned tables, views and foreign tables cannot)",
                info.name
            )));
        }
        // What CREATE TRIGGER and a full read of the table would need.
        if !store::has_table_privileges(client, me, req.relid, "TRIGGER, SELECT")? {
            return Err(DsError::TableForbidden(format!(
                "permission denied: role {:?} needs the TRIGGER and SELECT privileges on table {} \
                 to capture it",
                acl::role_name(me),
                info.name
            )));
        }
        if let Some(existing) = store::find_capture(client, req.relid)? {
            return Err(DsError::AlreadyCaptured(format!(
                "table {} is already captured into stream {:?}; run ds.uncapture on it first",
                info.name, existing.path
            )));
        }
        if let Some(cols) = &req.columns {
            if cols.is_empty() {
                return Err(invalid(
                    "columns must name at least one column (or be NULL for all)".into(),
                ));
            }
            if let Some(missing) = cols.iter().find(|c| !info.columns.contains(c)) {
                return Err(invalid(format!("table {} has no column {missing:?}", info.name)));
            }
        }
        let key_columns = match req.key_expression {
            Some(e) if e.trim().is_empty() => {
                return Err(invalid("key_expression must not be empty".into()));
            }
            Some(_) => None,
            None if info.primary_key.is_empty() => {
                return Err(DsError::NoKey(format!(
                    "table {} has no primary key: give a key_expression (an SQL expression over its \
                     columns that identifies a row, e.g. 'id::text')",
                    info.name
                )));
            }
            None => Some(info.primary_key.clone()),
        };
        let entity_type = req.entity_type.unwrap_or(&info.relname);
        if entity_type.is_empty() {
            return Err(invalid("entity_type must not be empty".into()));
        }
        let row = CaptureRow {
            path: req.path.to_owned(),
            entity_type: entity_type.to_owned(),
            columns: req.columns.clone(),
            key_columns,
            key_expression: req.key_expression.map(str::to_owned),
            row_filter: req.row_filter.map(str::to_owned),
            owner_role: me,
        };
        // Writers wait from here to commit: nothing lands between snapshot and triggers.
        store::lock_out_writers(client, &info.name)?;
        // Checks the path privileges (Create if absent) and the content type.
        let tail: String = client
            .update(
                "SELECT next_offset FROM ds.create($1, 'application/json')",
                None,
                &[req.path.into()],
            )?
            .first()
            .get_one()?
            .unwrap_or_default();
        let reused = ds_core::Offset::parse(&tail).is_ok_and(|o| o != ds_core::Offset::ZERO);
        store::create_triggers(client, &info.name)?;
        store::insert_capture(client, req.relid, &row)?;
        Ok((row, info, reused))
    })?;
    snapshot(&capture, &info, me, reused)
}

/// Appends `snapshot-start`, one insert per row that passes the filter, and
/// `snapshot-end` (after a `reset` when the stream already held messages:
/// rows deleted while the table was not captured must not linger in a
/// client's state), in bounded chunks (one INSERT each, so time is linear in
/// the rows). The table's writers are locked out, so this is exactly the
/// state the triggers continue from.
fn snapshot(
    capture: &CaptureRow,
    info: &store::TableInfo,
    caller: pg_sys::Oid,
    reused: bool,
) -> DsResult<String> {
    let query = store::snapshot_query(
        &info.name,
        capture.key_expression.as_deref(),
        capture.row_filter.as_deref(),
    );
    let key_names: Vec<&str> = capture.key_columns.iter().flatten().map(String::as_str).collect();
    let columns: Option<Vec<&str>> =
        capture.columns.as_ref().map(|c| c.iter().map(String::as_str).collect());
    // SAFETY: plain reads of the transaction's state.
    let (txid, now) = unsafe {
        (pg_sys::GetTopFullTransactionId().value, pg_sys::GetCurrentStatementStartTimestamp())
    };
    let timestamp = state_change::rfc3339_from_pg_micros(now);
    let owner = extension_owner()?;
    let mut chunk = Vec::new();
    if reused {
        chunk.push(state_change::control_message(Control::Reset));
    }
    chunk.push(state_change::control_message(Control::SnapshotStart));
    let mut bytes = 0usize;
    let mut tail = String::new();
    let flush = |chunk: &mut Vec<String>, tail: &mut String| -> DsResult<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let body = format!("[{}]", chunk.join(","));
        *tail = crate::append::simple_append_as(&capture.path, body.as_bytes(), true, Some(owner))?;
        chunk.clear();
        Ok(())
    };
    Spi::connect(|client| -> DsResult<()> {
        // The query runs as the capture's author: its filter and key
        // expression never get more rights than that role has.
        let mut cursor = as_role(caller, true, || client.try_open_cursor(query.as_str(), &[]))
            .map_err(|e| {
                invalid(format!("the capture's row filter or key expression failed: {e}"))
            })?;
        loop {
            let rows = with_output_settings(|| {
                as_role(caller, true, || cursor.fetch(SNAPSHOT_CHUNK_ROWS as i64))
            })?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let json: String = row.get(1)?.unwrap_or_default();
                let expression_key: Option<String> = row.get(2)?;
                let image = Row::parse(&json)?;
                let key = match expression_key {
                    Some(k) if !k.is_empty() => k,
                    _ if capture.key_expression.is_some() => {
                        return Err(invalid(format!(
                            "the key expression {:?} gave NULL or an empty key for a row of {}",
                            capture.key_expression.as_deref().unwrap_or_default(),
                            info.name
                        )));
                    }
                    _ => image.key(&key_names)?,
                };
                let value = image.project(columns.as_deref());
                let m = state_change::change_message(&Change {
                    entity_type: &capture.entity_type,
                    key: &key,
                    operation: Operation::Insert,
                    value: Some(&value),
                    old_value: None,
                    txid,
                    timestamp: &timestamp,
                });
                bytes += m.len();
                chunk.push(m);
                if chunk.len() >= SNAPSHOT_CHUNK_ROWS || bytes >= SNAPSHOT_CHUNK_BYTES {
                    flush(&mut chunk, &mut tail)?;
                    bytes = 0;
                }
            }
        }
        Ok(())
    })?;
    chunk.push(state_change::control_message(Control::SnapshotEnd));
    flush(&mut chunk, &mut tail)?;
    Ok(tail)
}

/// Stops capturing `tbl` (drops its triggers); the stream stays. False if
/// it was not captured.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn uncapture(tbl: PgRelation) -> Result<bool, ErrorReport> {
    let relid = tbl.oid();
    drop(tbl);
    Ok(stop_capture(relid)?)
}

fn stop_capture(relid: pg_sys::Oid) -> DsResult<bool> {
    storage::require_primary("ds.uncapture")?;
    let me = acl::caller();
    Spi::connect_mut(|client| {
        let info = store::table_info(client, relid)?;
        let Some(existing) = store::find_capture(client, relid)? else { return Ok(false) };
        if existing.owner_role != me && !store::has_table_privileges(client, me, relid, "TRIGGER")?
        {
            return Err(DsError::TableForbidden(format!(
                "permission denied: role {:?} needs the TRIGGER privilege on table {} to stop its capture",
                acl::role_name(me),
                info.name
            )));
        }
        store::drop_triggers(client, &info.name)?;
        store::delete_capture(client, relid)
    })
}

/// The captures whose tables the caller may read (all of them for
/// superusers and the extension's owner).
#[pg_extern(security_definer, stable)]
#[search_path(pg_catalog, pg_temp)]
fn list_captures() -> Result<
    TableIterator<
        'static,
        (
            name!(tbl, String),
            name!(path, String),
            name!(entity_type, String),
            name!(columns, Option<Vec<String>>),
            name!(key_expression, Option<String>),
            name!(row_filter, Option<String>),
            name!(owner_role, String),
        ),
    >,
    ErrorReport,
> {
    let me = acl::caller();
    let rows = Spi::connect(|client| store::list_captures(client, me))?;
    Ok(TableIterator::new(rows.into_iter().map(|(tbl, c)| {
        (
            tbl,
            c.path,
            c.entity_type,
            c.columns,
            c.key_expression,
            c.row_filter,
            acl::role_name(c.owner_role),
        )
    })))
}
