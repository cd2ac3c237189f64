//! The engine: identity events executed, online (join.rs, under the locks) or in a statement's
//! batch (batch.rs, in memory, written when the statement ends); a staged batch moved into an
//! attached table set-wise (staged.rs, `mp_ingest`).

use crate::core::error::IdentityError;
use crate::core::ingest::{EventPlan, PlannedOp, Refusal};
use crate::core::rules::Project;
use crate::store::Source;

pub mod backfill;
pub mod batch;
pub mod join;
pub mod maintain;
pub mod mixpanel;
pub mod retract;
pub mod staged;

pub use join::{apply, execute, Executed};

/// A project by token, or `UnknownProject`. Every function that reads or writes the graph asks
/// for its project first: a statement's identity events still held in memory (batch.rs) are
/// written before it reads.
pub fn project(token: Option<&str>) -> Result<Project, IdentityError> {
    let token = token.ok_or(IdentityError::NullId { field: "project" })?;
    batch::flush();
    crate::store::cached_project(Some(token))
}

/// Only the id of a project by token (the `mp_resolve` path: no settings cloned on a hit),
/// after the same write of a statement's batch.
pub fn project_id(token: &str) -> Result<i32, IdentityError> {
    batch::flush();
    crate::store::cached_project_id(token)
}

/// The one way into the engine for an identity event (the trigger, the Citus queue, Segment,
/// `mp_track`): executes its plan, in the statement's batch when `statement` (the trigger's
/// (command id, subtransaction)) takes part in one (`batch::take_part`), else online; then
/// records its refusals, with the table and row `refused_row` names (asked only when there are
/// some). Only a retryable error, or a failed read of the batch, is returned as an error.
pub fn ingest(
    project: &Project,
    plan: EventPlan,
    source: &Source,
    statement: Option<(u32, u32)>,
    refused_row: impl FnOnce() -> (Option<pgrx::pg_sys::Oid>, serde_json::Value),
) -> Result<Executed, IdentityError> {
    let batched = match statement {
        Some(statement) => !plan.ops.is_empty() && batch::take_part(project, statement),
        None => false,
    };
    let done = if batched {
        batch::execute(project, plan, source)?
    } else {
        execute(project, plan, source)?
    };
    {
        use crate::sync::stats::{count, Counter};
        count(project.id, Counter::EventsApplied, 1);
        count(project.id, Counter::Refused, done.refusals.len() as u64);
    }
    if !done.refusals.is_empty() {
        let (table, row) = refused_row();
        crate::store::record_refusals(Some(project.id), &done.refusals, table, &row);
    }
    Ok(done)
}

/// The one execute loop, online (join.rs) or in a statement's batch (batch.rs): the plan's
/// refusals first (its ignored note, then those that fail the event), then each operation in
/// order through `apply_op`, whose inner error is a refusal of that operation and whose outer
/// error stops the event (a retryable conflict, a failed read).
pub fn execute_with(
    plan: EventPlan,
    mut apply_op: impl FnMut(&PlannedOp) -> Result<Result<(), IdentityError>, IdentityError>,
) -> Result<Executed, IdentityError> {
    let mut out = Executed::default();
    out.refusals.extend(plan.ignored);
    for refusal in plan.refusals {
        out.failed.get_or_insert_with(|| refusal.error.clone());
        out.refusals.push(refusal);
    }
    for planned in plan.ops {
        match apply_op(&planned)? {
            Ok(()) => out.changed = true,
            Err(err) => {
                out.failed.get_or_insert_with(|| err.clone());
                out.refusals.push(Refusal {
                    error: err,
                    operation: planned.op.as_str(),
                    a: planned.a,
                    b: planned.b,
                });
            }
        }
    }
    Ok(out)
}
