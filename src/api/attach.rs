//! The registry of attached event tables (`identity_merge.attachments`), which `mp_restamp` and
//! `mp_check` trust to say which column of a table holds stamps. Writers call the registration
//! (through `mp_attach`), and it writes with the extension owner's rights, so it checks, as the
//! caller, what it is about to record: the caller owns the table (or is a member of its owning
//! role), and the table's `identity_merge_stamp` trigger says exactly this project and these
//! columns. A writer can therefore never point an administrator's restamp at another column.

use std::ffi::CStr;

use pgrx::prelude::*;

use crate::core::attachment::TriggerArgs;
use crate::core::error::IdentityError;
use crate::pg::{as_owner, OrRaise};

/// Whether the current user owns the relation (directly or through role membership).
fn caller_owns(relid: pg_sys::Oid) -> bool {
    // SAFETY: plain catalog checks on this backend; the relation's existence is checked by
    // the caller (an unknown oid raises 42P01 inside, never reads freed memory).
    unsafe {
        #[cfg(feature = "pg15")]
        {
            pg_sys::pg_class_ownercheck(relid, pg_sys::GetUserId())
        }
        #[cfg(not(feature = "pg15"))]
        {
            pg_sys::object_ownercheck(pg_sys::RelationRelationId, relid, pg_sys::GetUserId())
        }
    }
}

/// The arguments of the table's stamping trigger, when it has one calling stamp_event: all of
/// them, as the catalog holds them (TriggerArgs::parse says what they mean).
fn trigger_args(relid: pg_sys::Oid) -> Option<Vec<String>> {
    Spi::connect(|c| {
        let rows = c
            .select(
                "SELECT t.tgargs FROM pg_catalog.pg_trigger t \
                 WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND t.tgname OPERATOR(pg_catalog.=) 'identity_merge_stamp' \
                   AND t.tgfoid OPERATOR(pg_catalog.=) 'identity_merge.stamp_event()'::pg_catalog.regprocedure",
                Some(1),
                &[relid.into()],
            )
            .ok()?;
        if rows.is_empty() {
            return None;
        }
        let bytes: Vec<u8> = rows.first().get(1).ok()??;
        Some(TriggerArgs::split_catalog(&bytes))
    })
}

fn project_token(project_id: i32) -> Option<String> {
    as_owner(|| {
        Spi::get_one_with_args::<String>(
            "SELECT token FROM identity_merge.projects WHERE project_id OPERATOR(pg_catalog.=) $1",
            &[project_id.into()],
        )
        .ok()
        .flatten()
    })
}

fn table_name(relid: pg_sys::Oid) -> String {
    Spi::get_one_with_args::<String>("SELECT $1::pg_catalog.regclass::text", &[relid.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| format!("{relid:?}"))
}

fn register(
    relid: pg_sys::Oid,
    project_id: i32,
    distinct: &str,
    canonical: &str,
) -> Result<(), IdentityError> {
    let table = table_name(relid);
    if !caller_owns(relid) {
        return Err(IdentityError::NotOwner { table });
    }
    let mismatch = |problem: String| IdentityError::AttachmentMismatch {
        table: table.clone(),
        problem,
    };
    let args = trigger_args(relid)
        .ok_or_else(|| mismatch("has no identity_merge_stamp trigger".into()))?;
    let token = project_token(project_id)
        .ok_or_else(|| mismatch(format!("project {project_id} does not exist")))?;
    // The trigger's project and columns; two more arguments (device and user id columns) are
    // optional.
    let wanted = [token, distinct.to_string(), canonical.to_string()];
    let says = TriggerArgs::parse(&args)
        .ok()
        .map(|a| [a.project, a.distinct_column, a.canonical_column]);
    if says.as_ref() != Some(&wanted) {
        return Err(mismatch(format!(
            "its identity_merge_stamp trigger says {args:?}, not {wanted:?}"
        )));
    }
    as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO identity_merge.attachments (events, project_id, distinct_id_column, canonical_column) \
             VALUES ($1::pg_catalog.oid::pg_catalog.regclass, $2, $3, $4) \
             ON CONFLICT ON CONSTRAINT attachments_pkey DO UPDATE \
                SET project_id = EXCLUDED.project_id, distinct_id_column = EXCLUDED.distinct_id_column, \
                    canonical_column = EXCLUDED.canonical_column, attached_at = pg_catalog.now()",
            &[relid.into(), project_id.into(), distinct.into(), canonical.into()],
        )
    })
    .map_err(|e| mismatch(format!("could not be registered ({e})")))
}

/// `identity_merge._register_attachment(regclass, integer, name, name)`, declared in
/// sql/api.sql (its arguments are a regclass and two names, which pgrx does not declare).
#[pg_extern(sql = false)]
fn _register_attachment(events: pg_sys::Oid, project_id: i32, distinct: &CStr, canonical: &CStr) {
    register(
        events,
        project_id,
        &distinct.to_string_lossy(),
        &canonical.to_string_lossy(),
    )
    .or_raise()
}

/// `identity_merge._column_type_ok(kind text, typ regtype) RETURNS boolean`, declared in
/// sql/api.sql: whether the trigger reads (or writes) a column of this kind (`'id'`,
/// `'properties'`) and type — `core::columns`, the rule the trigger applies itself.
#[pg_extern(sql = false)]
fn _column_type_ok(kind: &str, typ: pg_sys::Oid) -> bool {
    let kind = crate::core::columns::ColumnKind::parse(kind).unwrap_or_else(|| {
        crate::pg::raise(IdentityError::InvalidArgument {
            what: "column kind",
            value: kind.to_string(),
            hint: "'id' or 'properties'.",
        })
    });
    kind.accepts(crate::pg::column_type(typ))
}

/// `identity_merge._event_column(events regclass) RETURNS text`, declared in sql/api.sql: the
/// column the stamping trigger reads the event name from (`core::columns::event_column`), or
/// NULL when the table has none.
#[pg_extern(sql = false)]
fn _event_column(events: pg_sys::Oid) -> Option<String> {
    let has = |name: &str| {
        let name = std::ffi::CString::new(name).expect("column names have no NUL");
        crate::pg::has_column(events, &name)
    };
    crate::core::columns::event_column(has).map(str::to_string)
}

/// `identity_merge._id_columns(targs text[]) RETURNS text[]`, declared in sql/api.sql: the
/// device and user id columns a stamping trigger with these arguments reads
/// (`core::attachment::TriggerArgs`, defaults included); the defaults for a table without the
/// trigger yet (NULL or misused arguments).
#[pg_extern(sql = false)]
fn _id_columns(targs: Option<Vec<Option<String>>>) -> Vec<String> {
    use crate::core::attachment::{TriggerArgs, DEFAULT_DEVICE_COLUMN, DEFAULT_USER_COLUMN};
    let args: Vec<String> = targs
        .unwrap_or_default()
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    match TriggerArgs::parse(&args) {
        Ok(a) => vec![
            a.device_column_or_default().to_string(),
            a.user_column_or_default().to_string(),
        ],
        Err(_) => vec![
            DEFAULT_DEVICE_COLUMN.to_string(),
            DEFAULT_USER_COLUMN.to_string(),
        ],
    }
}

/// keep_fresh of an attached table the caller owns (mp_keep_fresh, mp_attach), and its
/// project's flag, which every join of the project reads (store::queue_stale), worked out from
/// the attachments by `identity_merge._keep_fresh_projects` (the one place that writes it):
/// with the extension owner's rights, after the same ownership check as the registration.
pub fn set_keep_fresh(relid: pg_sys::Oid, keep_fresh: bool) -> Result<(), IdentityError> {
    if !caller_owns(relid) {
        return Err(IdentityError::NotOwner {
            table: table_name(relid),
        });
    }
    as_owner(|| {
        Spi::run_with_args(
            "UPDATE identity_merge.attachments a SET keep_fresh = $2 \
              WHERE a.events::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND a.keep_fresh IS DISTINCT FROM $2",
            &[relid.into(), keep_fresh.into()],
        )?;
        Spi::run("SELECT identity_merge._keep_fresh_projects()")
    })
    .map_err(|e| crate::pg::internal("recording keep_fresh", e))
}
