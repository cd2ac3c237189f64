//! Reads and writes the identity tables through SPI with plans prepared once per backend
//! (no per-call planning), and runs identity operations under the locking protocol (the locks
//! themselves are locks.rs):
//!
//! 1. read both ids' clusters (a fresh READ COMMITTED snapshot each statement); equal: done,
//! 2. hold the project shared (exclusive once the transaction took many cluster locks: then
//!    read again and write, skipping 3-4),
//! 3. take the lock of each cluster (key = project + canonical, `rules::cluster_lock_key`) in
//!    ascending key order: at once when free, else waiting in a subtransaction,
//! 4. read again: if either id moved to another cluster meanwhile, give the locks back and
//!    start over; else decide with `rules::decide` and write the join in one statement.
//!
//! Every writer of a cluster holds its lock until commit, locks are taken in one global order,
//! and a writer that waits while holding locks from earlier operations is refused with 40001
//! if PostgreSQL finds a deadlock; no id can end in two clusters because re-pointing happens
//! only under both clusters' locks (or the project's exclusive one).

use std::cell::RefCell;

use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgOid;

use crate::error::{IdentityError, Reason};
use crate::rules::{self, AnonIdFormat, Op, Outcome, RuleSettings, Side};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Original,
    Simplified,
}

/// A project and the settings its rules use.
#[derive(Clone, Debug)]
pub struct Project {
    pub id: i32,
    pub token: String,
    pub mode: Mode,
    /// The project's own anon_id_format ('uuid' | 'any'); `settings` also folds in the GUC.
    pub anon_id_format: String,
    pub settings: RuleSettings,
}

// Every statement qualifies its tables and operators so that objects a user creates in their
// own schemas can never be picked up, whatever the caller's search_path.
const SQL_PROJECT: &str = "SELECT project_id, mode, max_cluster_size, anon_id_format, blocked_ids \
     FROM identity_merge.projects WHERE token OPERATOR(pg_catalog.=) $1";
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
// identified. (It replaces the SQL function identity_merge._join, kept for compatibility.)
fn join_sql(kept_exists: bool, absorbed_exists: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    if absorbed_exists {
        parts.push(
            "moved AS (UPDATE identity_merge.identities SET canonical_id = $5 \
              WHERE project_id OPERATOR(pg_catalog.=) $1 AND canonical_id OPERATOR(pg_catalog.=) $7 \
              RETURNING 1)"
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
    let moved = if absorbed_exists {
        "(SELECT pg_catalog.count(*) FROM moved)::integer"
    } else {
        "1"
    };
    format!(
        "WITH {} INSERT INTO identity_merge.merge_log \
         (project_id, operation, id_a, id_b, kept_canonical, absorbed_canonical, moved_ids) \
         VALUES ($1, $2, $3, $4, $5, $7, {moved})",
        parts.join(", ")
    )
}

const SQL_REJECT: &str = "INSERT INTO identity_merge.rejections \
     (project_id, reason_code, message, operation, id_a, id_b, source_table, source_row) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Kept plans, prepared on first use in this backend.
struct Plans {
    project: OwnedPreparedStatement,
    sides: OwnedPreparedStatement,
    /// By case: `[kept exists as usize * 2 + absorbed exists as usize]`.
    join: [OwnedPreparedStatement; 4],
    reject: OwnedPreparedStatement,
}

thread_local! {
    static PLANS: RefCell<Option<std::rc::Rc<Plans>>> = const { RefCell::new(None) };
}

fn oid(o: pg_sys::BuiltinOid) -> PgOid {
    PgOid::BuiltIn(o)
}

fn plans() -> std::rc::Rc<Plans> {
    if let Some(p) = PLANS.with(|p| p.borrow().clone()) {
        return p;
    }
    use pg_sys::BuiltinOid::*;
    let p = Spi::connect(|c| {
        let prep = |sql: &str, args: &[PgOid]| c.prepare_mut(sql, args).expect("prepare").keep();
        Plans {
            // Read-only: mp_resolve (parallel safe) looks projects up in parallel workers too.
            project: c
                .prepare(SQL_PROJECT, &[oid(TEXTOID)])
                .expect("prepare")
                .keep(),
            sides: prep(
                &format!("{SQL_SIDE_COLUMNS} $2 UNION ALL {SQL_SIDE_COLUMNS} $3"),
                &[oid(INT4OID), oid(TEXTOID), oid(TEXTOID)],
            ),
            join: [(false, false), (false, true), (true, false), (true, true)].map(
                |(kept, absorbed)| {
                    prep(
                        &join_sql(kept, absorbed),
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
    /// (oid of schema identity_merge, its owner): who the extension's own writes run as.
    static OWNER: std::cell::Cell<(pg_sys::Oid, pg_sys::Oid)> =
        const { std::cell::Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
}

fn owner_oid() -> pg_sys::Oid {
    let schema = unsafe { pg_sys::get_namespace_oid(c"identity_merge".as_ptr(), false) };
    let (cached_schema, owner) = OWNER.with(|o| o.get());
    if cached_schema == schema {
        return owner;
    }
    // A read-only select: Spi::get_one_with_args would mark the transaction as writing, which a
    // parallel worker (mp_resolve is parallel safe) may not do.
    let owner = Spi::connect(|c| {
        c.select(
            "SELECT nspowner FROM pg_catalog.pg_namespace WHERE oid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[schema.into()],
        )
        .unwrap()
        .first()
        .get::<pg_sys::Oid>(1)
        .unwrap()
        .unwrap()
    });
    OWNER.with(|o| o.set((schema, owner)));
    owner
}

/// Runs `f` as the owner of the extension's schema, the way PostgreSQL's foreign-key triggers
/// switch to the table owner: callers need EXECUTE on the mp_* functions (see docs/security.md),
/// never privileges on the state tables, which only the functions change. An ERROR inside is
/// cleaned up by the (sub)transaction abort, which restores the user id.
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = owner_oid();
    unsafe {
        let (mut user, mut context) = (pg_sys::InvalidOid, 0);
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
        let r = f();
        pg_sys::SetUserIdAndSecContext(user, context);
        r
    }
}

/// The effective anon id format: 'any' when either the project or the session says so.
fn anon_format(project_setting: &str) -> AnonIdFormat {
    let guc = crate::guc::anon_id_format_any();
    if guc || AnonIdFormat::parse(project_setting) == Some(AnonIdFormat::Any) {
        AnonIdFormat::Any
    } else {
        AnonIdFormat::UuidV4
    }
}

impl Project {
    /// Re-derives the effective anon id format (the session setting may have changed).
    pub fn refreshed(mut self) -> Project {
        self.refresh();
        self
    }

    /// `refreshed` in place.
    pub fn refresh(&mut self) {
        self.settings.anon_id_format = anon_format(&self.anon_id_format);
    }
}

/// A project by token (from the backend's cache when it is current), or `UnknownProject`.
pub fn project(token: Option<&str>) -> Result<Project, IdentityError> {
    let token = token.ok_or(IdentityError::NullId { field: "project" })?;
    crate::cache::project(token, |t| as_owner(|| load_project(t))).map(Project::refreshed)
}

/// Only the id of a project by token (the `mp_resolve` path: no settings cloned).
pub fn project_id(token: &str) -> Result<i32, IdentityError> {
    crate::cache::project_id(token, |t| as_owner(|| load_project(t)))
}

/// Loads a project by token from the projects table.
fn load_project(token: &str) -> Result<Project, IdentityError> {
    let p = plans();
    Spi::connect(|c| {
        let rows = c
            .select(&p.project, Some(1), &[token.into()])
            .expect("project lookup");
        if rows.is_empty() {
            return Err(IdentityError::UnknownProject {
                token: token.to_string(),
            });
        }
        let row = rows.first();
        let id: i32 = row.get(1).unwrap().unwrap();
        let mode: String = row.get(2).unwrap().unwrap();
        let max: i32 = row.get(3).unwrap().unwrap();
        let format: String = row.get(4).unwrap().unwrap();
        let blocked: Vec<Option<String>> = row.get(5).unwrap().unwrap_or_default();
        Ok(Project {
            id,
            token: token.to_string(),
            mode: if mode == "simplified" {
                Mode::Simplified
            } else {
                Mode::Original
            },
            anon_id_format: format.clone(),
            settings: RuleSettings {
                max_cluster_size: max as i64,
                anon_id_format: anon_format(&format),
                blocked_ids: blocked
                    .into_iter()
                    .flatten()
                    .map(|s| s.trim().to_lowercase())
                    .collect(),
            },
        })
    })
}

/// Reads the clusters of `a` and `b` (fresh snapshot).
fn read_sides(p: &Plans, project_id: i32, a: &str, b: &str) -> (Side, Side) {
    Spi::connect(|c| {
        let rows = c
            .select(&p.sides, None, &[project_id.into(), a.into(), b.into()])
            .expect("sides");
        let (mut sa, mut sb) = (Side::new_id(a), Side::new_id(b));
        for row in rows {
            let id: String = row.get(1).unwrap().unwrap();
            let side = Side {
                id: id.clone(),
                canonical: row.get(2).unwrap().unwrap(),
                size: row.get::<i32>(3).unwrap().unwrap() as i64,
                identified: row.get(4).unwrap().unwrap(),
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

const MAX_ATTEMPTS: usize = 1000;

/// Applies one identity operation (Original ID Merge's three, or Simplified's link) to a
/// project: validation, locking, the rules'
/// decision, and the write. Returns the canonical id of the resulting cluster, or the refusal.
/// Nothing is written when it returns an error.
pub fn apply(
    project: &Project,
    op: Op,
    a: Option<&str>,
    b: Option<&str>,
) -> Result<String, IdentityError> {
    rules::precheck(op, &project.settings, a, b)?;
    as_owner(|| apply_checked(project, op, a.unwrap(), b.unwrap()))
}

fn apply_checked(project: &Project, op: Op, a: &str, b: &str) -> Result<String, IdentityError> {
    // The stamp caches learn of this backend's own joins from here (cache::own_change_end).
    let before = crate::cache::own_change_begin();
    let result = join_clusters(project, op, a, b);
    let joined = match &result {
        Ok(Applied {
            canonical,
            absorbed: Some(absorbed),
        }) => Some((project.id, absorbed.as_str(), canonical.as_str())),
        _ => None,
    };
    crate::cache::own_change_end(before, joined);
    result.map(|applied| applied.canonical)
}

/// What an operation did: the canonical id of the resulting cluster, and the canonical id it
/// absorbed when two clusters (or a new id) were joined.
struct Applied {
    canonical: String,
    absorbed: Option<String>,
}

impl Applied {
    /// Nothing joined: the ids were in one cluster already, or end in one without a write.
    fn unchanged(canonical: String) -> Applied {
        Applied {
            canonical,
            absorbed: None,
        }
    }
}

fn join_clusters(project: &Project, op: Op, a: &str, b: &str) -> Result<Applied, IdentityError> {
    let contention = || IdentityError::Contention {
        op,
        a: a.to_string(),
        b: b.to_string(),
    };
    let p = plans();
    // With the project held exclusively no other writer runs: one read, then the write.
    let write_alone = || {
        let (sa, sb) = read_sides(&p, project.id, a, b);
        if sa.canonical == sb.canonical {
            return Ok(Applied::unchanged(sa.canonical));
        }
        decide_and_write(&p, project, op, &sa, &sb)
    };
    if crate::locks::holds_project_exclusively(project.id) {
        // A bulk transaction that already locked its project (skips the read below).
        return write_alone();
    }
    let (mut sa, mut sb) = read_sides(&p, project.id, a, b);
    // Replays change nothing and need no lock.
    if sa.canonical == sb.canonical {
        return Ok(Applied::unchanged(sa.canonical));
    }
    let limit = crate::guc::cluster_locks_per_transaction();
    match crate::locks::hold_project(project.id, limit) {
        None => return Err(contention()),
        // Read again: the first read may predate the lock.
        Some(crate::locks::ProjectHold::Exclusive) => return write_alone(),
        Some(crate::locks::ProjectHold::Shared) => {}
    }
    for _ in 0..MAX_ATTEMPTS {
        if sa.canonical == sb.canonical {
            return Ok(Applied::unchanged(sa.canonical));
        }
        let mut keys = [
            rules::cluster_lock_key(project.id, &sa.canonical),
            rules::cluster_lock_key(project.id, &sb.canonical),
        ];
        keys.sort_unstable();
        // Free locks are taken at once; otherwise wait (a deadlock's victim is refused).
        if !crate::locks::try_clusters(keys) && !crate::locks::wait_clusters(keys) {
            return Err(contention());
        }
        let (na, nb) = read_sides(&p, project.id, a, b);
        if na.canonical != sa.canonical || nb.canonical != sb.canonical {
            // Someone joined one of the clusters before we got the locks: start over.
            crate::locks::release_clusters(keys);
            sa = na;
            sb = nb;
            continue;
        }
        let result = decide_and_write(&p, project, op, &na, &nb);
        if result.is_err() {
            crate::locks::release_clusters(keys);
        }
        return result;
    }
    Err(contention())
}

fn decide_and_write(
    p: &Plans,
    project: &Project,
    op: Op,
    a: &Side,
    b: &Side,
) -> Result<Applied, IdentityError> {
    match rules::decide(op, &project.settings, a, b)? {
        Outcome::Together(c) => Ok(Applied::unchanged(c)),
        Outcome::Join(plan) => {
            let write = || {
                Spi::connect_mut(|c| {
                let case = plan.kept.exists as usize * 2 + plan.absorbed.exists as usize;
                c.update(
                    &p.join[case],
                    None,
                    &[
                        project.id.into(),
                        op.as_str().into(),
                        a.id.as_str().into(),
                        b.id.as_str().into(),
                        plan.kept.canonical.as_str().into(),
                        plan.kept.exists.into(),
                        plan.absorbed.canonical.as_str().into(),
                        plan.absorbed.exists.into(),
                        (plan.size as i32).into(),
                        plan.identified.into(),
                    ],
                )
                .expect("join");
            })
            };
            // SAFETY: reads the transaction's isolation level.
            let xact_snapshot =
                unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 };
            if xact_snapshot {
                // The transaction's snapshot cannot see a join committed after it began: an id
                // it takes for new may exist by now. That is a serialization failure (retry),
                // as PostgreSQL reports for a row updated concurrently, not a key violation.
                let conflict = IdentityError::SerializationFailure {
                    op,
                    a: a.id.clone(),
                    b: b.id.clone(),
                };
                PgTryBuilder::new(std::panic::AssertUnwindSafe(write))
                    .catch_when(PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION, move |_| {
                        crate::error::raise(conflict.clone())
                    })
                    .execute();
            } else {
                write();
            }
            Ok(Applied {
                canonical: plan.kept.canonical,
                absorbed: Some(plan.absorbed.canonical),
            })
        }
    }
}

/// What one ingested event did to the identity graph (see `apply_event`).
#[derive(Default)]
pub struct EventOutcome {
    /// A join was made: lookups in this statement must look again.
    pub changed: bool,
    /// Simplified projects: the distinct_id the event implies (`$user_id`, else the device).
    pub distinct_id: Option<String>,
    /// The first refusal, when there was one (every refusal went to `record`).
    pub refused: Option<IdentityError>,
}

/// The identity meaning of one ingested event, shared by the stamping trigger and `mp_track`.
/// Original projects apply `$identify` / `$create_alias` / `$merge`; Simplified projects record
/// those as ignored (the event stays an ordinary event) and link `$device_id` to `$user_id`,
/// taken from `device_column` / `user_column` when given, else from the properties. `properties`
/// is called only when needed (a row's jsonb costs a parse). Every refusal is handed to
/// `record(error, operation, id_a, id_b)`; only `Contention` is returned as an error, for the
/// caller to raise (retry the transaction).
pub fn apply_event(
    project: &Project,
    event: Option<&str>,
    properties: &dyn Fn() -> serde_json::Value,
    device_column: Option<String>,
    user_column: Option<String>,
    mut record: impl FnMut(&IdentityError, &str, Option<&str>, Option<&str>),
) -> Result<EventOutcome, IdentityError> {
    use crate::ingest;
    let mut out = EventOutcome::default();
    let identity_op = event.and_then(ingest::identity_op);
    if project.mode == Mode::Simplified && identity_op.is_some() {
        // Ignored, as Mixpanel does, and recorded so nothing vanishes silently; not a refusal
        // of the event, which still links its device and user below.
        let ignored = IdentityError::Ignored {
            event: event.unwrap_or_default().to_string(),
            token: project.token.clone(),
        };
        record(&ignored, "ignore", None, None);
    }
    let mut refuse =
        |out: &mut EventOutcome, err: IdentityError, op: &str, a: Option<&str>, b: Option<&str>| {
            record(&err, op, a, b);
            out.refused.get_or_insert(err);
        };
    match project.mode {
        Mode::Original => {
            let Some(op) = identity_op else {
                return Ok(out);
            };
            let (a, b) = match ingest::event_ids(op, &properties()) {
                Ok(ids) => ids,
                Err(err) => {
                    refuse(&mut out, err, op.as_str(), None, None);
                    return Ok(out);
                }
            };
            match apply(project, op, a.as_deref(), b.as_deref()) {
                Ok(_) => out.changed = true,
                Err(err @ IdentityError::Contention { .. }) => return Err(err),
                Err(err) => refuse(&mut out, err, op.as_str(), a.as_deref(), b.as_deref()),
            }
        }
        Mode::Simplified => {
            let props = if device_column.is_none() || user_column.is_none() {
                properties()
            } else {
                serde_json::Value::Null
            };
            let (device, user, errors) = ingest::simplified_ids(&props, device_column, user_column);
            let plan = ingest::simplified_event(&project.settings, device, user);
            for err in errors.into_iter().chain(plan.refusals) {
                refuse(&mut out, err, "link", None, None);
            }
            if let Some((user, device)) = &plan.link {
                match apply(project, Op::Link, Some(user), Some(device)) {
                    Ok(_) => out.changed = true,
                    Err(err @ IdentityError::Contention { .. }) => return Err(err),
                    Err(err) => refuse(&mut out, err, "link", Some(user), Some(device)),
                }
            }
            out.distinct_id = plan.distinct_id;
        }
    }
    Ok(out)
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
    use crate::ingest::{scrub_nul, scrub_nul_str};
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
            .expect("record rejection");
        })
    });
}
