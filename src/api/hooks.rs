//! The hooks and callbacks the extension installs when its library loads (`_PG_init`): they
//! drive the statement batch (engine/batch.rs), the ring of committed joins (sync/ring.rs) and
//! the stamp cache (sync/cache.rs) at statement, subtransaction and transaction boundaries.
//!
//! - ExecutorFinish: a statement that wrote, when it is the batch's, writes the batch (before
//!   and after the previous hook or the standard function, which run its AFTER triggers).
//! - ProcessUtility: after COPY (which has no ExecutorFinish), the batch is written.
//! - Xact callback: before commit or prepare, the batch is written at the latest and a lost
//!   early write refused, then the direct index probes (store/probe.rs) closed; at commit or
//!   prepare the statistics are published; at commit the ring publishes the transaction's
//!   joins; at abort the caches forget what the ring says they must.
//! - SubXact callback: an aborted subtransaction takes its statement's batch and the ring's
//!   joins with it; a committed one hands them to its parent.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::engine::batch;

/// Installs the hooks and callbacks (once, when the library loads).
pub fn init() {
    // SAFETY: called once from _PG_init; saves the previous hooks and chains to them.
    unsafe {
        PREV_EXECUTOR_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

static mut PREV_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;
static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

// The previous hooks' and the standard functions are called without pgrx's guard, from hook
// frames that hold nothing to drop (raw pointers only): an ERROR raised inside (a DDL error, a
// foreign-key violation in an AFTER trigger, anything in the database) then travels as
// PostgreSQL's own longjmp, untouched, instead of being turned into a Rust panic and back (which
// added a Rust backtrace to its DETAIL when RUST_BACKTRACE was set). Our own work before and
// after the call is in guarded functions of its own.
extern "C-unwind" {
    #[link_name = "standard_ExecutorFinish"]
    fn standard_executor_finish_unguarded(query: *mut pg_sys::QueryDesc);
    #[link_name = "standard_ProcessUtility"]
    #[allow(clippy::too_many_arguments)]
    fn standard_process_utility_unguarded(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// At the end of a statement that writes, when it is the batch's: the batch is written before
/// the statement's AFTER triggers run (they see the graph as the rows left it), and again
/// after them for rows that data-modifying CTEs finish only then.
unsafe extern "C-unwind" fn executor_finish(query: *mut pg_sys::QueryDesc) {
    // SAFETY: the QueryDesc is valid (the hook's contract); this frame holds only pointers, so
    // an ERROR's longjmp through it skips nothing (see above); the chained call is the previous
    // hook (set once at load) or the standard function, as every ExecutorFinish hook must.
    unsafe {
        flush_if_ours(query);
        match PREV_EXECUTOR_FINISH {
            Some(prev) => prev(query),
            None => standard_executor_finish_unguarded(query),
        }
        flush_if_ours(query);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn flush_if_ours(query: *mut pg_sys::QueryDesc) {
    // SAFETY: the QueryDesc and its EState stay valid until ExecutorEnd.
    let statement_of = |query: *mut pg_sys::QueryDesc| unsafe {
        let q = &*query;
        let writes = q.operation != pg_sys::CmdType::CMD_SELECT || (*q.plannedstmt).hasModifyingCTE;
        writes.then(|| {
            (
                crate::pg::local_xid(),
                crate::pg::current_subxact(),
                (*q.estate).es_output_cid,
            )
        })
    };
    if batch::pending_statement().is_some_and(|s| Some(s) == statement_of(query)) {
        batch::flush();
    }
}

/// COPY (a utility statement) has no ExecutorFinish: its batch is written when it returns.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // SAFETY: chains to the previous hook (set once at load) or the standard function with the
    // arguments given; this frame holds only pointers, so an ERROR's longjmp through it skips
    // nothing (see above).
    unsafe {
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => standard_process_utility_unguarded(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
        after_utility(pstmt);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn after_utility(pstmt: *mut pg_sys::PlannedStmt) {
    // SAFETY: the planned statement of a utility command holds its parse node.
    let is_copy = unsafe {
        let node = (*pstmt).utilityStmt;
        !node.is_null() && (*node).type_ == pg_sys::NodeTag::T_CopyStmt
    };
    if is_copy && batch::pending_statement().is_some() {
        batch::flush();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT | XACT_EVENT_PRE_PREPARE => {
            // At the latest: a statement whose end was not seen (a trigger fired outside the
            // executor, as logical replication's apply does).
            batch::before_commit();
            // After the flush, whose joins are the transaction's last.
            if event == XACT_EVENT_PRE_PREPARE {
                at_end(crate::sync::ring::pre_prepare());
            }
            // Last (the flush may read through them): the direct probes' relations, scans and
            // snapshots are closed before the resource owner is released. A PREPARE (Citus's
            // two-phase commit on a worker node) needs this as much as a COMMIT: otherwise
            // PostgreSQL releases them itself, with reference-leak warnings.
            crate::store::probe::close_current();
        }
        XACT_EVENT_PARALLEL_PRE_COMMIT => crate::store::probe::close_current(),
        XACT_EVENT_ABORT
        | XACT_EVENT_PARALLEL_ABORT
        | XACT_EVENT_COMMIT
        | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PREPARE => {
            batch::at_transaction_end();
            crate::engine::staged::at_transaction_end();
            match event {
                // A prepared transaction (Citus's two-phase commit on a worker) is committed
                // later by another session: its counts and wake-up go now, and the woken worker
                // looks again shortly (api/worker.rs) until the commit is visible.
                XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
                    crate::api::stamp::count_statement();
                    crate::sync::stats::publish();
                }
                _ => crate::sync::stats::forget(),
            }
            match event {
                // Visible to new snapshots now, locks not yet released: other sessions learn
                // of the joins before they can see or take anything this transaction held.
                XACT_EVENT_COMMIT | XACT_EVENT_PARALLEL_COMMIT => crate::sync::ring::commit(),
                XACT_EVENT_PREPARE => {}
                _ => at_end(crate::sync::ring::abort()),
            }
        }
        _ => {}
    }
}

/// What the ring asks of the caches when (part of) a transaction ends.
fn at_end(what: crate::sync::ring::AtEnd) {
    use crate::sync::ring::AtEnd::*;
    match what {
        Nothing => {}
        ForgetOwnJoins => crate::sync::cache::clear(),
        SignalAndForget => {
            crate::sync::cache::signal();
            crate::sync::cache::clear();
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::SubXactEvent::*;
    let lxid = crate::pg::local_xid();
    match event {
        SUBXACT_EVENT_ABORT_SUB => {
            at_end(crate::sync::ring::abort_sub(sub));
            batch::at_subtransaction_abort(lxid, sub);
        }
        SUBXACT_EVENT_COMMIT_SUB => {
            batch::at_subtransaction_commit(lxid, sub, parent);
        }
        _ => {}
    }
}
