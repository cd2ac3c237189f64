//! One pass of a database's maintenance worker (api/worker.rs runs it in a loop, one
//! transaction a pass): on Citus, this node's queue of identity events applied (as
//! mp_apply_pending applies it, then the attached tables restamped); then a batch of the stale
//! canonical ids that joins and splits of keep_fresh projects queued (store::queue_stale), each
//! table's rows stamped with them restamped as its owner, once the table's writers in flight
//! ended (rows they stamped before the join are then visible to the restamp). Everything a pass takes it takes in
//! its transaction: a pass that does not commit (an error, `pg_ctl -m immediate`) leaves the
//! queues as they were, and the next pass does the work once.

use std::collections::BTreeMap;

use pgrx::prelude::*;

use crate::pg::OrBug;
use crate::sync::stats::{WorkerSlot, WorkerState};

/// What a pass found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// The database has no identity_merge (or not the SQL of this library yet): the worker exits.
    NoExtension,
    /// Done; `more`: a batch was full, another pass goes at once; `worked`: it applied or
    /// restamped something; `restamp`: the canonical ids the queued events it applied absorbed,
    /// whose rows `restamp_after_apply` restamps once the pass committed.
    Done {
        more: bool,
        worked: bool,
        restamp: Vec<String>,
    },
}

/// One pass, in the caller's transaction.
pub fn pass(slot: &WorkerSlot, batch: i64) -> Pass {
    let ready = Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'identity_merge') \
            AND pg_catalog.to_regclass('identity_merge.stale_stamps') IS NOT NULL",
    )
    .or_bug("finding the extension")
    .unwrap_or(false);
    if !ready {
        return Pass::NoExtension;
    }
    let mut absorbed: Vec<String> = Vec::new();
    let mut applied_any = false;
    if crate::sync::placement::distributed() {
        slot.set_state(WorkerState::Applying);
        let logged_before = crate::store::last_merge_seq();
        // This node's queue, oldest first, through the plan and rules of mp_apply_pending.
        let applied = Spi::get_one::<i64>("SELECT identity_merge._apply_queue()")
            .or_bug("applying the queue")
            .unwrap_or(0);
        if applied > 0 {
            slot.applied(applied as u64);
            // The canonical ids its joins absorbed (and any other node's since: restamping
            // those again changes nothing): the stamps to restamp once this pass committed.
            absorbed = Spi::connect(|c| {
                c.select(
                    "SELECT DISTINCT absorbed_canonical::text FROM identity_merge.merge_log WHERE seq OPERATOR(pg_catalog.>) $1",
                    None,
                    &[logged_before.into()],
                )
                .or_bug("reading the merge log")
                .filter_map(|r| r.get::<String>(1).ok().flatten())
                .collect()
            });
        }
        applied_any = applied > 0;
    }
    slot.set_state(WorkerState::Restamping);
    let taken: Vec<(i32, String)> = Spi::connect_mut(|c| {
        c.update(
            "DELETE FROM identity_merge.stale_stamps s WHERE s.ctid OPERATOR(pg_catalog.=) ANY (ARRAY( \
               SELECT x.ctid FROM identity_merge.stale_stamps x ORDER BY x.queued_at LIMIT $1 FOR UPDATE SKIP LOCKED)) \
             RETURNING s.project_id, s.canonical::text",
            None,
            &[batch.into()],
        )
        .or_bug("taking stale stamps")
        .filter_map(|r| Some((r.get::<i32>(1).ok()??, r.get::<String>(2).ok()??)))
        .collect()
    });
    let more = taken.len() as i64 >= batch;
    let mut worked = !taken.is_empty();
    let mut by_project: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    for (project, canonical) in taken {
        by_project.entry(project).or_default().push(canonical);
    }
    let mut restamped = 0i64;
    for (project, mut stale) in by_project {
        stale.sort();
        stale.dedup();
        let tables: Vec<pg_sys::Oid> = Spi::connect(|c| {
            c.select(
                "SELECT a.events::pg_catalog.oid FROM identity_merge.attachments a \
                   JOIN identity_merge.projects p USING (project_id) \
                  WHERE a.project_id OPERATOR(pg_catalog.=) $1 AND a.keep_fresh AND p.mode OPERATOR(pg_catalog.<>) 'legacy'",
                None,
                &[project.into()],
            )
            .or_bug("reading the keep_fresh tables")
            .filter_map(|r| r.get::<pg_sys::Oid>(1).ok().flatten())
            .collect()
        });
        let stale: Vec<Option<String>> = stale.into_iter().map(Some).collect();
        for table in tables {
            // A transaction inserting into the table may have stamped rows before the join
            // committed and not be committed yet: the restamp below would not see them, and
            // their stale canonical is taken now. Its writers in flight are waited for (as
            // CREATE INDEX CONCURRENTLY waits); one that starts later stamps with a snapshot
            // taken after its lock, which sees the join (store/probe.rs, the ring).
            crate::pg::owner::wait_for_writers(crate::store::table_and_partitions(table));
            restamped += Spi::get_one_with_args::<i64>(
                "SELECT identity_merge._restamp_canonicals($1, $2)",
                &[table.into(), stale.clone().into()],
            )
            .or_bug("restamping a keep_fresh table")
            .unwrap_or(0);
        }
        slot.restamped(restamped.max(0) as u64);
    }
    slot.set_state(WorkerState::Idle);
    worked |= applied_any;
    Pass::Done {
        more,
        worked,
        restamp: absorbed,
    }
}

/// After a pass that applied this node's queue committed: the rows of every attached table of
/// a project that is not legacy stamped with the canonical ids its joins absorbed restamped (as
/// mp_apply_pending's restamp would find them), by the coordinator, which holds the registry of
/// attached tables (from a worker node, through run_command_on_coordinator, whose own
/// transaction sees the committed joins).
pub fn restamp_after_apply(absorbed: &[String]) {
    let on_coordinator = Spi::get_one::<bool>("SELECT identity_merge._on_coordinator()")
        .or_bug("finding the coordinator")
        .unwrap_or(true);
    let stale: Vec<Option<String>> = absorbed.iter().cloned().map(Some).collect();
    if on_coordinator {
        Spi::run_with_args(
            "SELECT identity_merge._restamp_attached($1)",
            &[stale.into()],
        )
        .or_bug("restamping after the queue");
    } else {
        Spi::run_with_args(
            "SELECT r.success FROM pg_catalog.run_command_on_coordinator( \
               pg_catalog.format('SELECT identity_merge._restamp_attached(%L::text[])', $1::text[])) r",
            &[stale.into()],
        )
        .or_bug("restamping after the queue");
    }
}
