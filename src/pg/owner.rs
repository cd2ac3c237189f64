//! Work on a user's event table done on another role's behalf (`mp_restamp`,
//! `mp_restamp_all`, `mp_backfill_from`) runs as the table's owner, inside a
//! security-restricted operation, the way PostgreSQL's VACUUM, ANALYZE, CREATE INDEX and
//! REFRESH MATERIALIZED VIEW do: whatever code the owner put on the table (triggers, index
//! expressions, check constraints, row-level security policies, a column type's casts and
//! operators) then runs with the owner's rights, never the caller's. The caller must be able to
//! act as the owner (a superuser, or a role that may `SET ROLE` to it), so running as the owner
//! never gives anyone a right they did not already have (docs/security.md).
//!
//! Also here: waiting for the transactions that are writing a table (`mp_refresh_people`'s
//! consistent point: ids are handed out at insert, not at commit).

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::pg::{OrBug, OrRaise};

/// The owner of relation `rel` and the relation's printable name.
fn owner_of(rel: pg_sys::Oid) -> Result<(pg_sys::Oid, String, String), IdentityError> {
    let row = Spi::connect(|c| {
        let rows = c.select(
            "SELECT c.relowner, c.oid::pg_catalog.regclass::pg_catalog.text, pg_catalog.pg_get_userbyid(c.relowner)::pg_catalog.text \
               FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[rel.into()],
        )?;
        if rows.is_empty() {
            return Ok::<_, pgrx::spi::SpiError>(None);
        }
        let r = rows.first();
        Ok(Some((
            r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
            r.get::<String>(2)?.unwrap_or_default(),
            r.get::<String>(3)?.unwrap_or_default(),
        )))
    })
    .or_bug("reading a table's owner");
    row.ok_or_else(|| IdentityError::InvalidArgument {
        what: "table",
        value: format!("{rel:?}"),
        hint: "Name an existing table.",
    })
}

/// Whether `role` may act as `owner`: a superuser, the owner itself, or a member that may SET
/// ROLE to it.
fn may_act_as(role: pg_sys::Oid, owner: pg_sys::Oid) -> bool {
    if role == owner {
        return true;
    }
    // SAFETY: catalog lookups of two role oids in this backend; unknown oids answer false.
    unsafe {
        if pg_sys::superuser_arg(role) {
            return true;
        }
        #[cfg(feature = "pg15")]
        {
            pg_sys::is_member_of_role(role, owner)
        }
        #[cfg(not(feature = "pg15"))]
        {
            pg_sys::member_can_set_role(role, owner)
        }
    }
}

/// Runs `f` as the owner of `rel` in a security-restricted operation (see the module comment),
/// or refuses (42501) when the caller may not act as the owner. `what` names the calling
/// function for the message. Settings changed inside are undone on the way out; an ERROR
/// inside is cleaned up by the (sub)transaction abort, which restores user and settings.
pub fn as_table_owner<R>(rel: pg_sys::Oid, what: &'static str, f: impl FnOnce() -> R) -> R {
    let (owner, table, owner_name) = owner_of(rel).or_raise();
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads this backend's current user id and security context.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut context) };
    if !may_act_as(user, owner) {
        crate::pg::raise(IdentityError::CannotActAsOwner {
            function: what,
            table,
            owner: owner_name,
            role: crate::pg::current_role_name(),
        });
    }
    // SAFETY: switches this backend's user id and security context, and opens a GUC nest level;
    // both are put back below, or by the abort of an ERROR raised inside `f`.
    let nest = unsafe {
        pg_sys::SetUserIdAndSecContext(
            owner,
            context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        pg_sys::NewGUCNestLevel()
    };
    let r = f();
    // SAFETY: undoes the settings of the nest level opened above and restores the user.
    unsafe {
        pg_sys::AtEOXact_GUC(false, nest);
        pg_sys::SetUserIdAndSecContext(user, context);
    }
    r
}

/// `identity_merge._wait_for_writers(tables regclass[])` (api/owner.rs): waits until
/// every transaction that, when called, holds a write lock (ROW EXCLUSIVE or stronger) on one
/// of `tables` has ended, as CREATE INDEX CONCURRENTLY waits. A row whose id was handed out
/// before the call is then committed (and visible to the next statement's snapshot) or gone.
/// Cancellable; lock_timeout and statement_timeout apply.
pub fn wait_for_writers(tables: Vec<pg_sys::Oid>) {
    let mut waiting: Vec<pg_sys::VirtualTransactionId> = Vec::new();
    for rel in tables {
        // SAFETY: a relation lock tag of this database (SET_LOCKTAG_RELATION), and the array
        // GetLockConflicts returns: palloc'd, ended by an invalid vxid (the other transactions
        // whose locks conflict with SHARE, i.e. writers; this backend's own are left out).
        unsafe {
            let mut tag: pg_sys::LOCKTAG = std::mem::zeroed();
            tag.locktag_field1 = pg_sys::MyDatabaseId.into();
            tag.locktag_field2 = rel.into();
            tag.locktag_type = pg_sys::LockTagType::LOCKTAG_RELATION as u8;
            tag.locktag_lockmethodid = pg_sys::DEFAULT_LOCKMETHOD as u8;
            let mut n: i32 = 0;
            let list = pg_sys::GetLockConflicts(&tag, pg_sys::ShareLock as i32, &mut n);
            let mut p = list;
            loop {
                let v = *p;
                if v.localTransactionId == pg_sys::InvalidLocalTransactionId {
                    break;
                }
                waiting.push(v);
                p = p.add(1);
            }
        }
    }
    for v in waiting {
        // SAFETY: waits (interruptibly) for a virtual transaction read above to end.
        unsafe {
            pg_sys::VirtualXactLock(v, true);
        }
        pgrx::check_for_interrupts!();
    }
}
