//! The entry point of the Citus queue (docs/scaling.md): `_apply_queue` applies a node's queued
//! identity events (store/queue.rs) through the same plan and rules as the trigger on one
//! server (`mp_apply_pending` calls it on every node).

use pgrx::prelude::*;
use serde_json::json;

use crate::core::error::IdentityError;
use crate::core::ingest;
use crate::pg::as_owner;
use crate::store::queue::{project_token, take_batch, Pending};

/// What a refused row's rejection keeps on Citus. The rejections are replicated, and their
/// `source_table` is a regclass, one node's oid: on another node it names another table or none,
/// while the row-level security on rejections shows a row to the roles that may read its table.
/// So the table goes in the row by name, with the row's ids and event but not its properties
/// (which a row without a table would show every reader); the properties stay in the events
/// table, for the roles that may read it.
pub fn row_of(table: &str, distinct_id: Option<String>, event: Option<&str>) -> serde_json::Value {
    json!({
        "table": table,
        "distinct_id": distinct_id,
        "event": event.unwrap_or_default(),
    })
}

/// Applies one queued event as the trigger would have on a single server: the same plan, the
/// joins logged with the row's table and ids, refusals recorded with the row.
fn apply_one(p: Pending) -> Result<(), IdentityError> {
    let Some(token) = as_owner(|| project_token(p.project_id)) else {
        // The project was dropped since: nothing to join into.
        return Ok(());
    };
    let project = crate::engine::project(Some(&token))?;
    let properties = p.properties.clone();
    let plan = ingest::plan_event(
        &project,
        p.event.as_deref(),
        &move || properties.clone(),
        p.device_id.clone(),
        p.user_id.clone(),
    );
    let source = crate::store::Source {
        kind: "trigger",
        detail: json!({
            "table": p.events,
            "distinct_id": p.distinct_id,
            "event": p.event,
            "queued_by": p.role,
        }),
    };
    crate::engine::ingest(&project, plan, &source, None, || {
        (None, row_of(&p.events, p.distinct_id, p.event.as_deref()))
    })?;
    Ok(())
}

#[pg_schema]
mod identity_merge {
    use pgrx::prelude::*;

    /// Applies this node's queued identity events (called on every node by mp_apply_pending);
    /// returns how many.
    #[pg_extern(volatile, parallel_unsafe, name = "_apply_queue")]
    fn apply_queue() -> i64 {
        let mut applied = 0i64;
        loop {
            let batch = crate::pg::as_owner(super::take_batch);
            if batch.is_empty() {
                return applied;
            }
            for p in batch {
                super::apply_one(p).unwrap_or_else(|e| crate::pg::raise(e));
                applied += 1;
            }
        }
    }
}
