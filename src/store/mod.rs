//! The extension's statements: SPI with plans prepared once per backend (no per-call
//! planning), the project cache, a join's reads (`read_sides`, direct probes where allowed)
//! and write plans, `own_write` (the caches kept current through this backend's own joins),
//! and the record of refusals. The join protocol that runs them under the locks is
//! engine/join.rs.

pub mod bulk;
pub mod mixpanel;
pub mod probe;
pub mod queue;

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;

use std::collections::HashMap;

use crate::core::error::{IdentityError, Reason};
use crate::core::ingest::Refusal;
use crate::core::rules::{AnonIdFormat, Mode, Project, RuleSettings, Side};
use crate::pg::{as_owner, OrBug};

// Every statement qualifies its tables and operators so that objects a user creates in their
// own schemas can never be picked up, whatever the caller's search_path.
// keep_fresh through the row's JSON: a 0.1.14 library keeps working on a database still at older
// SQL, whose projects have no such column (then false).
const SQL_PROJECT: &str = "SELECT project_id, mode, max_cluster_size, anon_id_format, blocked_ids, \
            coalesce((pg_catalog.to_jsonb(p.*) OPERATOR(pg_catalog.->>) 'keep_fresh')::boolean, false) \
     FROM identity_merge.projects p WHERE token OPERATOR(pg_catalog.=) $1";
// Two plain primary-key probes, each with its cluster's row through a LATERAL subquery that
// OFFSET 0 keeps from being flattened into a join: this stays index probes whatever plan the plan
// cache settles on (a generic plan of `= ANY(...)` or of a join can turn into a scan of the whole
// project once it is large).
const SQL_SIDE_COLUMNS: &str = "SELECT i.distinct_id, i.canonical_id, c.size, c.identified \
     FROM identity_merge.identities i \
     LEFT JOIN LATERAL (SELECT c.size, c.identified FROM identity_merge.clusters c \
                         WHERE c.project_id OPERATOR(pg_catalog.=) $1 \
                           AND c.canonical_id OPERATOR(pg_catalog.=) i.canonical_id OFFSET 0) c ON true \
     WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.distinct_id OPERATOR(pg_catalog.=) ";
// Writes one join decided by `rules::decide`, under both clusters' locks, in one statement (one
// executor run instead of a PL/pgSQL function's four), with only the parts its case needs (one
// plan per case: whether the kept and the absorbed cluster exist yet): re-points the absorbed
// cluster's ids and drops its row, or adds the absorbed id; adds the kept id when new; updates or
// adds the kept cluster; logs the join with how many ids moved. Parameters, the same for every
// case: project, operation, id_a, id_b, kept, kept exists, absorbed, absorbed exists, new size,
// identified, (provenance: source, detail, role,) ids moved. (It replaced the PL/pgSQL identity_merge._join, dropped in 0.1.3.)
fn join_sql(kept_exists: bool, absorbed_exists: bool, provenance: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    if absorbed_exists {
        parts.push(
            "moved AS (UPDATE identity_merge.identities SET canonical_id = $5 \
              WHERE project_id OPERATOR(pg_catalog.=) $1 AND canonical_id OPERATOR(pg_catalog.=) $7)"
                .into(),
        );
        parts.push(
            "dropped AS (DELETE FROM identity_merge.clusters \
              WHERE project_id OPERATOR(pg_catalog.=) $1 AND canonical_id OPERATOR(pg_catalog.=) $7)"
                .into(),
        );
    }
    let new_ids: Vec<&str> = [(!absorbed_exists, "($7)"), (!kept_exists, "($5)")]
        .into_iter()
        .filter_map(|(new, id)| new.then_some(id))
        .collect();
    if !new_ids.is_empty() {
        parts.push(format!(
            "added AS (INSERT INTO identity_merge.identities (project_id, distinct_id, canonical_id) \
              SELECT $1, v.id, $5 FROM (VALUES {}) v(id))",
            new_ids.join(", ")
        ));
    }
    parts.push(if kept_exists {
        "kept_cluster AS (UPDATE identity_merge.clusters \
          SET size = $9, identified = $10, updated_at = pg_catalog.now() \
          WHERE project_id OPERATOR(pg_catalog.=) $1 AND canonical_id OPERATOR(pg_catalog.=) $5)"
            .into()
    } else {
        "kept_cluster AS (INSERT INTO identity_merge.clusters (project_id, canonical_id, size, identified) \
          VALUES ($1, $5, $9, $10))"
            .into()
    });
    // The absorbed cluster's size is how many ids move ($14): a count of the UPDATE's rows
    // would be a subquery in the VALUES, which Citus cannot route to a reference table.
    let moved = "$14";
    // $11-$13 (source, detail, role) go to the provenance columns when the installed SQL has
    // them (0.1.4 on); a database still on older SQL (library updated, ALTER EXTENSION UPDATE
    // not run yet) gets the joins without provenance.
    let (columns, values) = if provenance {
        (
            ", source, source_detail, role_name, transaction_id",
            ", $11, $12, $13, pg_catalog.pg_current_xact_id()",
        )
    } else {
        ("", "")
    };
    format!(
        "WITH {} INSERT INTO identity_merge.merge_log \
         (project_id, operation, id_a, id_b, kept_canonical, absorbed_canonical, moved_ids{columns}) \
         VALUES ($1, $2, $3, $4, $5, $7, {moved}{values})",
        parts.join(", ")
    )
}

const SQL_REJECT: &str = "INSERT INTO identity_merge.rejections \
     (project_id, reason_code, message, operation, id_a, id_b, source_table, source_row) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Kept plans, prepared on first use in this backend.
pub struct Plans {
    pub project: OwnedPreparedStatement,
    pub sides: OwnedPreparedStatement,
    /// By case: `[kept exists as usize * 2 + absorbed exists as usize]`.
    pub join: [OwnedPreparedStatement; 4],
    pub reject: OwnedPreparedStatement,
}

thread_local! {
    static PLANS: RefCell<Option<std::rc::Rc<Plans>>> = const { RefCell::new(None) };
}

/// Whether the installed SQL's table `relation` (in identity_merge) has `column`: the library
/// also runs with the SQL of older versions until ALTER EXTENSION UPDATE.
fn installed_column(relation: &std::ffi::CStr, column: &std::ffi::CStr) -> bool {
    crate::pg::relation_oid(relation).is_some_and(|oid| crate::pg::has_column(oid, column))
}

/// Whether the installed SQL has merge_log's provenance columns (0.1.4 on).
pub fn merge_log_has_provenance() -> bool {
    installed_column(c"merge_log", c"transaction_id")
}

/// Whether the installed SQL has retractions (merge_log.retracted_by, 0.1.4 on).
pub fn merge_log_has_retractions() -> bool {
    installed_column(c"merge_log", c"retracted_by")
}

/// Simplified projects: whether a device's profile from before its link carries over to the
/// person (the project setting carry_device_profile, 0.1.6 on; off with older installed SQL).
pub fn carry_device_profile(project_id: i32) -> bool {
    if !installed_column(c"projects", c"carry_device_profile") {
        return false;
    }
    as_owner(|| {
        Spi::get_one_with_args::<bool>(
            "SELECT carry_device_profile FROM identity_merge.projects WHERE project_id OPERATOR(pg_catalog.=) $1",
            &[project_id.into()],
        )
    })
    .ok()
    .flatten()
    .unwrap_or(false)
}

fn oid(o: pg_sys::BuiltinOid) -> PgOid {
    PgOid::BuiltIn(o)
}

pub fn plans() -> std::rc::Rc<Plans> {
    if let Some(p) = PLANS.with(|p| p.borrow().clone()) {
        return p;
    }
    use pg_sys::BuiltinOid::*;
    let provenance = merge_log_has_provenance();
    let p = Spi::connect(|c| {
        let prep = |sql: &str, args: &[PgOid]| {
            c.prepare_mut(sql, args)
                .or_bug("preparing a statement")
                .keep()
        };
        Plans {
            // Read-only: mp_resolve (parallel safe) looks projects up in parallel workers too.
            project: c
                .prepare(SQL_PROJECT, &[oid(TEXTOID)])
                .or_bug("preparing a statement")
                .keep(),
            sides: prep(
                &format!("{SQL_SIDE_COLUMNS} $2 UNION ALL {SQL_SIDE_COLUMNS} $3"),
                &[oid(INT4OID), oid(TEXTOID), oid(TEXTOID)],
            ),
            join: [(false, false), (false, true), (true, false), (true, true)].map(
                |(kept, absorbed)| {
                    prep(
                        &join_sql(kept, absorbed, provenance),
                        &[
                            oid(INT4OID),
                            oid(TEXTOID),
                            oid(TEXTOID),
                            oid(TEXTOID),
                            oid(TEXTOID),
                            oid(BOOLOID),
                            oid(TEXTOID),
                            oid(BOOLOID),
                            oid(INT4OID),
                            oid(BOOLOID),
                            oid(TEXTOID),
                            oid(JSONBOID),
                            oid(TEXTOID),
                            oid(INT4OID),
                        ],
                    )
                },
            ),
            reject: prep(
                SQL_REJECT,
                &[
                    oid(INT4OID),
                    oid(TEXTOID),
                    oid(TEXTOID),
                    oid(TEXTOID),
                    oid(TEXTOID),
                    oid(TEXTOID),
                    oid(REGCLASSOID),
                    oid(JSONBOID),
                ],
            ),
        }
    });
    let p = std::rc::Rc::new(p);
    PLANS.with(|slot| *slot.borrow_mut() = Some(p.clone()));
    p
}

thread_local! {
    /// Projects by token, valid for one cache generation (a change to projects fires the same
    /// signal as a change to identities: cache.rs).
    static PROJECTS: RefCell<(u64, HashMap<String, Project>)> = RefCell::new((0, HashMap::new()));
}

/// Whether the session lifts the anon id format (`identity_merge.anon_id_format = 'any'`).
fn session_any() -> bool {
    crate::pg::guc::anon_id_format_any()
}

/// A project by token (from the backend's cache when it is current), or `UnknownProject`;
/// `engine::project` writes a statement's batch first, and is what callers use.
/// Invalidations are accepted first, so a project created or changed by a committed
/// transaction is seen.
pub fn cached_project(token: Option<&str>) -> Result<Project, IdentityError> {
    let token = token.ok_or(IdentityError::NullId { field: "project" })?;
    crate::sync::cache::accept_invalidations();
    let generation = crate::sync::cache::generation();
    let hit = PROJECTS.with(|p| {
        let p = p.borrow();
        (p.0 == generation)
            .then(|| p.1.get(token).cloned())
            .flatten()
    });
    let project = match hit {
        Some(project) => project,
        None => {
            let project = load_fresh(|| as_owner(|| load_project(token)))?;
            PROJECTS.with(|p| {
                let mut p = p.borrow_mut();
                if p.0 != generation {
                    *p = (generation, HashMap::new());
                }
                p.1.insert(token.to_string(), project.clone());
            });
            project
        }
    };
    Ok(project.with_session_format(session_any()))
}

/// Only the id of a project by token (the `mp_resolve` path: no settings cloned on a hit).
pub fn cached_project_id(token: &str) -> Result<i32, IdentityError> {
    crate::sync::cache::accept_invalidations();
    let generation = crate::sync::cache::generation();
    let hit = PROJECTS.with(|p| {
        let p = p.borrow();
        (p.0 == generation)
            .then(|| p.1.get(token).map(|project| project.id))
            .flatten()
    });
    match hit {
        Some(id) => Ok(id),
        None => cached_project(Some(token)).map(|p| p.id),
    }
}

/// Runs a project load under a snapshot taken now, after the invalidations just accepted: the
/// statement's own snapshot may predate a committed change whose signal was accepted in the
/// middle of the statement, and the answer is remembered for the generation that includes it.
/// A parallel worker may not take a snapshot; it reads with the leader's (its cache dies with it).
fn load_fresh<R>(load: impl FnOnce() -> R) -> R {
    // SAFETY: asks whether this backend is in parallel mode.
    if unsafe { pg_sys::IsInParallelMode() } {
        return load();
    }
    // SAFETY: pushes a snapshot taken now; it is popped below, or by the abort of an ERROR.
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
    let r = load();
    // SAFETY: pops the snapshot pushed above.
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

/// Loads a project by token from the projects table.
fn load_project(token: &str) -> Result<Project, IdentityError> {
    // On Citus, this node's copy of projects (also from inside a query on a shard).
    let placement = crate::sync::placement::placement("projects")?;
    let p = plans();
    Spi::connect(|c| {
        let rows = match &placement {
            None => c.select(&p.project, Some(1), &[token.into()]),
            Some(table) => c.select(
                &SQL_PROJECT.replace("identity_merge.projects", table),
                Some(1),
                &[token.into()],
            ),
        }
        .or_bug("reading a project");
        if rows.is_empty() {
            return Err(IdentityError::UnknownProject {
                token: token.to_string(),
            });
        }
        let row = rows.first();
        let id: i32 = row.get(1).or_bug("reading a row").or_bug("reading a row");
        let mode: String = row.get(2).or_bug("reading a row").or_bug("reading a row");
        let max: i32 = row.get(3).or_bug("reading a row").or_bug("reading a row");
        let format: String = row.get(4).or_bug("reading a row").or_bug("reading a row");
        let blocked: Vec<Option<String>> = row.get(5).or_bug("reading a row").unwrap_or_default();
        let keep_fresh: bool = row.get(6).or_bug("reading a row").unwrap_or(false);
        let anon_id_format = AnonIdFormat::parse(&format).unwrap_or(AnonIdFormat::UuidV4);
        let mode = Mode::parse(&mode).ok_or_else(|| IdentityError::Internal {
            what: format!("project {token:?} has the unknown mode {mode:?}"),
        })?;
        Ok(Project {
            id,
            token: token.to_string(),
            mode,
            keep_fresh,
            anon_id_format,
            settings: RuleSettings {
                mode,
                max_cluster_size: max as i64,
                anon_id_format,
                blocked_ids: blocked
                    .into_iter()
                    .flatten()
                    .map(|s| s.trim().to_lowercase())
                    .collect(),
            },
        })
    })
}

/// Runs `write`, this backend's own write of the identity graph, which returns the joins it
/// made as (absorbed canonical, kept canonical) in order; the stamp cache and the project cache
/// stay current through them when no other session's change arrived meanwhile (see
/// `cache::own_change_end`).
///
/// Other sessions learn of the joins through the ring (ring.rs) when this transaction
/// commits; the write sends no change signal unless the transaction outgrew the ring.
pub fn own_write<R>(project_id: i32, write: impl FnOnce() -> (R, Vec<(String, String)>)) -> R {
    let projects_current = PROJECTS.with(|p| p.borrow().0 == crate::sync::cache::generation());
    let before = crate::sync::cache::own_change_begin();
    let quiet = crate::sync::ring::QuietWrite::begin(crate::sync::placement::distributed());
    let (result, joins) = write();
    if quiet.joined(joins.iter().map(|(absorbed, _)| absorbed.as_str())) {
        crate::sync::cache::signal();
    }
    drop(quiet);
    let joined: Vec<(&str, &str)> = joins
        .iter()
        .map(|(x, k)| (x.as_str(), k.as_str()))
        .collect();
    if crate::sync::cache::own_change_end(before, project_id, &joined) && projects_current {
        PROJECTS.with(|p| p.borrow_mut().0 = crate::sync::cache::generation());
    }
    if !joins.is_empty() {
        crate::sync::stats::count(
            project_id,
            crate::sync::stats::Counter::Joins,
            joins.len() as u64,
        );
        queue_stale(
            project_id,
            joins.iter().map(|(absorbed, _)| absorbed.as_str()),
        );
    }
    result
}

/// Whether a table of the project keeps its stamps fresh (the project cache's answer, read
/// again when it has none).
fn keeps_fresh(project_id: i32) -> bool {
    let cached = PROJECTS.with(|p| {
        p.borrow()
            .1
            .values()
            .find(|project| project.id == project_id)
            .map(|project| project.keep_fresh)
    });
    cached.unwrap_or_else(|| {
        // As carry_device_profile reads its setting: false with older installed SQL.
        installed_column(c"projects", c"keep_fresh")
            && as_owner(|| {
                Spi::get_one_with_args::<bool>(
                    "SELECT keep_fresh FROM identity_merge.projects WHERE project_id OPERATOR(pg_catalog.=) $1",
                    &[project_id.into()],
                )
            })
            .ok()
            .flatten()
            .unwrap_or(false)
    })
}

/// The merge log's last seq so far (0 when empty): joins logged after it are newer.
pub fn last_merge_seq() -> i64 {
    as_owner(|| Spi::get_one::<i64>("SELECT coalesce(max(seq), 0) FROM identity_merge.merge_log"))
        .or_bug("reading the merge log")
        .unwrap_or(0)
}

/// A table with its partitions, at every level (the table alone when it has none).
pub fn table_and_partitions(rel: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    Spi::connect(|c| {
        c.select(
            "SELECT x.relid::pg_catalog.oid FROM pg_catalog.pg_partition_tree(($1)::pg_catalog.regclass) x UNION SELECT $1",
            None,
            &[rel.into()],
        )
        .or_bug("reading the partitions of a table")
        .filter_map(|r| r.get::<pg_sys::Oid>(1).ok().flatten())
        .collect()
    })
}

/// Queues canonical ids that stopped being one (absorbed by joins, or of a split cluster) for
/// the maintenance worker, in this transaction, when a table of the project keeps its stamps
/// fresh; its commit wakes the worker. One server only (on Citus, mp_apply_pending restamps).
pub fn queue_stale<'a>(project_id: i32, canonicals: impl Iterator<Item = &'a str>) {
    if crate::sync::placement::distributed() || !keeps_fresh(project_id) {
        return;
    }
    let stale: Vec<Option<String>> = canonicals.map(|c| Some(c.to_string())).collect();
    if stale.is_empty() {
        return;
    }
    as_owner(|| {
        Spi::connect_mut(|c| {
            // A kept plan of its own, prepared on first use (only a database whose SQL has
            // stale_stamps, which keeps_fresh implies, gets here).
            let plan = STALE_PLAN.with(|p| p.borrow().clone());
            let plan = match plan {
                Some(plan) => plan,
                None => {
                    let plan = std::rc::Rc::new(
                        c.prepare_mut(
                            "INSERT INTO identity_merge.stale_stamps (project_id, canonical) SELECT $1, pg_catalog.unnest($2::text[])",
                            &[oid(pg_sys::BuiltinOid::INT4OID), oid(pg_sys::BuiltinOid::TEXTARRAYOID)],
                        )
                        .or_bug("preparing a statement")
                        .keep(),
                    );
                    STALE_PLAN.with(|p| *p.borrow_mut() = Some(plan.clone()));
                    plan
                }
            };
            c.update(&*plan, None, &[project_id.into(), stale.into()]).map(drop)
        })
    })
    .or_bug("queueing stale stamps");
    crate::sync::stats::wake_at_commit();
}

thread_local! {
    /// `queue_stale`'s statement.
    static STALE_PLAN: RefCell<Option<std::rc::Rc<OwnedPreparedStatement>>> = const { RefCell::new(None) };
}

/// Reads the clusters of `a` and `b` (fresh snapshot); `direct`: where
/// `probe::direct_reads_allowed` (asked once per operation), through `read_sides_direct`.
pub fn read_sides(p: &Plans, direct: bool, project_id: i32, a: &str, b: &str) -> (Side, Side) {
    if let Some(sides) = direct
        .then(|| read_sides_direct(project_id, a, b))
        .flatten()
    {
        return sides;
    }
    Spi::connect(|c| {
        let rows = c
            .select(&p.sides, None, &[project_id.into(), a.into(), b.into()])
            .or_bug("reading two clusters");
        let (mut sa, mut sb) = (Side::new_id(a), Side::new_id(b));
        for row in rows {
            let id: String = row.get(1).or_bug("reading a row").or_bug("reading a row");
            let side = Side {
                id: id.clone(),
                canonical: row.get(2).or_bug("reading a row").or_bug("reading a row"),
                size: row
                    .get::<i32>(3)
                    .or_bug("reading a row")
                    .or_bug("reading a row") as i64,
                identified: row.get(4).or_bug("reading a row").or_bug("reading a row"),
                exists: true,
            };
            if id == a {
                sa = side.clone();
            }
            if id == b {
                sb = side;
            }
        }
        (sa, sb)
    })
}

/// `read_sides` through the trigger's index probe of `identities` and a primary-key read of
/// `clusters`, each under a snapshot taken now: what SPI's query reads under READ COMMITTED,
/// without starting an executor (most of an online identity event's time went there). Only
/// where `probe::direct_reads_allowed`; None (a cluster row missing) sends the caller to SPI.
fn read_sides_direct(project_id: i32, a: &str, b: &str) -> Option<(Side, Side)> {
    let [ca, cb] = crate::store::probe::canonicals_now(project_id, [a, b]).ok()?;
    let clusters = crate::store::probe::ClusterReader::new().ok()?;
    let side = |id: &str, canonical: Option<String>| -> Option<Side> {
        let Some(canonical) = canonical else {
            return Some(Side::new_id(id));
        };
        let (size, identified) = clusters.facts(project_id, &canonical)?;
        Some(Side {
            id: id.to_string(),
            canonical,
            size,
            identified,
            exists: true,
        })
    };
    Some((side(a, ca)?, side(b, cb)?))
}

/// Where an identity operation came from: recorded with every join it makes (merge_log's
/// provenance columns, shown by mp_explain). `kind` is 'function', 'trigger', 'track',
/// 'identity_api', 'segment', 'backfill'...; `detail` identifies the call, row or history entry.
/// Passed as an argument to whatever writes joins (engine::apply, engine::execute,
/// engine::batch::execute, retract, backfill).
#[derive(Clone, Debug)]
pub struct Source {
    pub kind: &'static str,
    pub detail: serde_json::Value,
}

/// A source and the role that made the operation: what a merge-log row records.
pub struct Provenance {
    pub kind: &'static str,
    pub detail: serde_json::Value,
    pub role: String,
}

impl Provenance {
    /// `source`, made by the current role.
    pub fn of(source: &Source) -> Provenance {
        Provenance {
            kind: source.kind,
            detail: source.detail.clone(),
            role: crate::pg::current_role_name(),
        }
    }
}

/// Records refusals of one event, each with the event as its source: `source_table` and the
/// row (trigger) or the payload (`mp_track`).
pub fn record_refusals(
    project_id: Option<i32>,
    refusals: &[Refusal],
    source_table: Option<pg_sys::Oid>,
    source_row: &serde_json::Value,
) {
    for r in refusals {
        record_rejection(Rejection {
            project_id,
            reason: r.error.reason().unwrap_or(Reason::MalformedEvent),
            message: r.error.message(),
            operation: Some(r.operation),
            id_a: r.a.as_deref(),
            id_b: r.b.as_deref(),
            source_table,
            source_row: Some(pgrx::JsonB(source_row.clone())),
        });
    }
}

/// What the ingest path records about a refused identity event.
pub struct Rejection<'a> {
    pub project_id: Option<i32>,
    pub reason: Reason,
    pub message: String,
    pub operation: Option<&'a str>,
    pub id_a: Option<&'a str>,
    pub id_b: Option<&'a str>,
    pub source_table: Option<pg_sys::Oid>,
    pub source_row: Option<pgrx::JsonB>,
}

pub fn record_rejection(r: Rejection<'_>) {
    use crate::core::ingest::{scrub_nul, scrub_nul_str};
    let p = plans();
    let (id_a, id_b) = (r.id_a.map(scrub_nul_str), r.id_b.map(scrub_nul_str));
    let message = scrub_nul_str(&r.message);
    let row = r.source_row.map(|j| pgrx::JsonB(scrub_nul(j.0)));
    as_owner(|| {
        Spi::connect_mut(|c| {
            c.update(
                &p.reject,
                None,
                &[
                    r.project_id.into(),
                    r.reason.code().into(),
                    message.as_str().into(),
                    r.operation.into(),
                    id_a.into(),
                    id_b.into(),
                    r.source_table.into(),
                    row.into(),
                ],
            )
            .or_bug("recording a refusal");
        })
    });
}
