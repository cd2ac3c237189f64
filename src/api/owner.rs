//! The SQL functions of work on a user's table done as its owner (pg/owner.rs), declared in
//! sql/api.sql.

use pgrx::prelude::*;

use crate::core::error::IdentityError;

/// `identity_merge._exec_as_owner(events regclass, sql text) RETURNS bigint` (declared in
/// sql/api.sql): runs one statement the extension's PL/pgSQL built (mp_restamp's UPDATE) as
/// the table's owner; returns the rows it processed. Executable by the roles mp_restamp is,
/// and safe so: it refuses callers that could not run the statement as the owner themselves.
#[pg_extern(sql = false)]
fn _exec_as_owner(events: pg_sys::Oid, sql: &str) -> i64 {
    crate::pg::owner::as_table_owner(events, "mp_restamp", || {
        Spi::connect_mut(|c| c.update(sql, None, &[]).map(|t| t.len() as i64)).unwrap_or_else(|e| {
            crate::pg::raise(IdentityError::Internal {
                what: format!("a statement run as the owner of the table failed: {e}"),
            })
        })
    })
}

/// `identity_merge._wait_for_writers(tables regclass[])` (declared in sql/api.sql):
/// `mp_refresh_people`'s consistent point (pg/owner.rs's `wait_for_writers`).
#[pg_extern(sql = false)]
fn _wait_for_writers(tables: Vec<pg_sys::Oid>) {
    crate::pg::owner::wait_for_writers(tables)
}
