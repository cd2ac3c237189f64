//! insert_id deduplication of an attached table (`mp_dedup_insert_id`, sql/mixpanel.sql):
//! Mixpanel's rule for `/import`, one event per insert_id. A BEFORE INSERT row trigger of its
//! own, `identity_merge_dedup` (it fires before `identity_merge_stamp`, trigger names sorting
//! so): a row whose insert_id the table (the root of a partitioned one) already holds is
//! skipped and recorded in rejections with the whole row, never lost. Tables without it never
//! run any of this: the stamping trigger is untouched.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;

use crate::core::error::IdentityError;
use crate::pg::OrBug;

thread_local! {
    /// The probe of each (table, insert_id column), prepared once per backend (PostgreSQL
    /// replans it when the table changes).
    static PROBES: RefCell<HashMap<(pg_sys::Oid, String), std::rc::Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
}

#[pg_schema]
mod identity_merge {
    use super::*;

    /// BEFORE INSERT row trigger; arguments: project token, insert_id column.
    #[pg_trigger]
    fn dedup_insert_id<'a>(
        trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        Ok(dedup(trigger).unwrap_or_else(|e| crate::pg::raise(e)))
    }
}

fn misuse(problem: &str) -> IdentityError {
    IdentityError::TriggerMisuse {
        problem: format!("(identity_merge.dedup_insert_id) {problem}"),
    }
}

/// The probe of `relid`'s insert_id column: is there a row with this insert_id.
fn probe(relid: pg_sys::Oid, column: &str) -> std::rc::Rc<OwnedPreparedStatement> {
    let key = (relid, column.to_string());
    if let Some(p) = PROBES.with(|p| p.borrow().get(&key).cloned()) {
        return p;
    }
    let table: String = Spi::get_one_with_args(
        "SELECT coalesce(pg_catalog.pg_partition_root($1), $1)::pg_catalog.regclass::pg_catalog.text",
        &[relid.into()],
    )
    .or_bug("naming the table")
    .unwrap_or_default();
    let sql = format!(
        "SELECT true FROM {table} WHERE {}::pg_catalog.text OPERATOR(pg_catalog.=) $1 LIMIT 1",
        pgrx::spi::quote_identifier(column)
    );
    let plan = Spi::connect(|c| {
        c.prepare(&sql, &[PgOid::BuiltIn(pg_sys::BuiltinOid::TEXTOID)])
            .or_bug("preparing the insert_id probe")
            .keep()
    });
    let plan = std::rc::Rc::new(plan);
    PROBES.with(|p| p.borrow_mut().insert(key, plan.clone()));
    plan
}

fn dedup<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, IdentityError> {
    let td = trigger.trigger_data();
    let event = td.tg_event;
    if event & pg_sys::TRIGGER_EVENT_ROW == 0
        || event & pg_sys::TRIGGER_EVENT_TIMINGMASK != pg_sys::TRIGGER_EVENT_BEFORE
        || event & pg_sys::TRIGGER_EVENT_OPMASK != pg_sys::TRIGGER_EVENT_INSERT
    {
        return Err(misuse("must be a BEFORE INSERT FOR EACH ROW trigger"));
    }
    let args = trigger
        .extra_args()
        .map_err(|_| misuse("cannot read its arguments"))?;
    let [project, column] = args.as_slice() else {
        return Err(misuse(&format!(
            "expects 2 arguments (project, insert_id column), got {}",
            args.len()
        )));
    };
    let table = trigger.table_name().unwrap_or_default();
    let new = trigger.new().ok_or_else(|| misuse("has no new row"))?;
    let insert_id: Option<String> = new.get_by_name(column).map_err(|e| match e {
        pgrx::datum::TryFromDatumError::NoSuchAttributeName(_) => IdentityError::MissingColumn {
            table: table.clone(),
            column: column.clone(),
        },
        _ => IdentityError::WrongColumnType {
            table: table.clone(),
            column: column.clone(),
            found: "another type".into(),
            expected: "text or varchar",
        },
    })?;
    let Some(insert_id) = insert_id else {
        return Ok(Some(new));
    };
    // SAFETY: the trigger manager hands a valid relation.
    let relid = unsafe { (*td.tg_relation).rd_id };
    let plan = probe(relid, column);
    let held = Spi::connect(|c| {
        !c.select(&*plan, Some(1), &[insert_id.as_str().into()])
            .or_bug("probing the insert_id")
            .is_empty()
    });
    if !held {
        return Ok(Some(new));
    }
    // Skipped and recorded, with the whole row (its JSON), in rejections.
    let pid = crate::store::cached_project_id(project)?;
    let row = trigger.new().ok_or_else(|| misuse("has no new row"))?;
    let rowtype = row
        .composite_type_oid()
        .ok_or_else(|| misuse("has no row type"))?;
    // SAFETY: the composite datum is of the relation's row type, `rowtype`.
    let arg = unsafe { pgrx::datum::DatumWithOid::new(row, rowtype) };
    let json: Option<pgrx::JsonB> =
        Spi::get_one_with_args("SELECT pg_catalog.to_jsonb($1)", &[arg]).or_bug("reading the row");
    let err = IdentityError::DuplicateInsertId {
        table: table.clone(),
        insert_id: insert_id.clone(),
    };
    crate::store::record_rejection(crate::store::Rejection {
        project_id: Some(pid),
        reason: crate::core::error::Reason::DuplicateInsertId,
        message: err.message(),
        operation: Some("insert"),
        id_a: Some(&insert_id),
        id_b: None,
        source_table: Some(relid),
        source_row: json,
    });
    Ok(None)
}
