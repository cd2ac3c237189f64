//! The stamping trigger (`identity_merge.stamp_event`, BEFORE INSERT OR UPDATE OF the
//! distinct_id column FOR EACH ROW, put on a table by `mp_attach`). Per inserted row it applies
//! an identity event the row carries, then writes the canonical distinct_id into the canonical
//! column, leaving the sent distinct_id as it is; an UPDATE of the distinct_id (also through
//! `INSERT ... ON CONFLICT DO UPDATE`) stamps the new value and applies nothing. Refused
//! identity events are recorded, never raised.
//!
//! Hot path: everything that does not change per row (trigger arguments, column numbers and
//! types, the project) is worked out once per statement; ids are answered from the backend's
//! cache (sync/cache.rs) or, on a miss, by a direct index probe (store/probe.rs): no SPI, no planning per row.
//!
//! Every column is read only after its type was checked when the per-table set-up was built
//! (and that set-up is rebuilt after any relcache invalidation, so an `ALTER TABLE ... TYPE` is
//! seen): ids are text or varchar, `properties` jsonb, json or text. A column of another type
//! is refused with 42804 (mp_attach refuses it up front), never read as something it is not.

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum, PgTupleDesc};

use crate::core::attachment::TriggerArgs;
use crate::core::columns::{ColumnKind, PropertiesRead};
use crate::core::error::IdentityError;
use crate::core::ingest;
use crate::core::rules::Project;
use crate::core::Mode;

/// How the `properties` column holds its JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PropertiesKind {
    Jsonb,
    /// json, text or varchar: JSON text, parsed here.
    Text,
}

/// A text or varchar column the trigger reads or writes: its number and, for varchar(n), n.
#[derive(Clone, Copy)]
struct TextColumn {
    att: i32,
    max_chars: Option<i32>,
}

/// What one statement's rows share.
struct StatementContext {
    key: (pg_sys::Oid, pg_sys::Oid, u32, (u32, u32)),
    project: Project,
    table: String,
    /// `schema.table`, for provenance.
    qualified_table: String,
    distinct: TextColumn,
    canonical: TextColumn,
    distinct_name: String,
    canonical_name: String,
    event_att: Option<i32>,
    properties: Option<(i32, PropertiesKind)>,
    /// Simplified projects: columns named `$device_id` and `$user_id`, when the table has them.
    device_att: Option<i32>,
    user_att: Option<i32>,
    /// On a Citus shard: the distributed table's name. Identity events are then queued on this
    /// node (store/queue.rs, applied by api/queue.rs), not applied here.
    shard_of: Option<String>,
    /// `cache::epochs()` when the context was built: a later statement on the same table and
    /// trigger reuses it while they are unchanged (single-row INSERTs pay no set-up).
    epochs: (u64, u64),
    /// Rows stamped, stamp cache hits and misses since the counts were last handed to
    /// `sync::stats` (at each new statement and at commit: `count_statement`).
    stamped: Cell<u64>,
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl StatementContext {
    /// Hands the counts to `sync::stats` (this transaction's, published at commit).
    fn hand_over_counts(&self) {
        use crate::sync::stats::{count, Counter};
        let id = self.project.id;
        count(id, Counter::RowsStamped, self.stamped.take());
        count(id, Counter::CacheHits, self.hits.take());
        count(id, Counter::CacheMisses, self.misses.take());
    }
}

/// At commit: the last statement's counts to `sync::stats` (api/hooks.rs).
pub fn count_statement() {
    CONTEXT.with(|slot| {
        if let Ok(slot) = slot.try_borrow() {
            if let Some(ctx) = slot.as_ref() {
                ctx.hand_over_counts();
            }
        }
    });
}

thread_local! {
    static CONTEXT: RefCell<Option<StatementContext>> = const { RefCell::new(None) };
    /// The buffers of `Columns`, kept from one row to the next.
    static COLUMNS: RefCell<Columns> = const { RefCell::new(Columns::EMPTY) };
}

/// The row's columns, deformed once: the trigger reads its ids and event name from here and
/// forms the new row from them with the stamp set. One call into PostgreSQL instead of one per
/// column read (each through pgrx's guard) plus `heap_modify_tuple_by_cols`, which deforms the
/// row again and allocates its arrays every time.
struct Columns {
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
}

impl Columns {
    const EMPTY: Columns = Columns {
        values: Vec::new(),
        nulls: Vec::new(),
    };

    /// The buffers kept from the last row (or new ones, if they are in use or were lost with an
    /// error).
    fn take() -> Columns {
        COLUMNS
            .with(|c| {
                c.try_borrow_mut()
                    .map(|mut c| std::mem::replace(&mut *c, Columns::EMPTY))
            })
            .unwrap_or(Columns::EMPTY)
    }

    /// Keeps the buffers for the next row.
    fn give_back(self) {
        COLUMNS.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                *c = self;
            }
        })
    }

    /// Reads every column of `tuple`.
    ///
    /// # Safety
    /// `tuple` must be a valid heap tuple of the descriptor `tupdesc`; the datums read stay
    /// valid as long as the tuple does.
    unsafe fn deform(&mut self, tuple: pg_sys::HeapTuple, tupdesc: pg_sys::TupleDesc) {
        // SAFETY: the caller's contract; natts is the descriptor's column count.
        unsafe {
            let natts = (*tupdesc).natts.max(0) as usize;
            self.values.clear();
            self.values.resize(natts, pg_sys::Datum::from(0));
            self.nulls.clear();
            self.nulls.resize(natts, true);
            pg_sys::heap_deform_tuple(
                tuple,
                tupdesc,
                self.values.as_mut_ptr(),
                self.nulls.as_mut_ptr(),
            );
        }
    }

    /// Column `att` (1-based): None when NULL.
    fn get(&self, att: i32) -> Option<pg_sys::Datum> {
        let i = att as usize - 1;
        (!self.nulls[i]).then(|| self.values[i])
    }

    /// Sets column `att` (1-based) for `form`: None is NULL.
    fn set(&mut self, att: i32, value: Option<pg_sys::Datum>) {
        let i = att as usize - 1;
        self.values[i] = value.unwrap_or(pg_sys::Datum::from(0));
        self.nulls[i] = value.is_none();
    }

    /// A new tuple of these columns, with `tuple`'s identity (what `heap_modify_tuple_by_cols`
    /// copies over: ctid, self pointer, table).
    ///
    /// # Safety
    /// `tuple` must be the tuple these columns were deformed from, `tupdesc` its descriptor,
    /// and every datum set since valid for its column's type.
    unsafe fn form(
        &mut self,
        tuple: pg_sys::HeapTuple,
        tupdesc: pg_sys::TupleDesc,
    ) -> pg_sys::HeapTuple {
        // SAFETY: the caller's contract; heap_form_tuple copies the datums into a new tuple.
        unsafe {
            let formed =
                pg_sys::heap_form_tuple(tupdesc, self.values.as_mut_ptr(), self.nulls.as_mut_ptr());
            (*(*formed).t_data).t_ctid = (*(*tuple).t_data).t_ctid;
            (*formed).t_self = (*tuple).t_self;
            (*formed).t_tableOid = (*tuple).t_tableOid;
            formed
        }
    }
}

/// A live column: its 1-based number and its catalog row.
fn column<'a>(
    desc: &'a PgTupleDesc<'_>,
    name: &str,
) -> Option<(i32, &'a pg_sys::FormData_pg_attribute)> {
    desc.iter()
        .enumerate()
        .find(|(_, att)| !att.is_dropped() && att.name() == name)
        .map(|(i, att)| (i as i32 + 1, att))
}

/// A column that must hold ids: text or varchar (not a domain: the trigger writes stamps
/// without running a domain's checks).
fn text_column(
    table: &str,
    name: &str,
    found: Option<(i32, &pg_sys::FormData_pg_attribute)>,
) -> Result<Option<TextColumn>, IdentityError> {
    let Some((att, form)) = found else {
        return Ok(None);
    };
    let kind = ColumnKind::Id;
    if !kind.accepts(crate::pg::column_type(form.atttypid)) {
        return Err(IdentityError::WrongColumnType {
            table: table.to_string(),
            column: name.to_string(),
            found: crate::pg::type_name(form.atttypid),
            expected: kind.expected(),
        });
    }
    let max_chars = (form.atttypid == pg_sys::VARCHAROID && form.atttypmod >= 0)
        .then(|| form.atttypmod - pg_sys::VARHDRSZ as i32);
    Ok(Some(TextColumn { att, max_chars }))
}

/// Works out the per-table facts, checking every column the trigger will touch.
fn build_context(
    trigger: &pgrx::PgTrigger<'_>,
    key: (pg_sys::Oid, pg_sys::Oid, u32, (u32, u32)),
) -> Result<StatementContext, IdentityError> {
    let listed = trigger
        .extra_args()
        .map_err(|e| IdentityError::TriggerMisuse {
            problem: format!("has unreadable arguments ({e})"),
        })?;
    let args = TriggerArgs::parse(&listed)?;
    // Simplified projects read the device and user ids from columns of these names.
    let (device_name, user_name) = (
        args.device_column_or_default(),
        args.user_column_or_default(),
    );
    let project = crate::engine::project(Some(&args.project))?;
    let table = trigger
        .table_name()
        .unwrap_or_else(|_| format!("{:?}", key.0));
    let desc = trigger
        .relation()
        .map_err(|e| IdentityError::TriggerMisuse {
            problem: format!("cannot read its table ({e})"),
        })?;
    let desc = desc.tuple_desc();
    let required = |name: &str| -> Result<TextColumn, IdentityError> {
        text_column(&table, name, column(&desc, name))?.ok_or_else(|| {
            IdentityError::MissingColumn {
                table: table.clone(),
                column: name.to_string(),
            }
        })
    };
    let distinct = required(&args.distinct_column)?;
    let canonical = required(&args.canonical_column)?;
    if let Some((_, form)) = column(&desc, &args.canonical_column) {
        if form.attgenerated != 0 {
            return Err(IdentityError::TriggerMisuse {
                problem: format!(
                    "cannot write the generated column {:?} of {table}",
                    args.canonical_column
                ),
            });
        }
    }
    let optional =
        |name: &str| text_column(&table, name, column(&desc, name)).map(|c| c.map(|c| c.att));
    // Device and user columns named at attach must still be there: one renamed or dropped would
    // otherwise silently stop linking (the default names are optional).
    for name in [&args.device_column, &args.user_column]
        .into_iter()
        .flatten()
    {
        if column(&desc, name).is_none() {
            return Err(IdentityError::MissingColumn {
                table: table.clone(),
                column: name.clone(),
            });
        }
    }
    let properties = match column(&desc, "properties") {
        None => None,
        Some((att, form)) => Some((
            att,
            match crate::core::columns::properties_read(crate::pg::column_type(form.atttypid)) {
                Some(PropertiesRead::Jsonb) => PropertiesKind::Jsonb,
                Some(PropertiesRead::Text) => PropertiesKind::Text,
                None => {
                    return Err(IdentityError::WrongColumnType {
                        table: table.clone(),
                        column: "properties".into(),
                        found: crate::pg::type_name(form.atttypid),
                        expected: ColumnKind::Properties.expected(),
                    })
                }
            },
        )),
    };
    Ok(StatementContext {
        key,
        distinct,
        canonical,
        event_att: match crate::core::columns::event_column(|n| column(&desc, n).is_some()) {
            Some(name) => optional(name)?,
            None => None,
        },
        properties,
        device_att: optional(device_name)?,
        user_att: optional(user_name)?,
        shard_of: crate::sync::placement::shard_of(key.0, &table),
        epochs: crate::sync::cache::epochs(),
        stamped: Cell::new(0),
        hits: Cell::new(0),
        misses: Cell::new(0),
        qualified_table: format!("{}.{}", trigger.table_schema().unwrap_or_default(), table),
        distinct_name: args.distinct_column,
        canonical_name: args.canonical_column,
        project,
        table,
    })
}

/// The row's properties as JSON (Null when NULL or absent; JSON text that does not parse is
/// reported as a string, so the refusal it leads to names the problem).
///
/// # Safety
/// `properties` must come from this table's checked context, `row` hold a row of that table.
unsafe fn get_properties(
    row: &Columns,
    properties: Option<(i32, PropertiesKind)>,
) -> serde_json::Value {
    let Some((att, kind)) = properties else {
        return serde_json::Value::Null;
    };
    let Some(datum) = row.get(att) else {
        return serde_json::Value::Null;
    };
    // SAFETY: the column's type was checked to be jsonb (kind Jsonb) or a text type (Text).
    unsafe {
        match kind {
            PropertiesKind::Jsonb => pgrx::JsonB::from_datum(datum, false)
                .map(|j| j.0)
                .unwrap_or(serde_json::Value::Null),
            PropertiesKind::Text => ingest::properties_from_text(Some(text_bytes(datum))),
        }
    }
}

#[pg_schema]
mod identity_merge {
    use super::*;

    /// The distinct_id the trigger gives a Simplified project's row that has none (its user id,
    /// else `$device:` and its device id, each only when valid: `core::ingest`), NULL in other
    /// modes. `CALL mp_restamp_all` fills rows loaded before `mp_attach` with it, by this one rule.
    #[pg_extern(stable, parallel_safe)]
    fn _row_distinct_id(
        project: &str,
        device_id: Option<&str>,
        user_id: Option<&str>,
    ) -> Option<String> {
        let project = crate::engine::project(Some(project)).unwrap_or_else(|e| crate::pg::raise(e));
        if project.mode != Mode::Simplified {
            return None;
        }
        ingest::simplified_event(
            &project.settings,
            device_id.map(str::to_string),
            user_id.map(str::to_string),
        )
        .distinct_id
    }

    /// BEFORE INSERT OR UPDATE row trigger; arguments: project token, distinct_id column,
    /// canonical column. Errors are raised with their SQLSTATE (error.rs), never as a panic.
    #[pg_trigger]
    fn stamp_event<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        Ok(stamp(trigger).unwrap_or_else(|e| crate::pg::raise(e)))
    }
}

fn stamp<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, IdentityError> {
    let td = trigger.trigger_data();
    let event = td.tg_event;
    let is_row = event & pg_sys::TRIGGER_EVENT_ROW != 0;
    let is_before = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE;
    let op = event & pg_sys::TRIGGER_EVENT_OPMASK;
    let is_insert = op == pg_sys::TRIGGER_EVENT_INSERT;
    let is_update = op == pg_sys::TRIGGER_EVENT_UPDATE;
    if !(is_row && is_before && (is_insert || is_update)) {
        return Err(IdentityError::TriggerMisuse {
            problem: "must be a BEFORE INSERT OR UPDATE FOR EACH ROW trigger".into(),
        });
    }
    // SAFETY: the trigger manager hands a valid relation, trigger and the row being written
    // (the new row for an UPDATE).
    let (relid, tgoid, tupdesc, tuple, statement) = unsafe {
        (
            (*td.tg_relation).rd_id,
            (*td.tg_trigger).tgoid,
            (*td.tg_relation).rd_att,
            if is_update {
                td.tg_newtuple
            } else {
                td.tg_trigtuple
            },
            (crate::pg::active_command_id(), crate::pg::current_subxact()),
        )
    };
    if is_insert && crate::engine::staged::own_row(relid) {
        // A row of mp_ingest's own INSERT, stamped already (a trigger attached before 0.1.14,
        // without the WHEN that skips it: engine/staged.rs).
        // SAFETY: the row being inserted, valid for the trigger's call.
        return Ok(Some(unsafe {
            PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked(tupdesc), tuple)
        }));
    }
    // SAFETY: reads MyProc of this backend.
    let key = (relid, tgoid, crate::pg::local_xid(), statement);

    CONTEXT.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().map(|c| c.key) != Some(key) {
            if let Some(previous) = slot.as_ref() {
                previous.hand_over_counts();
            }
            // A new statement: see what other sessions changed before it started.
            crate::sync::cache::accept_invalidations();
            let reusable = slot.as_ref().is_some_and(|c| {
                (c.key.0, c.key.1) == (key.0, key.1) && c.epochs == crate::sync::cache::epochs()
            });
            if reusable {
                let ctx = slot.as_mut().unwrap();
                ctx.key = key;
                // The session's anon_id_format may have changed since.
                ctx.project.refresh(crate::pg::guc::anon_id_format_any());
            } else {
                // Dropped first: a failed set-up must not leave the previous table's in place.
                *slot = None;
                *slot = Some(build_context(trigger, key)?);
            }
        }
        let ctx = slot.as_mut().unwrap();
        let mut row = Columns::take();
        // SAFETY: the row being written, with its relation's descriptor.
        unsafe { row.deform(tuple, tupdesc) };

        // Simplified projects may fill a NULL distinct_id from $user_id / $device_id.
        let filled = if is_insert {
            // SAFETY: `row` holds this table's row, the context's columns checked against it.
            unsafe { apply_row_event(ctx, &row, relid, statement)? }
        } else {
            None
        };
        if let (Some(id), Some(max)) = (&filled, ctx.distinct.max_chars) {
            check_length(ctx, &ctx.distinct_name, id.as_bytes(), max)?;
        }
        let filled_distinct: Option<pg_sys::Datum> = filled.as_deref().and_then(|d| d.into_datum());

        // The distinct_id column was checked to be text or varchar.
        let (distinct_datum, is_null) = match (filled_distinct, row.get(ctx.distinct.att)) {
            (Some(d), _) | (None, Some(d)) => (d, false),
            (None, None) => (pg_sys::Datum::from(0), true),
        };
        let ctx = &*ctx;
        ctx.stamped.set(ctx.stamped.get() + 1);
        let row = std::cell::RefCell::new(row);
        // Forms the new row from the canonical id's datum (None: a NULL stamp). It runs while
        // the datum is lent (it may point into the cache, see `with_canonical`).
        let form = |canonical: Option<pg_sys::Datum>| -> Result<pg_sys::HeapTuple, IdentityError> {
            if let (Some(c), Some(max)) = (canonical, ctx.canonical.max_chars) {
                // SAFETY: `c` is a text datum (see with_canonical).
                let bytes = unsafe { text_bytes(c) };
                check_length(ctx, &ctx.canonical_name, bytes, max)?;
            }
            let mut row = row.borrow_mut();
            row.set(ctx.canonical.att, canonical);
            if filled_distinct.is_some() {
                row.set(ctx.distinct.att, Some(distinct_datum));
            }
            // SAFETY: both columns are text or varchar of this descriptor and the datums are
            // text values alive during this call, which copies them into the new tuple; the
            // other columns are the row's own, deformed with this descriptor.
            Ok(unsafe { row.form(tuple, tupdesc) })
        };
        let new_tuple = if is_null {
            form(None)?
        } else {
            // SAFETY: a text datum of this row (or the filled-in one), alive until the trigger
            // returns.
            unsafe { with_canonical(ctx, statement, distinct_datum, |c| form(Some(c))) }??
        };
        row.into_inner().give_back();
        // SAFETY: the new tuple was formed with this relation's descriptor.
        Ok(Some(unsafe {
            PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked(tupdesc), new_tuple)
        }))
    })
}

/// varchar(n) holds at most n characters: a longer stamp is an error (22001), as PostgreSQL
/// raises for a too-long value, never a silently over-long row.
fn check_length(
    ctx: &StatementContext,
    column: &str,
    bytes: &[u8],
    max: i32,
) -> Result<(), IdentityError> {
    if bytes.len() <= max as usize {
        return Ok(());
    }
    // SAFETY: counts the characters of a byte slice in the database encoding.
    let chars =
        unsafe { pg_sys::pg_mbstrlen_with_len(bytes.as_ptr() as *const _, bytes.len() as i32) };
    if chars <= max {
        return Ok(());
    }
    Err(IdentityError::ValueTooLong {
        table: ctx.table.clone(),
        column: column.to_string(),
        value: String::from_utf8_lossy(bytes).into_owned(),
        limit: max,
    })
}

/// Hands `use_it` the canonical id of the text datum `distinct`, as a text datum, and returns
/// what it returns: from the cache, else by a whole-project load or a probe; the id's own datum
/// when the id is unknown. A datum from the cache points into it and is valid only during the
/// call (the cache may change afterwards), which is why it is lent, not returned.
///
/// # Safety
/// `distinct` must be a valid text datum, alive during the call.
unsafe fn with_canonical<R>(
    ctx: &StatementContext,
    statement: (u32, u32),
    distinct: pg_sys::Datum,
    use_it: impl FnOnce(pg_sys::Datum) -> R,
) -> Result<R, IdentityError> {
    // SAFETY: the caller guarantees a valid text datum.
    let id = unsafe { text_bytes(distinct) };
    let project_id = ctx.project.id;
    // While the statement's batch runs, the stored answer may be one the batch changed.
    let use_it = move |d: pg_sys::Datum| -> R {
        // SAFETY: `d` is a text datum: the row's own, the cache's or the probe's.
        match crate::engine::batch::canonical_now(project_id, unsafe { text_bytes(d) }) {
            Some(now) => use_it(now.datum()),
            None => use_it(d),
        }
    };
    let mut use_it = Some(use_it);
    let mut out: Option<R> = None;
    let mut cached = || {
        crate::sync::cache::get(project_id, id, |c| {
            if let Some(f) = use_it.take() {
                out = Some(f(c.map_or(distinct, |c| c.datum())));
            }
        })
    };
    if cached() {
        ctx.hits.set(ctx.hits.get() + 1);
        return Ok(out.take().expect("a cache hit lends the datum once"));
    }
    ctx.misses.set(ctx.misses.get() + 1);
    let mut estimate = Ok(None);
    let budget = crate::sync::cache::load_budget(project_id, || {
        estimate = crate::store::probe::identities_estimate(statement);
        estimate.clone().ok().flatten()
    });
    estimate?;
    if let Some(budget) = budget {
        // Many ids missed: reading the whole project may cost less than probing on.
        let mut scanned = Ok(0);
        crate::sync::cache::load(project_id, budget, |put| {
            let mut whole = true;
            scanned = crate::store::probe::each_identity(statement, project_id, |id, canonical| {
                // SAFETY: the scan hands over text datums valid during each call.
                whole = put(unsafe { text_bytes(id) }, unsafe { text_bytes(canonical) });
                whole
            });
            whole && scanned.is_ok()
        });
        scanned?;
        if cached() {
            return Ok(out.take().expect("a cache hit lends the datum once"));
        }
    }
    let mut found: Option<crate::sync::cache::Canonical> = None;
    // SAFETY: `distinct` is a valid text datum; the probe hands a text datum of the index or
    // heap tuple, valid during the closure, whose bytes are copied there.
    let as_of = unsafe {
        crate::store::probe::canonical(
            crate::store::probe::Use::Stamp,
            statement,
            project_id,
            distinct,
            |d| {
                found = d.map(|d| crate::sync::cache::Canonical::new(text_bytes(d)));
            },
        )
    }?;
    crate::sync::cache::put(project_id, id, found.as_ref().map(|c| c.bytes()), as_of);
    let use_it = use_it.take().expect("not lent yet");
    Ok(match &found {
        // `found` owns its bytes (a copy), alive during the call.
        Some(c) => use_it(c.datum()),
        None => use_it(distinct),
    })
}

/// Applies the row's identity meaning (`store::apply_event`): identity events in Original
/// projects when the table has `event` and `properties` columns, device/user links in Simplified
/// ones. Records refusals with the row; returns the distinct_id to fill in when the row's is NULL.
///
/// # Safety
/// `row` must hold a row of the table `ctx` was built for (its columns' types were checked).
unsafe fn apply_row_event(
    ctx: &mut StatementContext,
    row: &Columns,
    relid: pg_sys::Oid,
    statement: (u32, u32),
) -> Result<Option<String>, IdentityError> {
    // Every read below is of a column whose type was checked (text/varchar for event and ids,
    // one of the properties kinds) when the context was built for this descriptor, in a row of
    // this table (the caller's contract).
    let text = |att: i32| -> Option<String> {
        // SAFETY: a checked text column of this row (see above).
        row.get(att)
            .and_then(|d| unsafe { String::from_datum(d, false) })
    };
    let (device_col, user_col) = match ctx.project.mode {
        Mode::Original | Mode::Legacy => match (ctx.event_att, ctx.properties) {
            // Most rows are ordinary events: tell them by the event name's bytes, without copying.
            (Some(event_att), Some(_))
                // SAFETY: a checked text column of this row (see above).
                if unsafe { is_identity_event(row.get(event_att)) } =>
            {
                (None, None)
            }
            _ => return Ok(None),
        },
        Mode::Simplified => (ctx.device_att.and_then(text), ctx.user_att.and_then(text)),
    };
    let event: Option<String> = ctx.event_att.and_then(text);
    let properties_col = ctx.properties;
    // Read once: the plan reads them, and a refused event's recorded row holds them again.
    let properties_read = std::cell::OnceCell::new();
    let properties = || -> serde_json::Value {
        properties_read
            // SAFETY: the checked properties column of this row (see above).
            .get_or_init(|| unsafe { get_properties(row, properties_col) })
            .clone()
    };
    // Read only when a refusal is recorded or a Simplified row may need its distinct_id filled.
    let distinct_att = ctx.distinct.att;
    let distinct = || -> Option<String> { text(distinct_att) };
    let project = &ctx.project;
    let plan = ingest::plan_event(
        project,
        event.as_deref(),
        &properties,
        device_col.clone(),
        user_col.clone(),
    );
    let fill = plan.distinct_id.clone();
    if let Some(table) = &ctx.shard_of {
        // On a Citus shard the replicated state cannot be written from here: the event waits
        // in this node's queue, committed with the row, for mp_apply_pending.
        if !plan.refusals.is_empty()
            || plan.ignored.is_some()
            || !crate::store::queue::all_together(project, &plan.ops)
        {
            crate::store::queue::queue(crate::store::queue::Queued {
                project_id: project.id,
                events: table,
                distinct_id: distinct(),
                event: event.as_deref(),
                properties: properties(),
                device_id: device_col,
                user_id: user_col,
            });
        }
        return Ok(fill.filter(|_| distinct().is_none()));
    }
    // A retryable conflict (a lock cycle with another transaction) is returned for the caller
    // to raise (40001), so the loader retries the INSERT rather than the event being refused.
    // The join's provenance: the table and enough of the row to find it (its ids and event; the
    // properties stay in the table, where only its readers see them).
    let source = crate::store::Source {
        kind: "trigger",
        detail: serde_json::json!({
            "table": ctx.qualified_table,
            "distinct_id": distinct(),
            "event": event.as_deref(),
        }),
    };
    // Past the statement's first identity events, the rest may go to its batch (batch.rs).
    crate::engine::ingest(project, plan, &source, Some(statement), || {
        if crate::sync::placement::distributed() {
            // The rejections are replicated: this node's oid would name another table, or
            // none, on the others, where row-level security reads it (see api::queue::row_of).
            let row = crate::api::queue::row_of(&ctx.qualified_table, distinct(), event.as_deref());
            (None, row)
        } else {
            let row = serde_json::json!({
                "distinct_id": distinct(),
                "event": event.as_deref().unwrap_or_default(),
                "properties": properties(),
            });
            (Some(relid), row)
        }
    })?;
    Ok(fill.filter(|_| distinct().is_none()))
}

/// The bytes of a text datum (valid as long as the datum is).
///
/// A value stored inline, uncompressed (nearly every id: short or 4-byte header) is read in
/// place; only a compressed or out-of-line one goes through `pg_detoast_datum_packed`. The
/// trigger reads two or three text datums a row, and each call into PostgreSQL from Rust pays
/// pgrx's guard (a `sigsetjmp` and a thread check): about 5% of a cold stream's time.
///
/// # Safety
/// `datum` must be a non-NULL text (or varchar, json) datum.
unsafe fn text_bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    let ptr = datum.cast_mut_ptr::<pg_sys::varlena>();
    // SAFETY: the caller guarantees a varlena, whose first byte says how it is stored; one
    // that is neither compressed nor external is in memory as it is (what
    // pg_detoast_datum_packed would return unchanged); the others are detoasted into memory.
    unsafe {
        use pgrx::varlena::{varatt_is_1b_e, varatt_is_4b_c};
        let text = if varatt_is_1b_e(ptr) || varatt_is_4b_c(ptr) {
            pg_sys::pg_detoast_datum_packed(ptr)
        } else {
            ptr
        };
        pgrx::varlena::varlena_to_byte_slice(text)
    }
}

/// Whether the row's event names an identity operation (`ingest::identity_op`).
///
/// # Safety
/// `event` must be the row's value of a text or varchar column (None when NULL).
unsafe fn is_identity_event(event: Option<pg_sys::Datum>) -> bool {
    // SAFETY: the caller guarantees a text datum of this row (or None for NULL).
    event.is_some_and(|datum| unsafe {
        std::str::from_utf8(text_bytes(datum)).is_ok_and(|e| ingest::identity_op(e).is_some())
    })
}
