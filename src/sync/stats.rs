//! What `identity_merge.stats` shows, kept in shared memory (pg/shmem.rs, no preload needed):
//! per (database, project) counters, and per database the maintenance worker's slot (its
//! latch, so that a commit can wake it, its state and its last passes).
//!
//! Counting stays off the hot path's cost: a backend adds to plain thread-local counters
//! (`count`) and moves them into the shared atomics once, when its transaction commits
//! (`publish`, the xact callback); an aborted transaction's counts are dropped (`forget`).
//! `mp_stats_reset` zeroes a database's counters.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use pgrx::pg_sys;

/// The counters, in the order of `Counter`.
pub const COUNTERS: usize = 8;

/// What is counted per project.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Event rows stamped (by the trigger or mp_ingest).
    RowsStamped = 0,
    /// Identity events applied where they arrived (the trigger, mp_ingest, the functions).
    EventsApplied = 1,
    /// Identity events queued on a Citus node for its queue's apply.
    EventsQueued = 2,
    /// Refusals recorded (identity_merge.rejections).
    Refused = 3,
    /// Joins of two clusters.
    Joins = 4,
    /// Retractions (mp_split, mp_unjoin).
    Splits = 5,
    /// The stamp cache answered.
    CacheHits = 6,
    /// The stamp cache did not: a probe or a whole-project load answered.
    CacheMisses = 7,
}

/// Project slots (per database and project); more projects are not counted.
const PROJECTS: usize = 256;
/// Database slots: one maintenance worker each.
const DATABASES: usize = 64;

const NAME: &std::ffi::CStr = c"identity_merge: statistics and workers, layout 1";

#[repr(C)]
struct ProjectSlot {
    /// 0: free. A slot is claimed by a compare-and-swap of `database`, then `project` is set.
    database: AtomicU32,
    project: AtomicI32,
    counters: [AtomicU64; COUNTERS],
}

/// A database's maintenance worker.
#[repr(C)]
pub struct WorkerSlot {
    database: AtomicU32,
    pid: AtomicI32,
    /// The worker's process latch (a pointer into shared memory), 0 when none runs.
    latch: AtomicUsize,
    state: AtomicU32,
    started_at: AtomicI64,
    last_apply_at: AtomicI64,
    last_restamp_at: AtomicI64,
    /// Identity events applied from the queue, stale rows restamped, since it started.
    applied: AtomicU64,
    restamped: AtomicU64,
}

#[repr(C)]
struct Shared {
    launcher_pid: AtomicI32,
    launcher_latch: AtomicUsize,
    /// Bumped by every CREATE EXTENSION (`wake_launcher`): the launcher looks again at the
    /// databases whose worker found no extension.
    extension_created: AtomicU64,
    /// When the last CREATE EXTENSION committed or prepared (a TimestampTz).
    extension_created_at: AtomicI64,
    workers: [WorkerSlot; DATABASES],
    projects: [ProjectSlot; PROJECTS],
}

/// What a worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerState {
    Stopped = 0,
    Idle = 1,
    Applying = 2,
    Restamping = 3,
}

impl WorkerState {
    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Stopped => "stopped",
            WorkerState::Idle => "idle",
            WorkerState::Applying => "applying",
            WorkerState::Restamping => "restamping",
        }
    }

    fn from(v: u32) -> WorkerState {
        match v {
            1 => WorkerState::Idle,
            2 => WorkerState::Applying,
            3 => WorkerState::Restamping,
            _ => WorkerState::Stopped,
        }
    }
}

thread_local! {
    static SHARED: std::cell::Cell<Option<&'static Shared>> = const { std::cell::Cell::new(None) };
    static ASKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// This transaction's counts: (project, counters), few projects per transaction.
    static LOCAL: RefCell<Vec<(i32, [u64; COUNTERS])>> = const { RefCell::new(Vec::new()) };
    /// Whether this transaction gave the worker work (queued events, joins or splits of a
    /// project that keeps stamps fresh): its commit wakes the worker.
    static WAKE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether this transaction created the extension: its commit wakes the launcher.
    static WAKE_LAUNCHER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks this transaction as one that created the extension: at its commit the launcher looks
/// for the database's worker (a worker started before the commit would not find the extension).
pub fn wake_launcher_at_commit() {
    WAKE_LAUNCHER.with(|w| w.set(true));
}

fn shared() -> Option<&'static Shared> {
    if !ASKED.with(|a| a.replace(true)) {
        // Also in parallel mode (the view read by a parallel query; its workers count nothing:
        // their counts are published only by a commit of their own, which they never make).
        let found = crate::pg::shmem::block(NAME, std::mem::size_of::<Shared>())
            // SAFETY: a block of Shared's size living as long as the server; all-zero bytes
            // are a valid Shared (free slots, no worker).
            .map(|p| unsafe { &*(p as *const Shared) });
        SHARED.with(|s| s.set(found));
    }
    SHARED.with(|s| s.get())
}

fn database() -> u32 {
    // SAFETY: MyDatabaseId is this backend's database, set before any SQL runs.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Adds `n` to a counter of `project` for this transaction.
pub fn count(project: i32, counter: Counter, n: u64) {
    if n == 0 {
        return;
    }
    LOCAL.with(|l| {
        let Ok(mut l) = l.try_borrow_mut() else {
            return;
        };
        match l.iter_mut().rev().find(|(p, _)| *p == project) {
            Some((_, c)) => c[counter as usize] += n,
            None => {
                let mut c = [0u64; COUNTERS];
                c[counter as usize] = n;
                l.push((project, c));
            }
        }
    });
}

/// Marks this transaction as one whose commit wakes the database's worker.
pub fn wake_at_commit() {
    WAKE.with(|w| w.set(true));
}

fn slot_of(shared: &'static Shared, db: u32, project: i32) -> Option<&'static ProjectSlot> {
    for slot in &shared.projects {
        let d = slot.database.load(Ordering::Acquire);
        if d == db && slot.project.load(Ordering::Acquire) == project {
            return Some(slot);
        }
        if d == 0
            && slot
                .database
                .compare_exchange(0, db, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.project.store(project, Ordering::Release);
            return Some(slot);
        }
    }
    None
}

/// At commit: this transaction's counts into shared memory, and the worker woken when it has
/// work.
pub fn publish() {
    let counts = LOCAL.with(|l| {
        l.try_borrow_mut()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    });
    let wake = WAKE.with(|w| w.replace(false));
    if WAKE_LAUNCHER.with(|w| w.replace(false)) {
        wake_launcher();
    }
    if counts.is_empty() && !wake {
        return;
    }
    let Some(shared) = shared() else { return };
    let db = database();
    for (project, c) in counts {
        if let Some(slot) = slot_of(shared, db, project) {
            for (k, n) in c.iter().enumerate() {
                if *n > 0 {
                    slot.counters[k].fetch_add(*n, Ordering::Relaxed);
                }
            }
        }
    }
    if wake {
        wake_worker(db);
    }
}

/// At abort: this transaction's counts are dropped.
pub fn forget() {
    LOCAL.with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            l.clear();
        }
    });
    WAKE.with(|w| w.set(false));
    WAKE_LAUNCHER.with(|w| w.set(false));
}

/// Sets the latch of the worker of `db`, if one runs.
fn wake_worker(db: u32) {
    let Some(shared) = shared() else { return };
    for w in &shared.workers {
        if w.database.load(Ordering::Acquire) == db {
            let latch = w.latch.load(Ordering::Acquire);
            if latch != 0 {
                // SAFETY: a running worker's process latch, in shared memory; SetLatch on a
                // latch whose owner exited meanwhile is harmless (PGPROC latches persist).
                unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
            }
        }
    }
}

/// Wakes the launcher (a database created the extension: it starts that database's worker).
pub fn wake_launcher() {
    let Some(shared) = shared() else { return };
    shared.extension_created_at.store(now(), Ordering::Release);
    shared.extension_created.fetch_add(1, Ordering::AcqRel);
    let latch = shared.launcher_latch.load(Ordering::Acquire);
    if latch != 0 {
        // SAFETY: the launcher's process latch, in shared memory (see wake_worker).
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// How many times a database created the extension (the launcher compares).
pub fn extension_created() -> u64 {
    shared().map_or(0, |s| s.extension_created.load(Ordering::Acquire))
}

/// Whether a database created the extension (committed or prepared) within the last
/// `window`: a worker that finds no extension then waits for it a while (api/worker.rs).
pub fn extension_created_within(window: std::time::Duration) -> bool {
    let Some(shared) = shared() else { return false };
    let at = shared.extension_created_at.load(Ordering::Acquire);
    at != 0 && now().saturating_sub(at) < window.as_micros().min(i64::MAX as u128) as i64
}

/// The launcher registers its latch.
pub fn register_launcher() {
    if let Some(shared) = shared() {
        // SAFETY: this process's PGPROC latch, in shared memory, valid while it runs.
        let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as usize;
        // SAFETY: MyProcPid is this process's pid.
        shared
            .launcher_pid
            .store(unsafe { pg_sys::MyProcPid }, Ordering::Release);
        shared.launcher_latch.store(latch, Ordering::Release);
    }
}

/// The worker of this database registers its latch; None when there is no slot (or another
/// worker of this database runs: it exits).
pub fn register_worker() -> Option<&'static WorkerSlot> {
    let shared = shared()?;
    let db = database();
    // SAFETY: MyProcPid is this process's pid.
    let pid = unsafe { pg_sys::MyProcPid };
    let slot = shared
        .workers
        .iter()
        .find(|w| w.database.load(Ordering::Acquire) == db)
        .or_else(|| {
            shared.workers.iter().find(|w| {
                w.database
                    .compare_exchange(0, db, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
        })?;
    let running = slot.pid.load(Ordering::Acquire);
    // SAFETY: kill(pid, 0) only asks whether the process exists.
    if running != 0 && running != pid && unsafe { libc_kill(running, 0) } == 0 {
        return None;
    }
    slot.pid.store(pid, Ordering::Release);
    // SAFETY: this process's PGPROC latch, in shared memory, valid while it runs.
    let latch = unsafe { &raw mut (*pg_sys::MyProc).procLatch } as usize;
    slot.latch.store(latch, Ordering::Release);
    slot.started_at.store(now(), Ordering::Release);
    slot.applied.store(0, Ordering::Release);
    slot.restamped.store(0, Ordering::Release);
    slot.state
        .store(WorkerState::Idle as u32, Ordering::Release);
    Some(slot)
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl WorkerSlot {
    pub fn set_state(&self, state: WorkerState) {
        self.state.store(state as u32, Ordering::Release);
    }

    pub fn applied(&self, n: u64) {
        self.applied.fetch_add(n, Ordering::Relaxed);
        self.last_apply_at.store(now(), Ordering::Release);
    }

    pub fn restamped(&self, n: u64) {
        self.restamped.fetch_add(n, Ordering::Relaxed);
        self.last_restamp_at.store(now(), Ordering::Release);
    }

    /// The worker stops: its latch is no longer set by commits.
    pub fn unregister(&self) {
        self.latch.store(0, Ordering::Release);
        self.pid.store(0, Ordering::Release);
        self.state
            .store(WorkerState::Stopped as u32, Ordering::Release);
    }
}

/// One project's counters in this database.
pub struct ProjectCounts {
    pub project: i32,
    pub counters: [u64; COUNTERS],
}

/// This database's worker, as the view shows it.
pub struct WorkerView {
    pub pid: Option<i32>,
    pub state: WorkerState,
    pub started_at: Option<i64>,
    pub last_apply_at: Option<i64>,
    pub last_restamp_at: Option<i64>,
    pub applied: u64,
    pub restamped: u64,
}

/// Every counted project of this database (this transaction's own counts not yet included).
pub fn projects() -> Vec<ProjectCounts> {
    let Some(shared) = shared() else {
        return Vec::new();
    };
    let db = database();
    shared
        .projects
        .iter()
        .filter(|s| s.database.load(Ordering::Acquire) == db)
        .map(|s| ProjectCounts {
            project: s.project.load(Ordering::Acquire),
            counters: std::array::from_fn(|k| s.counters[k].load(Ordering::Relaxed)),
        })
        .collect()
}

/// This database's worker.
pub fn worker() -> WorkerView {
    let stopped = WorkerView {
        pid: None,
        state: WorkerState::Stopped,
        started_at: None,
        last_apply_at: None,
        last_restamp_at: None,
        applied: 0,
        restamped: 0,
    };
    let Some(shared) = shared() else {
        return stopped;
    };
    let db = database();
    let Some(w) = shared
        .workers
        .iter()
        .find(|w| w.database.load(Ordering::Acquire) == db)
    else {
        return stopped;
    };
    let at = |a: &AtomicI64| Some(a.load(Ordering::Acquire)).filter(|t| *t != 0);
    let pid = Some(w.pid.load(Ordering::Acquire)).filter(|p| *p != 0);
    WorkerView {
        pid,
        state: if pid.is_some() {
            WorkerState::from(w.state.load(Ordering::Acquire))
        } else {
            WorkerState::Stopped
        },
        started_at: at(&w.started_at),
        last_apply_at: at(&w.last_apply_at),
        last_restamp_at: at(&w.last_restamp_at),
        applied: w.applied.load(Ordering::Relaxed),
        restamped: w.restamped.load(Ordering::Relaxed),
    }
}

/// Zeroes this database's project counters.
pub fn reset() {
    let Some(shared) = shared() else { return };
    let db = database();
    for s in &shared.projects {
        if s.database.load(Ordering::Acquire) == db {
            for c in &s.counters {
                c.store(0, Ordering::Relaxed);
            }
        }
    }
}
