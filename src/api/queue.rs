//! identity_merge on a Citus cluster (docs/scaling.md): what changes once `mp_distribute` made
//! the identity state reference tables (a copy on every node).
//!
//! - **Where the rows are.** The tables keep their names on every node but become empty shells;
//!   the rows are in each node's placement, `identities_<shardid>`. The trigger's direct index
//!   probes (probe.rs) must open the placement: `identities()` says which relations to open,
//!   worked out once per relations epoch (Citus's metadata changes invalidate the table).
//! - **Shards.** A trigger firing on a shard runs inside a query the coordinator (or another
//!   node) sent; from there Citus refuses the remote writes that applying an identity event to
//!   the replicated state needs. `shard_of` tells the trigger so, and `queue` keeps the event in
//!   this node's `identity_merge.pending_events`, committed with the row; `_apply_queue` applies
//!   a node's queue later (`mp_apply_pending`), through the same plan and rules as the trigger.
//!
//! The cluster-wide write lock every identity writer takes on Citus is in locks.rs.

use std::cell::RefCell;

use pgrx::prelude::*;
use serde_json::json;

use crate::core::error::IdentityError;
use crate::core::ingest;
use crate::pg::{as_owner, OrBug};
use crate::store;

/// The relations the lookups open: the table and its primary key index, on this node.
#[derive(Clone, Copy, Debug)]
pub struct Identities {
    pub heap: pg_sys::Oid,
    pub index: pg_sys::Oid,
    /// Whether the identity state is distributed (the relations are a placement).
    pub distributed: bool,
}

thread_local! {
    /// (relations epoch, identities shell oid, what was found).
    static LAYOUT: RefCell<Option<(u64, pg_sys::Oid, Identities)>> = const { RefCell::new(None) };
}

fn catalog_relation(name: &std::ffi::CStr) -> bool {
    // SAFETY: a syscache lookup of a name in pg_catalog; InvalidOid when absent.
    unsafe {
        pg_sys::get_relname_relid(
            name.as_ptr(),
            pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE),
        ) != pg_sys::InvalidOid
    }
}

/// The shard id of a distributed (or reference) table's single or first shard, if Citus knows it.
fn first_shard(table: pg_sys::Oid) -> Option<i64> {
    if !catalog_relation(c"pg_dist_shard") {
        return None;
    }
    Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.min(shardid) FROM pg_catalog.pg_dist_shard WHERE logicalrelid OPERATOR(pg_catalog.=) $1",
        &[table.into()],
    )
    .or_bug("reading pg_dist_shard")
}

/// The shard id of the replicated table whose shell (the table as named in identity_merge) is
/// `shell`; None on one server. Asked of the catalog once per relations epoch (Citus's metadata
/// changes invalidate the table, and move the epoch).
fn shard_of_shell(shell: pg_sys::Oid) -> Option<i64> {
    crate::sync::cache::ensure_registered();
    let epoch = crate::sync::cache::epochs().1;
    let known = SHARDS.with(|s| {
        s.borrow()
            .as_ref()
            .filter(|(e, _)| *e == epoch)
            .and_then(|(_, shards)| shards.get(&shell).copied())
    });
    if let Some(shard) = known {
        return shard;
    }
    let shard = first_shard(shell);
    SHARDS.with(|s| {
        let mut s = s.borrow_mut();
        if s.as_ref().is_none_or(|(e, _)| *e != epoch) {
            *s = Some((epoch, std::collections::HashMap::new()));
        }
        s.as_mut().expect("set above").1.insert(shell, shard);
    });
    shard
}

thread_local! {
    /// (relations epoch, replicated table's shell oid -> its shard id, None on one server).
    static SHARDS: RefCell<Option<(u64, std::collections::HashMap<pg_sys::Oid, Option<i64>>)>> =
        const { RefCell::new(None) };
}

/// Which relations hold `identity_merge.identities` on this node.
pub fn identities() -> Result<Identities, IdentityError> {
    crate::sync::cache::ensure_registered();
    let shell = crate::pg::required_relation(c"identities")?;
    let epoch = crate::sync::cache::epochs().1;
    if let Some(found) = LAYOUT.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|(e, s, _)| *e == epoch && *s == shell)
            .map(|(_, _, found)| *found)
    }) {
        return Ok(found);
    }
    let found = match shard_of_shell(shell) {
        None => Identities {
            heap: shell,
            index: crate::pg::required_relation(c"identities_pkey")?,
            distributed: false,
        },
        Some(shard) => {
            let placement = |name: String| {
                let name = std::ffi::CString::new(name).or_bug("naming a placement");
                crate::pg::relation_oid(&name).ok_or_else(|| IdentityError::MissingObject {
                    what: format!(
                        "relation identity_merge.{} (this node's copy of the replicated identities; run SELECT mp_distribute() on the coordinator after adding a node)",
                        name.to_string_lossy()
                    ),
                })
            };
            Identities {
                heap: placement(format!("identities_{shard}"))?,
                index: placement(format!("identities_pkey_{shard}"))?,
                distributed: true,
            }
        }
    };
    LAYOUT.with(|l| *l.borrow_mut() = Some((epoch, shell, found)));
    Ok(found)
}

/// On Citus, the qualified name of this node's copy of the replicated table `table` (in schema
/// identity_merge), to read it with a plain query: from inside a query Citus sent to a shard
/// (`SELECT mp_resolve(distinct_id) FROM events` runs on the workers), Citus refuses any query of
/// a distributed or reference table, but this node's placement is an ordinary table. None on one
/// server.
pub fn placement(table: &str) -> Result<Option<String>, IdentityError> {
    if !distributed() {
        return Ok(None);
    }
    let name = std::ffi::CString::new(table).or_bug("naming a table");
    let shell = crate::pg::required_relation(&name)?;
    let shard = shard_of_shell(shell).ok_or_else(|| IdentityError::MissingObject {
        what: format!("the shard of replicated table identity_merge.{table}"),
    })?;
    Ok(Some(format!("identity_merge.{table}_{shard}")))
}

/// Whether the identity state is distributed (false when Citus is absent).
pub fn distributed() -> bool {
    identities().map(|i| i.distributed).unwrap_or(false)
}

/// When `table` (named `name`) is a shard of a distributed table: that table's qualified name.
/// Asked once per trigger set-up (trigger.rs caches it with the rest of the table's facts).
pub fn shard_of(table: pg_sys::Oid, name: &str) -> Option<String> {
    if !distributed() {
        return None;
    }
    let (_, suffix) = name.rsplit_once('_')?;
    let shard: i64 = suffix.parse().ok()?;
    let logical = Spi::get_one_with_args::<String>(
        "SELECT s.logicalrelid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_dist_shard s \
          WHERE s.shardid OPERATOR(pg_catalog.=) $1 \
            AND s.logicalrelid OPERATOR(pg_catalog.<>) $2 \
            AND pg_catalog.format('%s_%s', (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) s.logicalrelid), s.shardid) \
                OPERATOR(pg_catalog.=) $3",
        &[shard.into(), table.into(), name.into()],
    )
    .or_bug("reading pg_dist_shard")?;
    Some(logical)
}

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

const APPLY_BATCH: i64 = 5000;

struct Pending {
    seq: i64,
    project_id: i32,
    events: String,
    distinct_id: Option<String>,
    event: Option<String>,
    properties: serde_json::Value,
    device_id: Option<String>,
    user_id: Option<String>,
    role: String,
}

/// Takes up to `APPLY_BATCH` queued events (oldest first; rows another applier holds are
/// skipped), deleting them: they are applied in the same transaction.
fn take_batch() -> Vec<Pending> {
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

fn project_token(project_id: i32) -> Option<String> {
    Spi::get_one_with_args::<String>(
        "SELECT token FROM identity_merge.projects WHERE project_id OPERATOR(pg_catalog.=) $1",
        &[project_id.into()],
    )
    .or_bug("reading a project")
}

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
    let project = store::project(Some(&token))?;
    let properties = p.properties.clone();
    let plan = ingest::plan_event(
        &project,
        p.event.as_deref(),
        &move || properties.clone(),
        p.device_id.clone(),
        p.user_id.clone(),
    );
    let source = store::Source {
        kind: "trigger",
        detail: json!({
            "table": p.events,
            "distinct_id": p.distinct_id,
            "event": p.event,
            "queued_by": p.role,
        }),
    };
    let done = store::with_source(source, || store::execute(&project, plan))?;
    if !done.refusals.is_empty() {
        let row = row_of(&p.events, p.distinct_id, p.event.as_deref());
        store::record_refusals(Some(project.id), &done.refusals, None, &row);
    }
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
