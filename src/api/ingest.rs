//! `mp_ingest(staging, target)`: a staged batch moved into an attached table set-wise
//! (engine/staged.rs), and `identity_merge._stamp_wanted(table)`, the stamping trigger's WHEN.

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::pg::raise;

/// `mp_ingest(staging regclass, target regclass, empty_staging boolean DEFAULT false)`,
/// declared in sql/api.sql.
#[pg_extern(sql = false)]
fn mp_ingest(
    staging: Option<pg_sys::Oid>,
    target: Option<pg_sys::Oid>,
    empty_staging: Option<bool>,
) -> TableIterator<
    'static,
    (
        name!(rows_inserted, i64),
        name!(identity_events, i64),
        name!(refused, i64),
    ),
> {
    let null = |argument: &'static str| -> ! {
        raise(IdentityError::NullArgument {
            function: "mp_ingest",
            argument,
        })
    };
    let staging = staging.unwrap_or_else(|| null("staging"));
    let target = target.unwrap_or_else(|| null("target"));
    let empty_staging = empty_staging.unwrap_or_else(|| null("empty_staging"));
    let done = crate::engine::staged::ingest(staging, target, empty_staging);
    TableIterator::once((done.rows, done.identity_events, done.refused))
}

/// The info record of `_stamp_wanted`: PostgreSQL's version-1 calling convention.
#[no_mangle]
pub extern "C" fn pg_finfo__stamp_wanted() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `identity_merge._stamp_wanted(events regclass) RETURNS boolean` (sql/api.sql): the stamping
/// trigger's WHEN, evaluated for every inserted or updated row of an attached table. False only
/// for a row of `mp_ingest`'s own INSERT into `events` (stamped already). Without pgrx's guard:
/// it reads its argument and a thread-local, raises nothing and cannot panic, and the guard
/// would cost more than the rest.
///
/// # Safety
/// Called by PostgreSQL's function manager with one non-NULL regclass argument (STRICT).
#[no_mangle]
pub unsafe extern "C-unwind" fn _stamp_wanted(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: the caller's contract: one argument, not NULL (the function is STRICT).
    let table = unsafe { (*fcinfo).args.as_slice(1)[0].value };
    let table = pg_sys::Oid::from(table.value() as u32);
    pg_sys::Datum::from(!crate::engine::staged::own_row(table))
}
