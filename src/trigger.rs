//! The stamping trigger (`identity_merge.stamp_event`, BEFORE INSERT FOR EACH ROW, put on a
//! table by `mp_attach`). Per row it applies an identity event the row carries (original
//! projects), then writes the canonical distinct_id into the canonical column, leaving the
//! sent distinct_id as it is. Refused identity events are recorded, never raised.
//!
//! Hot path: everything that does not change per row (trigger arguments, column numbers, the
//! project) is worked out once per statement; ids are answered from the backend's cache
//! (cache.rs) or, on a miss, by a direct index probe (probe.rs): no SPI, no planning per row.

use std::cell::RefCell;
use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::{FromDatum, IntoDatum, PgTupleDesc};

use crate::error::IdentityError;
use crate::store::{self, Mode, Project, Rejection};

/// What one statement's rows share.
struct StatementContext {
    key: (pg_sys::Oid, pg_sys::Oid, u32, (u32, u32)),
    project: Project,
    distinct_att: i32,
    canonical_att: i32,
    event_att: Option<i32>,
    properties_att: Option<i32>,
    /// Simplified projects: columns named `$device_id` and `$user_id`, when the table has them.
    device_att: Option<i32>,
    user_att: Option<i32>,
    /// Set when this statement just applied an identity event: the next lookup must take a
    /// new snapshot to see it (the statement's own snapshot predates it).
    renew: bool,
    /// `cache::epochs()` when the context was built: a later statement on the same table and
    /// trigger reuses it while they are unchanged (single-row INSERTs pay no set-up).
    epochs: (u64, u64),
}

thread_local! {
    static CONTEXT: RefCell<Option<StatementContext>> = const { RefCell::new(None) };
}

#[derive(Debug)]
pub struct StampError(String);
impl std::fmt::Display for StampError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// 1-based attribute number of a live column, or None.
unsafe fn attnum(tupdesc: pg_sys::TupleDesc, name: &str) -> Option<i32> {
    let desc = PgTupleDesc::from_pg_unchecked(tupdesc);
    for (i, att) in desc.iter().enumerate() {
        if !att.is_dropped() && att.name() == name {
            return Some(i as i32 + 1);
        }
    }
    None
}

unsafe fn build_context(
    td: &pg_sys::TriggerData,
    key: (pg_sys::Oid, pg_sys::Oid, u32, (u32, u32)),
) -> StatementContext {
    let trigger = &*td.tg_trigger;
    let nargs = trigger.tgnargs as usize;
    let args: Vec<String> = (0..nargs)
        .map(|i| {
            CStr::from_ptr(*trigger.tgargs.add(i))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    if args.len() != 3 {
        error!("identity_merge.stamp_event expects 3 trigger arguments (project, distinct_id column, canonical column); attach tables with mp_attach");
    }
    let project = store::project(Some(&args[0])).unwrap_or_else(|e| crate::error::raise(e));
    let tupdesc = (*td.tg_relation).rd_att;
    let distinct_att = attnum(tupdesc, &args[1]).unwrap_or_else(|| {
        error!(
            "identity_merge: column {:?} not found; re-attach the table with mp_attach",
            args[1]
        )
    });
    let canonical_att = attnum(tupdesc, &args[2]).unwrap_or_else(|| {
        error!(
            "identity_merge: column {:?} not found; re-attach the table with mp_attach",
            args[2]
        )
    });
    let event_att = attnum(tupdesc, "event");
    let properties_att = attnum(tupdesc, "properties");
    StatementContext {
        key,
        project,
        distinct_att,
        canonical_att,
        event_att,
        properties_att,
        device_att: attnum(tupdesc, "$device_id"),
        user_att: attnum(tupdesc, "$user_id"),
        renew: false,
        epochs: crate::cache::epochs(),
    }
}

unsafe fn get_attr<T: FromDatum>(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    att: i32,
) -> Option<T> {
    let mut is_null = false;
    let datum = pg_sys::heap_getattr(tuple, att, tupdesc, &mut is_null);
    T::from_datum(datum, is_null)
}

#[pg_schema]
mod identity_merge {
    use super::*;

    /// BEFORE INSERT row trigger; arguments: project token, distinct_id column, canonical column.
    #[pg_trigger]
    fn stamp_event<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, StampError> {
        unsafe { stamp(trigger) }
    }
}

unsafe fn stamp<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, StampError> {
    let td = trigger.trigger_data();
    let event = td.tg_event;
    let is_row = event & pg_sys::TRIGGER_EVENT_ROW != 0;
    let is_before = event & pg_sys::TRIGGER_EVENT_TIMINGMASK == pg_sys::TRIGGER_EVENT_BEFORE;
    let is_insert = event & pg_sys::TRIGGER_EVENT_OPMASK == pg_sys::TRIGGER_EVENT_INSERT;
    if !(is_row && is_before && is_insert) {
        return Err(StampError(
            "identity_merge.stamp_event must be a BEFORE INSERT FOR EACH ROW trigger".into(),
        ));
    }
    let relid = (*td.tg_relation).rd_id;
    let snapshot = pg_sys::GetActiveSnapshot();
    let curcid = if snapshot.is_null() {
        0
    } else {
        (*snapshot).curcid
    };
    let statement = (curcid, pg_sys::GetCurrentSubTransactionId());
    let key = (
        relid,
        (*td.tg_trigger).tgoid,
        crate::probe::local_xid(),
        statement,
    );
    let tupdesc = (*td.tg_relation).rd_att;
    let tuple = td.tg_trigtuple;

    CONTEXT.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.as_ref().map(|c| c.key) != Some(key) {
            // A new statement: see what other sessions changed before it started.
            crate::cache::accept_invalidations();
            let reusable = slot.as_ref().is_some_and(|c| {
                (c.key.0, c.key.1) == (key.0, key.1) && c.epochs == crate::cache::epochs()
            });
            if reusable {
                let ctx = slot.as_mut().unwrap();
                ctx.key = key;
                ctx.renew = false;
                // The session's anon_id_format may have changed since.
                ctx.project.refresh();
            } else {
                *slot = Some(build_context(td, key));
            }
        }
        let ctx = slot.as_mut().unwrap();

        // Simplified projects may fill a NULL distinct_id from $user_id / $device_id.
        let filled_distinct: Option<pg_sys::Datum> =
            apply_row_event(ctx, tuple, tupdesc, relid).and_then(|d| d.as_str().into_datum());

        let mut is_null = false;
        let mut distinct_datum =
            pg_sys::heap_getattr(tuple, ctx.distinct_att, tupdesc, &mut is_null);
        if let Some(d) = filled_distinct {
            distinct_datum = d;
            is_null = false;
        }
        // The canonical id as a datum: the distinct_id's own datum when the id is unknown.
        let canonical: Option<pg_sys::Datum> = if is_null {
            None
        } else {
            let id = text_bytes(distinct_datum);
            let project_id = ctx.project.id;
            // A cache hit as a datum (pointing into the cache, which stays as it is until the
            // tuple is formed below).
            let cached = || {
                let mut out = None;
                crate::cache::get(project_id, id, |c| {
                    out = Some(c.map_or(distinct_datum, |c| c.datum()));
                });
                out
            };
            let mut out = cached();
            let budget = match out {
                Some(_) => None,
                None => crate::cache::load_budget(project_id, || {
                    crate::probe::identities_estimate(statement)
                }),
            };
            if let Some(budget) = budget {
                // Many ids missed: reading the whole project may cost less than probing on.
                let renew = ctx.renew;
                crate::cache::load(project_id, budget, |put| {
                    let mut whole = true;
                    crate::probe::each_identity(statement, renew, project_id, |id, canonical| {
                        whole = put(text_bytes(id), text_bytes(canonical));
                        whole
                    });
                    whole
                });
                ctx.renew = false;
                out = cached();
            }
            if out.is_none() {
                let mut found: Option<crate::cache::Canonical> = None;
                crate::probe::canonical(
                    crate::probe::Use::Stamp,
                    statement,
                    ctx.renew,
                    project_id,
                    distinct_datum,
                    |d| {
                        found = d.map(|d| crate::cache::Canonical::new(text_bytes(d)));
                    },
                );
                ctx.renew = false;
                crate::cache::put(project_id, id, found.as_ref().map(|c| c.bytes()));
                out = Some(match &found {
                    // The datum must outlive `found`: a copy.
                    Some(c) => c.bytes().into_datum().unwrap(),
                    None => distinct_datum,
                });
            }
            out
        };

        let mut values = [canonical.unwrap_or(pg_sys::Datum::from(0)), distinct_datum];
        let mut nulls = [canonical.is_none(), false];
        let mut cols = [ctx.canonical_att, ctx.distinct_att];
        let ncols = if filled_distinct.is_some() { 2 } else { 1 };
        let new_tuple = pg_sys::heap_modify_tuple_by_cols(
            tuple,
            tupdesc,
            ncols,
            cols.as_mut_ptr(),
            values.as_mut_ptr(),
            nulls.as_mut_ptr(),
        );
        Ok(Some(PgHeapTuple::from_heap_tuple(
            PgTupleDesc::from_pg_unchecked(tupdesc),
            new_tuple,
        )))
    })
}

/// Applies `$identify` / `$create_alias` / `$merge` rows; records what it refuses.
/// Applies the row's identity meaning (`store::apply_event`): identity events in Original
/// projects when the table has `event` and `properties` columns, device/user links in Simplified
/// ones. Records refusals with the row; returns the distinct_id to fill in when the row's is NULL.
unsafe fn apply_row_event(
    ctx: &mut StatementContext,
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    relid: pg_sys::Oid,
) -> Option<String> {
    let (device_col, user_col) = match ctx.project.mode {
        Mode::Original if ctx.event_att.is_none() || ctx.properties_att.is_none() => return None,
        // Most rows are ordinary events: tell them by the event name's bytes, without copying.
        Mode::Original if !is_identity_event(tuple, tupdesc, ctx.event_att.unwrap()) => {
            return None
        }
        Mode::Original => (None, None),
        Mode::Simplified => (
            ctx.device_att
                .and_then(|a| get_attr::<String>(tuple, tupdesc, a)),
            ctx.user_att
                .and_then(|a| get_attr::<String>(tuple, tupdesc, a)),
        ),
    };
    let event: Option<String> = ctx.event_att.and_then(|a| get_attr(tuple, tupdesc, a));
    let properties_att = ctx.properties_att;
    let properties = || -> serde_json::Value {
        properties_att
            .and_then(|a| get_attr::<pgrx::JsonB>(tuple, tupdesc, a))
            .map(|j| j.0)
            .unwrap_or(serde_json::Value::Null)
    };
    // Read only when a refusal is recorded or a Simplified row may need its distinct_id filled.
    let distinct = || -> Option<String> { get_attr(tuple, tupdesc, ctx.distinct_att) };
    let project = &ctx.project;
    let outcome = store::apply_event(
        project,
        event.as_deref(),
        &properties,
        device_col,
        user_col,
        |err, op, a, b| {
            let event = event.as_deref().unwrap_or_default();
            reject(
                project,
                err,
                op,
                a,
                b,
                relid,
                distinct(),
                event,
                properties(),
            )
        },
    )
    // A lock cycle with another transaction is transient: abort this INSERT with 40001 so the
    // loader retries it, rather than recording the event as refused.
    .unwrap_or_else(|err| crate::error::raise(err));
    if outcome.changed {
        // The cache already knows (store::apply redirects it); the probe's snapshot does not.
        ctx.renew = true;
    }
    outcome.distinct_id.filter(|_| distinct().is_none())
}

/// The bytes of a text datum (valid as long as the datum is).
unsafe fn text_bytes<'a>(datum: pg_sys::Datum) -> &'a [u8] {
    let text = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
    pgrx::varlena::varlena_to_byte_slice(text)
}

/// Whether the row's event names an identity operation (`ingest::identity_op`).
unsafe fn is_identity_event(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    att: i32,
) -> bool {
    let mut is_null = false;
    let datum = pg_sys::heap_getattr(tuple, att, tupdesc, &mut is_null);
    !is_null
        && std::str::from_utf8(text_bytes(datum))
            .is_ok_and(|e| crate::ingest::identity_op(e).is_some())
}

#[allow(clippy::too_many_arguments)]
fn reject(
    project: &Project,
    err: &IdentityError,
    op: &str,
    a: Option<&str>,
    b: Option<&str>,
    relid: pg_sys::Oid,
    distinct: Option<String>,
    event: &str,
    props: serde_json::Value,
) {
    let row = serde_json::json!({ "distinct_id": distinct, "event": event, "properties": props });
    store::record_rejection(Rejection {
        project_id: Some(project.id),
        reason: err.reason().unwrap_or(crate::error::Reason::MalformedEvent),
        message: err.message(),
        operation: Some(op),
        id_a: a,
        id_b: b,
        source_table: Some(relid),
        source_row: Some(pgrx::JsonB(row)),
    });
}
