//! A statement's identity events applied in memory and written once, when the statement ends
//! (docs/design/batch-apply.md). Online, every identity event is its own locked, logged write
//! (engine/join.rs), about 100 µs. A statement that meets `identity_merge.batch_threshold` of them (a
//! bulk INSERT or COPY with logins in it) takes its project exclusively, when no other
//! transaction writes the project (it never waits for that: it goes on online instead), and
//! from then on, for the rest of the statement:
//!
//! - decides each event with the rules and union-find `mp_backfill` uses (`core::graph`), over
//!   the stored clusters of the ids it meets, read once each: the exclusive lock, held to
//!   commit, keeps what was read true;
//! - stamps the statement's next rows with the result at once (`canonical_now`, asked by the
//!   trigger after its cache or probe answered), and records refusals at once, as online;
//! - writes the joins in bulk (ids re-pointed by canonical, new ids, clusters, one merge-log
//!   row per join with its provenance) when the statement ends: an ExecutorFinish hook that
//!   knows the statement by its command id, a ProcessUtility hook after COPY. Anything else
//!   in this backend that reads or writes the stored graph writes the batch first (`flush`:
//!   store::apply, mp_resolve, mp_backfill...), and the commit does at the latest.
//!
//! An error anywhere aborts the statement, and the batch is forgotten with it. The one way the
//! write could be undone without the statement's rows: it was written early, from a nested
//! subtransaction (a function with an EXCEPTION block called by the statement) that then rolled
//! back. That is noticed, and the commit is refused with 40001 (`IdentityError::BatchRolledBack`)
//! rather than keeping rows whose identity events were lost.
//!
//! Not used on Citus (the trigger queues there), in REPEATABLE READ or SERIALIZABLE
//! transactions (the online path turns their collisions into serialization failures), or in
//! parallel mode.

use std::cell::{Cell, RefCell};

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::Executed;
use crate::core::error::IdentityError;
use crate::core::graph::Graph;
use crate::core::ingest::EventPlan;
use crate::core::rules::{self, Project};
use crate::pg::as_owner;
use crate::store::bulk::write_statement_batch;
use crate::store::{Provenance, Source};

struct Batch {
    /// The statement: local transaction id, subtransaction id, command id.
    statement: (u32, u32, u32),
    project_id: i32,
    graph: Graph,
    /// One per `graph.joins`, in order.
    sources: Vec<Provenance>,
    clusters: crate::store::probe::ClusterReader,
    /// Identity events applied (for the message of a lost batch).
    events: usize,
}

thread_local! {
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
    /// The project of the batch, read by the trigger for every row (no RefCell borrow then).
    static ACTIVE: Cell<Option<i32>> = const { Cell::new(None) };
    /// (statement, identity events met in it): the threshold's count.
    static MET: Cell<((u32, u32, u32), usize)> = const { Cell::new(((0, 0, 0), 0)) };
    /// Batches written early from a deeper subtransaction than their statement's: (local xid,
    /// that subtransaction, the statement's subtransaction, events), until the first ends.
    static EARLY: RefCell<Vec<(u32, u32, u32, usize)>> = const { RefCell::new(Vec::new()) };
    /// That write rolled back while the statement stayed: (local xid, the statement's
    /// subtransaction, events). The commit is refused.
    static LOST: Cell<Option<(u32, u32, usize)>> = const { Cell::new(None) };
}

/// The statement of a batch waiting to be written, if any.
pub fn pending_statement() -> Option<(u32, u32, u32)> {
    BATCH.with(|b| {
        b.try_borrow()
            .ok()
            .and_then(|b| b.as_ref().map(|b| b.statement))
    })
}

/// Whether a statement of this transaction may apply its events in memory: where the graph
/// may be read directly with fresh snapshots (READ COMMITTED, one node, not parallel).
fn eligible() -> bool {
    crate::store::probe::direct_reads_allowed()
}

/// Whether the identity events of `project` in the statement `(command id, subtransaction)`
/// go to the statement's batch: yes when one is running for them, or when this event is the
/// `identity_merge.batch_threshold`th of the statement (or the transaction holds the project
/// exclusively already) and the project's lock could be taken exclusively without waiting.
pub fn take_part(project: &Project, statement: (u32, u32)) -> bool {
    let key = (crate::pg::local_xid(), statement.1, statement.0);
    match BATCH.with(|b| b.borrow().as_ref().map(|b| (b.statement, b.project_id))) {
        Some((k, p)) if k == key => return p == project.id,
        // Another statement's batch (one whose end was not seen): written before going on.
        Some(_) => flush(),
        None => {}
    }
    let met = MET.with(|m| {
        let (k, n) = m.get();
        let n = if k == key { n + 1 } else { 1 };
        m.set((key, n));
        n
    });
    let threshold = crate::pg::guc::batch_threshold();
    if threshold == 0 || !eligible() {
        return false;
    }
    let held = crate::sync::locks::holds_project_exclusively(project.id);
    if !held && (met < threshold || !crate::sync::locks::try_hold_project_exclusively(project.id)) {
        return false;
    }
    start(project, key, held)
}

/// Starts the batch of `statement` at once, waiting for the project's lock (`mp_ingest`, whose
/// identity events all go to it: engine/staged.rs). Ok(false) where batches are not used
/// (REPEATABLE READ, SERIALIZABLE, parallel mode): the events then go online, one at a time.
pub fn begin(project: &Project, statement: (u32, u32)) -> Result<bool, IdentityError> {
    if !eligible() {
        return Ok(false);
    }
    // Another statement's batch is written first.
    flush();
    let held = crate::sync::locks::holds_project_exclusively(project.id);
    if !held && !crate::sync::locks::wait_project_exclusively(project.id) {
        return Err(IdentityError::project_contention(&project.token));
    }
    let key = (crate::pg::local_xid(), statement.1, statement.0);
    Ok(start(project, key, held))
}

/// Starts a batch for the statement `key` of a project this transaction holds exclusively
/// (`held`: since before this statement).
fn start(project: &Project, key: (u32, u32, u32), held: bool) -> bool {
    // The tables the batch writes when the statement ends, locked for writing now: a running
    // mp_backfill (SHARE ROW EXCLUSIVE) is waited for before anything is read, and one started
    // later waits for this transaction.
    for table in [c"identities", c"clusters", c"merge_log"] {
        if let Some(oid) = crate::pg::relation_oid(table) {
            // SAFETY: locks an existing relation of the extension until the transaction ends.
            unsafe { pg_sys::LockRelationOid(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
        }
    }
    if !held {
        // What other sessions committed before the lock was granted: the stamp cache must not
        // answer from before it (nothing changes the project now but this batch).
        crate::sync::cache::accept_invalidations();
    }
    let Ok(clusters) = crate::store::probe::ClusterReader::new() else {
        return false;
    };
    BATCH.with(|b| {
        *b.borrow_mut() = Some(Batch {
            statement: key,
            project_id: project.id,
            graph: Graph::new(),
            sources: Vec::new(),
            clusters,
            events: 0,
        })
    });
    ACTIVE.with(|a| a.set(Some(project.id)));
    true
}

/// Loads the stored clusters of the ids the batch does not hold yet: the id's canonical
/// through the stamping trigger's probe (its snapshot is renewed after the invalidations
/// accepted under the lock and after this backend's own writes), the cluster's facts by its
/// primary key. The exclusive lock keeps what was read true until commit.
fn meet(a: &str, b: &str) -> Result<(), IdentityError> {
    for id in [a, b] {
        let (project_id, statement, held) = BATCH.with(|batch| {
            let batch = batch.borrow();
            let batch = batch.as_ref().expect("a batch is running");
            let (_, subxact, cid) = batch.statement;
            (batch.project_id, (cid, subxact), batch.graph.holds(id))
        });
        if held {
            continue;
        }
        let canonical = crate::store::probe::canonical_string(
            crate::store::probe::Use::Stamp,
            statement,
            project_id,
            id,
        )?;
        let Some(canonical) = canonical else {
            // New to the store: the graph makes it when an operation joins it.
            continue;
        };
        BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            let batch = batch.as_mut().expect("a batch is running");
            // The cluster's facts, unless the graph holds it already (then its own are newer).
            let (size, identified) = if batch.graph.holds(&canonical) {
                (1, false)
            } else {
                batch
                    .clusters
                    .facts(project_id, &canonical)
                    .unwrap_or((1, false))
            };
            batch.graph.load(id, &canonical, size, identified);
        });
    }
    Ok(())
}

/// `store::execute` in the batch: applies the event's operations in memory, in order, and
/// returns its refusals as data for the caller to record.
pub fn execute(
    project: &Project,
    plan: EventPlan,
    source: &Source,
) -> Result<Executed, IdentityError> {
    let settings = &project.settings;
    let out = super::execute_with(plan, |planned| {
        let (op, a, b) = (planned.op, planned.a.as_deref(), planned.b.as_deref());
        Ok(match rules::precheck(op, settings, a, b) {
            Err(refused) => Err(refused),
            Ok(()) => {
                let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
                // A failed read is an error of the statement, not a refusal of the event.
                meet(a, b)?;
                BATCH.with(|batch| {
                    let mut batch = batch.borrow_mut();
                    let batch = batch.as_mut().expect("a batch is running");
                    let joins = batch.graph.joins.len();
                    let result = batch.graph.apply(settings, op, Some(a), Some(b));
                    if batch.graph.joins.len() > joins {
                        batch.sources.push(Provenance::of(source));
                    }
                    result.map(|_| ())
                })
            }
        })
    })?;
    BATCH.with(|batch| {
        if let Some(batch) = batch.borrow_mut().as_mut() {
            batch.events += 1;
        }
    });
    Ok(out)
}

/// The canonical id, as the batch has it now, of the stored answer `stored` (an id's stored
/// canonical, or the id itself when unknown) in `project_id`; None when the batch did not
/// change it. Asked by the trigger for every row it stamps while a batch runs.
pub fn canonical_now(project_id: i32, stored: &[u8]) -> Option<crate::sync::cache::Canonical> {
    if ACTIVE.with(|a| a.get()) != Some(project_id) {
        return None;
    }
    BATCH.with(|batch| {
        let mut batch = batch.try_borrow_mut().ok()?;
        let batch = batch.as_mut()?;
        let now = batch.graph.canonical_of(stored)?;
        (now.as_bytes() != stored).then(|| crate::sync::cache::Canonical::new(now.as_bytes()))
    })
}

/// Forgets the batch (its statement failed, or it was written).
fn forget() -> Option<Batch> {
    ACTIVE.with(|a| a.set(None));
    BATCH.with(|b| b.try_borrow_mut().ok().and_then(|mut b| b.take()))
}

/// Writes the batch waiting to be written, if any (the store then holds what the batch
/// decided, and the stamp cache redirects what it absorbed).
pub fn flush() {
    // SAFETY: asks whether this backend runs in parallel mode (which allows no writes: a
    // parallel query's workers hold no batch, and its leader writes once it is over).
    if pending_statement().is_none() || unsafe { pg_sys::IsInParallelMode() } {
        return;
    }
    let Some(mut batch) = forget() else { return };
    if batch.graph.joins.is_empty() {
        return;
    }
    let here = crate::pg::current_subxact();
    let (lxid, statement_subxact, _) = batch.statement;
    if here != statement_subxact && lxid == crate::pg::local_xid() {
        // Written from a nested subtransaction: if that one rolls back, the rows stay
        // without their joins (see on_subxact).
        EARLY.with(|e| {
            e.borrow_mut()
                .push((lxid, here, statement_subxact, batch.events))
        });
    }
    let pid = batch.project_id;
    crate::store::own_write(pid, || {
        as_owner(|| {
            Spi::connect_mut(|c| {
                write_statement_batch(c, batch.project_id, &mut batch.graph, &batch.sources)
            })
        });
        let g = &batch.graph;
        let redirects = g
            .joins
            .iter()
            .map(|j| (g.name(j.absorbed).to_string(), g.name(j.kept).to_string()))
            .collect();
        ((), redirects)
    });
}

/// Refuses the commit of a transaction whose early-written batch rolled back (see EARLY).
fn refuse_lost() {
    let lxid = crate::pg::local_xid();
    if let Some((x, _, events)) = LOST.with(|l| l.get()) {
        if x == lxid {
            LOST.with(|l| l.set(None));
            crate::pg::raise(IdentityError::BatchRolledBack { events });
        }
    }
}

/// Before a commit or prepare (the xact callback, api/hooks.rs): the batch is written at the
/// latest (a statement whose end was not seen: a trigger fired outside the executor, as
/// logical replication's apply does), and a transaction whose early-written batch rolled back
/// is refused.
pub fn before_commit() {
    flush();
    refuse_lost();
}

/// When the transaction ends (commit, abort or prepare): the batch and the record of early
/// writes are forgotten.
pub fn at_transaction_end() {
    forget();
    EARLY.with(|e| e.borrow_mut().clear());
    LOST.with(|l| l.set(None));
}

/// When subtransaction `sub` of local transaction `lxid` aborts: its statement's batch goes
/// with it, and an early write it rolled back is noticed (see EARLY and LOST).
pub fn at_subtransaction_abort(lxid: u32, sub: pg_sys::SubTransactionId) {
    if pending_statement().is_some_and(|(x, s, _)| x == lxid && s == sub) {
        // The batch's statement failed: its rows are gone, and so is the batch.
        forget();
    }
    EARLY.with(|e| {
        e.borrow_mut()
            .retain(|&(x, written_in, statement_subxact, events)| {
                if x != lxid {
                    return false;
                }
                if written_in == sub && statement_subxact != sub {
                    // The write rolled back, the statement's rows did not.
                    LOST.with(|l| {
                        if l.get().is_none() {
                            l.set(Some((x, statement_subxact, events)))
                        }
                    });
                    return false;
                }
                // The statement rolled back too: nothing is lost.
                statement_subxact != sub
            })
    });
    if LOST
        .with(|l| l.get())
        .is_some_and(|(x, s, _)| x == lxid && s == sub)
    {
        // The statement whose joins were lost rolled back too: nothing is lost.
        LOST.with(|l| l.set(None));
    }
}

/// When subtransaction `sub` of local transaction `lxid` commits into `parent`.
pub fn at_subtransaction_commit(
    lxid: u32,
    sub: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
) {
    // What was this subtransaction's is now its parent's.
    EARLY.with(|e| {
        for entry in e.borrow_mut().iter_mut() {
            if entry.0 == lxid && entry.1 == sub {
                entry.1 = parent;
            }
            if entry.0 == lxid && entry.2 == sub {
                entry.2 = parent;
            }
        }
        // Written in the statement's own subtransaction after all: safe.
        e.borrow_mut().retain(|entry| entry.1 != entry.2);
    });
    LOST.with(|l| {
        if let Some((x, s, events)) = l.get() {
            if x == lxid && s == sub {
                l.set(Some((x, parent, events)));
            }
        }
    });
    BATCH.with(|b| {
        if let Ok(mut b) = b.try_borrow_mut() {
            if let Some(batch) = b.as_mut() {
                if batch.statement.0 == lxid && batch.statement.1 == sub {
                    batch.statement.1 = parent;
                }
            }
        }
    });
}
