//! One SQL statement run through the executor directly (parse, plan, ExecutorStart .. End),
//! under an active snapshot of its own: the executor does not copy it, so for the whole
//! statement `GetActiveSnapshot()` is that snapshot, and a statement nested in it (a trigger's,
//! a function's) has another. `mp_ingest` tells its own INSERT's rows from any other's that way
//! (engine/staged.rs). SPI could not: it copies the snapshot it is given.

use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::IntoDatum;

/// A parameter: its type and value (None: NULL).
pub struct Param {
    pub type_oid: pg_sys::Oid,
    pub value: Option<pg_sys::Datum>,
}

/// A text[] parameter.
pub fn text_array(values: Vec<Option<String>>) -> Param {
    Param {
        type_oid: pg_sys::TEXTARRAYOID,
        value: values.into_datum(),
    }
}

/// Runs `sql` (one statement, `$n` the parameters) as the current user, with a new snapshot
/// that sees everything this transaction did so far; `during` is called with that snapshot
/// before the executor starts and its guard dropped when the statement ended. Returns the
/// rows the statement processed. An ERROR raised inside aborts the (sub)transaction, which
/// pops the snapshot and releases what the executor held.
pub fn run_with_own_snapshot<G>(
    sql: &str,
    params: &[Param],
    during: impl FnOnce(pg_sys::Snapshot) -> G,
) -> u64 {
    let text = CString::new(sql).expect("statements built by the extension have no NUL");
    let types: Vec<pg_sys::Oid> = params.iter().map(|p| p.type_oid).collect();
    // SAFETY: PostgreSQL's own sequence for one statement (as SPI and portals run it), with
    // pointers it returned; everything is allocated in the current memory context, and an
    // ERROR anywhere is cleaned up by the abort (resource owners, snapshot stack).
    unsafe {
        let raw = pointers(pg_sys::pg_parse_query(text.as_ptr()));
        assert_eq!(raw.len(), 1, "one statement");
        let raw_stmt = raw[0] as *mut pg_sys::RawStmt;
        let queries = pg_sys::pg_analyze_and_rewrite_fixedparams(
            raw_stmt,
            text.as_ptr(),
            types.as_ptr(),
            types.len() as i32,
            std::ptr::null_mut(),
        );
        let bound = if params.is_empty() {
            std::ptr::null_mut()
        } else {
            let list = pg_sys::makeParamList(params.len() as i32);
            let slots = (*list).params.as_mut_slice(params.len());
            for (slot, p) in slots.iter_mut().zip(params) {
                slot.value = p.value.unwrap_or(pg_sys::Datum::from(0));
                slot.isnull = p.value.is_none();
                slot.pflags = pg_sys::PARAM_FLAG_CONST as u16;
                slot.ptype = p.type_oid;
            }
            list
        };
        let plans = pointers(pg_sys::pg_plan_queries(queries, text.as_ptr(), 0, bound));
        // What this transaction wrote so far is seen (the statement is a new command).
        pg_sys::CommandCounterIncrement();
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetTransactionSnapshot());
        // A registered snapshot is a copy already: pushed as it is, not copied again.
        pg_sys::PushActiveSnapshot(snapshot);
        let guard = during(snapshot);
        let mut processed = 0u64;
        for stmt in plans {
            let stmt = stmt as *mut pg_sys::PlannedStmt;
            let desc = pg_sys::CreateQueryDesc(
                stmt,
                text.as_ptr(),
                snapshot,
                std::ptr::null_mut(),
                pg_sys::None_Receiver,
                bound,
                std::ptr::null_mut(),
                0,
            );
            pg_sys::ExecutorStart(desc, 0);
            #[cfg(any(feature = "pg15", feature = "pg17"))]
            pg_sys::ExecutorRun(desc, pg_sys::ScanDirection::ForwardScanDirection, 0, true);
            #[cfg(feature = "pg18")]
            pg_sys::ExecutorRun(desc, pg_sys::ScanDirection::ForwardScanDirection, 0);
            pg_sys::ExecutorFinish(desc);
            processed += (*(*desc).estate).es_processed;
            pg_sys::ExecutorEnd(desc);
            pg_sys::FreeQueryDesc(desc);
        }
        drop(guard);
        pg_sys::PopActiveSnapshot();
        pg_sys::UnregisterSnapshot(snapshot);
        // Later statements of this transaction see the rows.
        pg_sys::CommandCounterIncrement();
        processed
    }
}

/// The pointers of a List (NIL: none).
///
/// # Safety
/// `list` must be NIL or a valid List of pointers.
unsafe fn pointers(list: *mut pg_sys::List) -> Vec<*mut core::ffi::c_void> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: the caller's contract: `length` cells of pointers.
    unsafe {
        (0..(*list).length as usize)
            .map(|i| (*(*list).elements.add(i)).ptr_value)
            .collect()
    }
}
