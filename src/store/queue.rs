//! The queue of identity events from rows stamped on a Citus shard
//! (`identity_merge.pending_events`, docs/scaling.md): a trigger firing on a shard runs inside
//! a query another node sent, from where Citus refuses the remote writes an identity event
//! needs, so the event is kept in this node's queue, committed with the row, and applied later
//! (api/queue.rs, `mp_apply_pending`).

use pgrx::prelude::*;

use crate::core::ingest;
use crate::pg::{as_owner, OrBug};

/// An identity event from a row stamped on a shard, as `pending_events` keeps it.
pub struct Queued<'a> {
    pub project_id: i32,
    pub events: &'a str,
    pub distinct_id: Option<String>,
    pub event: Option<&'a str>,
    pub properties: serde_json::Value,
    pub device_id: Option<String>,
    pub user_id: Option<String>,
}

/// Keeps the event in this node's queue, in the row's transaction (as the extension owner: the
/// inserting role has no rights on the queue).
pub fn queue(q: Queued<'_>) {
    crate::sync::stats::count(q.project_id, crate::sync::stats::Counter::EventsQueued, 1);
    // The node's maintenance worker applies it once this transaction commits.
    crate::sync::stats::wake_at_commit();
    let role = crate::pg::current_role_name();
    as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO identity_merge.pending_events \
             (project_id, events, distinct_id, event, properties, device_id, user_id, role_name) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                q.project_id.into(),
                q.events.into(),
                q.distinct_id.into(),
                q.event.into(),
                pgrx::JsonB(q.properties).into(),
                q.device_id.into(),
                q.user_id.into(),
                role.as_str().into(),
            ],
        )
        .or_bug("queueing an identity event")
    });
}

/// Whether every operation of a shard row's plan would change nothing: its two ids pass the
/// rules' checks and are already one person here (a repeated login's `$identify`, a Simplified
/// row whose device is linked). Such a row needs no queue entry: applying it would log nothing
/// and record nothing. Any doubt (an id missing, a lookup failing) queues the row.
pub fn all_together(project: &crate::core::rules::Project, ops: &[ingest::PlannedOp]) -> bool {
    ops.iter().all(|planned| {
        let (Some(a), Some(b)) = (planned.a.as_deref(), planned.b.as_deref()) else {
            return false;
        };
        a != b
            && crate::core::rules::precheck(planned.op, &project.settings, Some(a), Some(b)).is_ok()
            && matches!(
                (crate::store::probe::resolve(project.id, a), crate::store::probe::resolve(project.id, b)),
                (Ok(x), Ok(y)) if x == y
            )
    })
}

pub const APPLY_BATCH: i64 = 5000;

pub struct Pending {
    pub seq: i64,
    pub project_id: i32,
    pub events: String,
    pub distinct_id: Option<String>,
    pub event: Option<String>,
    pub properties: serde_json::Value,
    pub device_id: Option<String>,
    pub user_id: Option<String>,
    pub role: String,
}

/// Takes up to `APPLY_BATCH` queued events (oldest first; rows another applier holds are
/// skipped), deleting them: they are applied in the same transaction.
pub fn take_batch() -> Vec<Pending> {
    let mut batch: Vec<Pending> = Spi::connect_mut(|c| {
        c.update(
            "DELETE FROM identity_merge.pending_events q WHERE q.seq OPERATOR(pg_catalog.=) ANY (ARRAY( \
                 SELECT p.seq FROM identity_merge.pending_events p ORDER BY p.seq LIMIT $1 FOR UPDATE SKIP LOCKED)) \
             RETURNING q.seq, q.project_id, q.events, q.distinct_id, q.event, q.properties, q.device_id, q.user_id, q.role_name::pg_catalog.text",
            None,
            &[APPLY_BATCH.into()],
        )
        .or_bug("taking queued identity events")
        .map(|r| Pending {
            seq: r.get(1).or_bug("reading the queue").or_bug("reading the queue"),
            project_id: r.get(2).or_bug("reading the queue").or_bug("reading the queue"),
            events: r.get(3).or_bug("reading the queue").unwrap_or_default(),
            distinct_id: r.get(4).or_bug("reading the queue"),
            event: r.get(5).or_bug("reading the queue"),
            properties: r
                .get::<pgrx::JsonB>(6)
                .or_bug("reading the queue")
                .map(|j| j.0)
                .unwrap_or(serde_json::Value::Null),
            device_id: r.get(7).or_bug("reading the queue"),
            user_id: r.get(8).or_bug("reading the queue"),
            role: r.get(9).or_bug("reading the queue").unwrap_or_default(),
        })
        .collect()
    });
    batch.sort_by_key(|p| p.seq);
    batch
}

pub fn project_token(project_id: i32) -> Option<String> {
    Spi::get_one_with_args::<String>(
        "SELECT token FROM identity_merge.projects WHERE project_id OPERATOR(pg_catalog.=) $1",
        &[project_id.into()],
    )
    .or_bug("reading a project")
}
