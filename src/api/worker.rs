//! The maintenance worker (docs/functions.md#the-maintenance-worker) and the statistics view's
//! functions. With identity_merge in `shared_preload_libraries`, `_PG_init` registers a
//! launcher; the launcher starts one worker per database that has the extension (a database
//! that creates it wakes the launcher, `_wake_launcher`); a worker runs `engine::maintain::pass`
//! whenever a commit woke it (queued Citus events, stale stamps of a keep_fresh table:
//! `sync::stats::wake_at_commit`) or `identity_merge.worker_naptime` passed, and exits when its
//! database drops the extension. Without preloading nothing here runs, and everything works as
//! before (mp_apply_pending, mp_restamp by hand or pg_cron): mp_check says so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::engine::maintain::{pass, restamp_after_apply, Pass};
use crate::sync::stats;

/// How often the launcher looks again at a database whose worker found no extension.
const RECHECK: Duration = Duration::from_secs(60);
/// How long after a database created the extension the launcher looks again every second.
const SETTLE: Duration = Duration::from_secs(15);

/// How long after a database created the extension a worker that finds none waits for it.
const AWAIT_CREATION: Duration = Duration::from_secs(3);

/// Registers the launcher (from `_PG_init`, while shared_preload_libraries loads).
pub fn register_launcher() {
    // SAFETY: reads a flag PostgreSQL sets while it loads shared_preload_libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new("identity_merge launcher")
        .set_type("identity_merge launcher")
        .set_library("identity_merge")
        .set_function("identity_merge_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// The databases that may hold the extension: every one that allows connections and is not a
/// template. Read from the shared catalog pg_database, without a database connection.
fn databases() -> Vec<pg_sys::Oid> {
    let mut out = Vec::new();
    // SAFETY: a catalog scan inside a transaction this function starts and commits: the
    // relation is opened, scanned and closed here, and every tuple is read while it is pinned
    // by the scan (GETSTRUCT: the fixed part of a pg_database row after its header).
    unsafe {
        pg_sys::StartTransactionCommand();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let header = (*tuple).t_data;
            let form = (header as *mut u8).add((*header).t_hoff as usize)
                as *const pg_sys::FormData_pg_database;
            if (*form).datallowconn && !(*form).datistemplate {
                out.push((*form).oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        pg_sys::CommitTransactionCommand();
    }
    out
}

fn start_worker(db: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("identity_merge worker {}", db.to_u32()))
        .set_type("identity_merge worker")
        .set_library("identity_merge")
        .set_function("identity_merge_worker_main")
        .set_argument(Some(pg_sys::Datum::from(db.to_u32())))
        .enable_spi_access()
        // A worker that fails (an error in a pass) starts again; one that exits cleanly (no
        // extension here) does not.
        .set_restart_time(Some(Duration::from_secs(1)))
        // SAFETY: MyProcPid is this process's pid.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// The launcher: one worker per database with the extension, started again when it stops.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn identity_merge_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    stats::register_launcher();
    let mut workers: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    // Databases whose worker found no extension, and when.
    let mut without: HashMap<u32, Instant> = HashMap::new();
    let mut created_seen = u64::MAX;
    // When a database last created the extension: on a Citus worker node the creation is a
    // prepared transaction, committed a moment after it woke the launcher, so a worker started
    // at once may not see it yet. For a while after, such databases are looked at every second.
    let mut created_at = Instant::now();
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloads the configuration files in this process, as a SIGHUP asks.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // A database created the extension since the last look: every database is looked at
        // again now (otherwise one without it, every RECHECK).
        let created = stats::extension_created();
        let woken = created != created_seen;
        created_seen = created;
        if woken {
            created_at = Instant::now();
        }
        let settling = created_at.elapsed() < SETTLE;
        if crate::pg::guc::WORKER.get() {
            for db in databases() {
                let key = db.to_u32();
                // Started, or registered and about to start.
                let running = workers.get(&key).is_some_and(|w| {
                    matches!(w.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted))
                });
                if running {
                    without.remove(&key);
                    continue;
                }
                if workers.remove(&key).is_some() {
                    // It stopped: it found no extension (or the setting turned it off).
                    without.insert(key, Instant::now());
                }
                let recheck = without.get(&key).is_none_or(|t| {
                    woken
                        || t.elapsed() >= RECHECK
                        || (settling && t.elapsed() >= Duration::from_secs(1))
                });
                if recheck {
                    if let Some(w) = start_worker(db) {
                        workers.insert(key, w);
                    }
                }
            }
        }
        // Woken by _wake_launcher, a worker that started or stopped, a SIGHUP, or the time.
        wait(if settling {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        });
        if BackgroundWorker::sigterm_received() {
            break;
        }
    }
}

/// Sleeps on this process's latch for `timeout` at most (a wake-up, a signal, a notification
/// of a worker that started or stopped end it sooner); true when the latch was set. The process
/// exits if the postmaster dies.
fn wait(timeout: Duration) -> bool {
    // SAFETY: waits on this process's own latch and resets it, as every background worker loop
    // does; interrupts are then served (a cancel or termination raises here, as in any backend).
    unsafe {
        let rc = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis().min(i64::MAX as u128) as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
        pg_sys::check_for_interrupts!();
        rc & pg_sys::WL_LATCH_SET as i32 != 0
    }
}

/// A database's worker: passes until the database drops the extension or the server stops.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn identity_merge_worker_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = pg_sys::Oid::from(arg.value() as u32);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(db), None);
    let Some(slot) = stats::register_worker() else {
        // Another worker serves this database.
        return;
    };
    // After a wake-up or a pass that found work, the next passes come quickly (10 ms, doubling
    // up to the naptime): a commit prepared on this node (Citus's two-phase commit) wakes the
    // worker before it becomes visible.
    let mut nap = Duration::from_millis(10);
    // Whether a pass found the extension: after that, finding none means it was dropped.
    let mut seen = false;
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloads the configuration files in this process, as a SIGHUP asks.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        if !crate::pg::guc::WORKER.get() {
            break;
        }
        let batch = crate::pg::guc::WORKER_BATCH.get().max(1) as i64;
        let done = BackgroundWorker::transaction(|| pass(slot, batch));
        if BackgroundWorker::sigterm_received() {
            break;
        }
        if let Pass::Done { restamp, .. } = &done {
            seen = true;
            if !restamp.is_empty() {
                let absorbed = restamp.clone();
                BackgroundWorker::transaction(move || restamp_after_apply(&absorbed));
            }
        }
        let naptime = Duration::from_millis(crate::pg::guc::WORKER_NAPTIME.get().max(10) as u64);
        match done {
            // Not there yet, just after a database created it: on a Citus worker node the
            // creation is a prepared transaction, committed a moment after it woke the
            // launcher, which started this worker. Looked for again shortly, a while.
            Pass::NoExtension if !seen && stats::extension_created_within(AWAIT_CREATION) => {
                wait(Duration::from_millis(50));
                if BackgroundWorker::sigterm_received() {
                    break;
                }
                continue;
            }
            Pass::NoExtension => break,
            Pass::Done { more: true, .. } => {
                nap = Duration::from_millis(10);
                continue;
            }
            Pass::Done {
                more: false,
                worked,
                ..
            } => {
                nap = if worked {
                    Duration::from_millis(10)
                } else {
                    (nap * 2).min(naptime)
                };
                if wait(nap) {
                    nap = Duration::from_millis(10);
                }
                if BackgroundWorker::sigterm_received() {
                    break;
                }
            }
        }
    }
    slot.unregister();
}

/// `identity_merge._wake_launcher()` (sql/api.sql): run by CREATE EXTENSION (and the upgrade);
/// the launcher is woken when the transaction commits.
#[pg_extern(sql = false)]
fn _wake_launcher() {
    stats::wake_launcher_at_commit();
}

/// `identity_merge._stats()` (sql/api.sql): this database's counters per project.
// pgrx reads the row's columns from the type as written here: no alias.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn _stats() -> TableIterator<
    'static,
    (
        name!(project_id, i32),
        name!(rows_stamped, i64),
        name!(events_applied, i64),
        name!(events_queued, i64),
        name!(events_refused, i64),
        name!(joins, i64),
        name!(splits, i64),
        name!(cache_hits, i64),
        name!(cache_misses, i64),
    ),
> {
    let rows: Vec<_> = stats::projects()
        .into_iter()
        .map(|p| {
            let c = |k: stats::Counter| p.counters[k as usize] as i64;
            use stats::Counter::*;
            (
                p.project,
                c(RowsStamped),
                c(EventsApplied),
                c(EventsQueued),
                c(Refused),
                c(Joins),
                c(Splits),
                c(CacheHits),
                c(CacheMisses),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// `identity_merge._worker()` (sql/api.sql): this database's maintenance worker.
#[allow(clippy::type_complexity)]
#[pg_extern(sql = false)]
fn _worker() -> TableIterator<
    'static,
    (
        name!(pid, Option<i32>),
        name!(state, String),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(last_apply_at, Option<TimestampWithTimeZone>),
        name!(last_restamp_at, Option<TimestampWithTimeZone>),
        name!(events_applied, i64),
        name!(rows_restamped, i64),
    ),
> {
    let w = stats::worker();
    let at = |t: Option<i64>| {
        // SAFETY: a TimestampTz value (microseconds since 2000-01-01), as GetCurrentTimestamp
        // gave it.
        t.and_then(|t| unsafe { TimestampWithTimeZone::from_datum(pg_sys::Datum::from(t), false) })
    };
    TableIterator::once((
        w.pid,
        w.state.name().to_string(),
        at(w.started_at),
        at(w.last_apply_at),
        at(w.last_restamp_at),
        w.applied as i64,
        w.restamped as i64,
    ))
}

/// `mp_stats_reset()` (sql/api.sql): zeroes this database's counters.
#[pg_extern(sql = false)]
fn mp_stats_reset() {
    stats::reset();
}

/// `identity_merge._set_keep_fresh(events regclass, keep_fresh boolean)` (sql/api.sql): records
/// keep_fresh for an attached table the caller owns, and the project's flag the joins read.
#[pg_extern(sql = false)]
fn _set_keep_fresh(events: pg_sys::Oid, keep_fresh: bool) {
    crate::api::attach::set_keep_fresh(events, keep_fresh)
        .unwrap_or_else(|e: IdentityError| crate::pg::raise(e));
}
