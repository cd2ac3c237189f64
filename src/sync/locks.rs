//! The locks of the identity write protocol (engine/join.rs), taken with PostgreSQL's lock manager
//! directly (no SPI):
//!
//! - a lock per cluster, the one `pg_advisory_xact_lock(rules::cluster_lock_key(..))` takes,
//!   held exclusively by whoever changes the cluster, until the transaction ends;
//! - a lock per project, held shared by every writer of the project, and taken exclusively by a
//!   transaction that has already taken `identity_merge.cluster_locks_per_transaction` cluster
//!   locks: from then on it takes no more cluster locks. Every lock lives in PostgreSQL's shared
//!   lock table until commit, so a bulk INSERT carrying thousands of identity events would
//!   otherwise fill it ("out of shared memory"); the price is that the project's other writers
//!   wait for that transaction to end.
//!
//! Locks are taken in one order (project, then clusters by ascending key) and a writer that
//! would have to wait while holding locks waits in a subtransaction, so that the deadlock
//! PostgreSQL may detect there (possible only between transactions that each ran several
//! operations, or when one of them moves up to the exclusive project lock) becomes a clear
//! `Contention` refusal (40001) instead of aborting the caller's transaction with 40P01.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::prelude::*;

/// How a writer holds its project.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProjectHold {
    /// Shared: it must lock the clusters it changes.
    Shared,
    /// Exclusive: no other writer of the project runs until this transaction ends.
    Exclusive,
}

thread_local! {
    /// (local transaction id, cluster locks taken in it).
    static CLUSTER_LOCKS: Cell<(u32, usize)> = const { Cell::new((0, 0)) };
}

const EXCLUSIVE: pg_sys::LOCKMODE = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;
const SHARE: pg_sys::LOCKMODE = pg_sys::ShareLock as pg_sys::LOCKMODE;

fn advisory(field2: u32, field3: u32, field4: u16) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set once at connection start and only read here.
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: field2,
        locktag_field3: field3,
        locktag_field4: field4,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// The lock `pg_advisory_xact_lock(key)` takes (SET_LOCKTAG_ADVISORY with an int8 key).
fn cluster_tag(key: i64) -> pg_sys::LOCKTAG {
    advisory(((key as u64) >> 32) as u32, key as u64 as u32, 1)
}

/// A project's lock: an advisory tag no SQL advisory function produces (field 4 is 1 or 2
/// for those), so no user lock can collide with it. Field 2 spells "IDMG".
fn project_tag(project_id: i32) -> pg_sys::LOCKTAG {
    advisory(0x4944_4d47, project_id as u32, 3)
}

fn cluster_locks_taken() -> usize {
    let lxid = crate::pg::local_xid();
    CLUSTER_LOCKS.with(|c| {
        let (x, n) = c.get();
        if x == lxid {
            n
        } else {
            0
        }
    })
}

fn count_cluster_locks(n: usize) {
    let lxid = crate::pg::local_xid();
    let taken = cluster_locks_taken();
    CLUSTER_LOCKS.with(|c| c.set((lxid, taken + n)));
}

/// Runs `f` with the current (sub)transaction's resource owner, which owns every lock taken
/// here: a lock taken while waiting (in a subtransaction, see `wait_take`) passes to that owner
/// when the subtransaction commits, and `LockRelease` only gives back a lock the current owner
/// holds (under a statement's owner it would warn and keep the lock).
fn as_transaction_owner<R>(f: impl FnOnce() -> R) -> R {
    crate::pg::with_resource_owner(crate::pg::Owner::CurrentTransaction, f)
}

/// Takes `tag` in `mode` without waiting; true when held (now or already).
fn try_take(tag: &pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE) -> bool {
    // SAFETY: a conditional acquire (dontWait) of a valid tag; never blocks or errors.
    as_transaction_owner(|| unsafe {
        pg_sys::LockAcquire(tag, mode, false, true)
            != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
    })
}

/// Runs `wait` (which waits for locks and says whether it got them) in a subtransaction; false
/// when it did not, or when PostgreSQL picked this transaction as a deadlock's victim: then
/// nothing it took is held.
fn waiting(wait: impl FnOnce() -> bool) -> bool {
    let wait = std::panic::AssertUnwindSafe(wait);
    in_subtransaction(move || {
        let taken = PgTryBuilder::new(move || {
            let wait = wait;
            (wait.0)()
        })
        .catch_when(PgSqlErrorCode::ERRCODE_T_R_DEADLOCK_DETECTED, |_| false)
        .execute();
        if taken {
            Step::Commit(true)
        } else {
            Step::Fail(false)
        }
    })
}

/// Waits for the locks in a subtransaction; false when PostgreSQL picked this transaction as
/// a deadlock's victim (nothing is held then from this call).
fn wait_take(tags: &[pg_sys::LOCKTAG], mode: pg_sys::LOCKMODE) -> bool {
    waiting(|| {
        for tag in tags {
            // SAFETY: a waiting acquire of a valid tag inside the subtransaction; its
            // ERRORs (deadlock, timeout, cancel) are caught here or by in_subtransaction.
            unsafe { pg_sys::LockAcquire(tag, mode, false, false) };
        }
        true
    })
}

fn held_by_me(tag: &pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE) -> bool {
    // SAFETY: looks the tag up in this backend's local lock table.
    #[cfg(feature = "pg15")]
    unsafe {
        pg_sys::LockHeldByMe(tag, mode)
    }
    // SAFETY: as above.
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    unsafe {
        pg_sys::LockHeldByMe(tag, mode, false)
    }
}

/// Whether this transaction holds the project's lock exclusively (then it needs no other).
pub fn holds_project_exclusively(project_id: i32) -> bool {
    held_by_me(&project_tag(project_id), EXCLUSIVE)
}

/// Takes the project's lock exclusively when no other transaction holds it, without waiting
/// (a statement moving to batch.rs's in-memory apply; it goes on online otherwise). True when
/// held, now or already. One node's lock: batches are not used on Citus.
pub fn try_hold_project_exclusively(project_id: i32) -> bool {
    let tag = project_tag(project_id);
    held_by_me(&tag, EXCLUSIVE) || try_take(&tag, EXCLUSIVE)
}

/// Takes the project's lock exclusively, waiting for the transactions that hold it (`mp_ingest`'s
/// batch). False: a deadlock's victim (refuse with Contention). One node's lock.
pub fn wait_project_exclusively(project_id: i32) -> bool {
    let tag = project_tag(project_id);
    held_by_me(&tag, EXCLUSIVE) || try_take(&tag, EXCLUSIVE) || wait_take(&[tag], EXCLUSIVE)
}

/// Holds the project for one operation: shared, or exclusive once this transaction took
/// `limit` cluster locks. None: a deadlock victim (refuse with Contention).
pub fn hold_project(project_id: i32, limit: usize) -> Option<ProjectHold> {
    if !hold_cluster_wide(project_id) {
        return None;
    }
    let tag = project_tag(project_id);
    // Exclusive when this transaction already holds it (a repeat take is a local lookup), or
    // when it has taken enough cluster locks to move up.
    let held_exclusive = held_by_me(&tag, EXCLUSIVE);
    if held_exclusive || cluster_locks_taken() >= limit {
        if held_exclusive || try_take(&tag, EXCLUSIVE) || wait_take(&[tag], EXCLUSIVE) {
            return Some(ProjectHold::Exclusive);
        }
        return None;
    }
    if try_take(&tag, SHARE) || wait_take(&[tag], SHARE) {
        return Some(ProjectHold::Shared);
    }
    None
}

thread_local! {
    /// (local transaction id, subtransaction id) in which the cluster-wide lock was taken.
    static CLUSTER_WIDE: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

/// On Citus (identity state distributed), the write lock of every node at once: the advisory
/// locks above are one node's, so two sessions on two nodes could otherwise decide joins of the
/// same cluster together. A row lock on the project's row of the replicated `projects`, taken by
/// an UPDATE (that changes nothing): Citus writes every copy, this node's included, so the lock
/// is only granted here once the previous writer's prepared transaction was committed on this
/// node, and the reads that follow (this node's copy) see its joins. (A SELECT ... FOR UPDATE
/// would lock one copy only: a session could then read this node's copy before the previous
/// writer's commit reached it.) Identity writes on Citus go one at a time, each paying its
/// two-phase commit anyway. Taken first, so
/// writers cannot deadlock among themselves. A deadlock with other locks the transaction holds,
/// found by this node's detector, is refused here as Contention (40001); one across nodes is
/// Citus's to break: it cancels a transaction, and the cancel is reported as its 40P01 (the code
/// is rewritten as the error is reported, after this catch). Also makes the
/// merge-log order the order of the joins (`_next_merge_seq`, sql/scaling.sql). False: refuse.
pub fn hold_cluster_wide(project_id: i32) -> bool {
    if !crate::sync::placement::distributed() {
        return true;
    }
    let key = (crate::pg::local_xid(), crate::pg::current_subxact());
    if CLUSTER_WIDE.with(|c| c.get()) == key {
        return true;
    }
    let taken = waiting(|| {
        crate::pg::as_owner(|| {
            Spi::run_with_args(
                "UPDATE identity_merge.projects SET token = token WHERE project_id OPERATOR(pg_catalog.=) $1",
                &[project_id.into()],
            )
        })
        .is_ok()
    });
    if taken {
        CLUSTER_WIDE.with(|c| c.set(key));
    }
    taken
}

/// Takes both cluster locks (keys in ascending order) if neither has to be waited for; else
/// takes none.
pub fn try_clusters(keys: [i64; 2]) -> bool {
    let (first, second) = (cluster_tag(keys[0]), cluster_tag(keys[1]));
    if !try_take(&first, EXCLUSIVE) {
        return false;
    }
    if !try_take(&second, EXCLUSIVE) {
        // SAFETY: gives back the hold just taken, under the owner that took it.
        as_transaction_owner(|| unsafe { pg_sys::LockRelease(&first, EXCLUSIVE, false) });
        return false;
    }
    count_cluster_locks(2);
    true
}

/// Waits for both cluster locks (keys in ascending order); false for a deadlock's victim.
pub fn wait_clusters(keys: [i64; 2]) -> bool {
    let taken = wait_take(&[cluster_tag(keys[0]), cluster_tag(keys[1])], EXCLUSIVE);
    if taken {
        count_cluster_locks(2);
    }
    taken
}

/// Gives back one hold of each cluster lock (a lock this transaction held before stays held).
pub fn release_clusters(keys: [i64; 2]) {
    as_transaction_owner(|| {
        for key in keys {
            // SAFETY: gives back one hold this transaction took, under its owner.
            unsafe { pg_sys::LockRelease(&cluster_tag(key), EXCLUSIVE, false) };
        }
    });
}

/// What a step run in a subtransaction asks for.
enum Step<T> {
    /// Keep what it did.
    Commit(T),
    /// Undo it and stop with this result.
    Fail(T),
}

/// Runs `f` in a subtransaction and commits or rolls it back as `f` asks. An ERROR that `f`
/// does not catch (a lock timeout, a cancel) rolls the subtransaction back before it goes on
/// up: left open, it would leave even an autocommit session in an aborted transaction block.
fn in_subtransaction<T>(f: impl FnOnce() -> Step<T>) -> T {
    // SAFETY: the subtransaction begun here is committed or rolled back on every path (the
    // ERROR path rolls it back before re-raising), and the memory context and resource owner
    // it switches are put back.
    unsafe {
        let old_cx = pg_sys::CurrentMemoryContext;
        let old_owner = pg_sys::CurrentResourceOwner;
        let restore = || {
            pg_sys::MemoryContextSwitchTo(old_cx);
            pg_sys::CurrentResourceOwner = old_owner;
        };
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(old_cx);
        let f = std::panic::AssertUnwindSafe(f);
        let step = PgTryBuilder::new(move || {
            let f = f;
            (f.0)()
        })
        .catch_others(|e| {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            restore();
            e.rethrow()
        })
        .execute();
        let out = match step {
            Step::Commit(v) => {
                pg_sys::ReleaseCurrentSubTransaction();
                v
            }
            Step::Fail(v) => {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                v
            }
        };
        restore();
        out
    }
}
