//! The join protocol: applies identity operations to the stored graph under the locks (their
//! statements are store/, the locks sync/locks.rs):
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
//!
//! Also here: `execute`, an event's plan applied online, with the `Source` of its joins passed
//! as an argument.

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::core::ingest::{EventPlan, Refusal};
use crate::core::rules::{self, Op, Outcome, Project, Side};
use crate::pg::{as_owner, OrBug};
use crate::store;
use crate::store::{Provenance, Source};

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
    source: &Source,
) -> Result<String, IdentityError> {
    rules::precheck(op, &project.settings, a, b)?;
    // Who asks, read before the functions switch to the extension owner.
    let provenance = Provenance::of(source);
    as_owner(|| apply_checked(project, op, a.unwrap(), b.unwrap(), &provenance))
}

fn apply_checked(
    project: &Project,
    op: Op,
    a: &str,
    b: &str,
    provenance: &Provenance,
) -> Result<String, IdentityError> {
    // A statement's identity events held in memory (batch.rs) are written first: this
    // operation reads and writes the stored graph.
    super::batch::flush();
    // The stamp caches learn of this backend's own joins from here; the project cache stays
    // current through them by the same rule.
    store::own_write(project.id, || {
        let result = join_clusters(project, op, a, b, provenance);
        let joined = match &result {
            Ok(Applied {
                canonical,
                absorbed: Some(absorbed),
            }) => vec![(absorbed.clone(), canonical.clone())],
            _ => Vec::new(),
        };
        (result.map(|applied| applied.canonical), joined)
    })
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

fn join_clusters(
    project: &Project,
    op: Op,
    a: &str,
    b: &str,
    provenance: &Provenance,
) -> Result<Applied, IdentityError> {
    let contention = || IdentityError::Contention {
        op,
        a: a.to_string(),
        b: b.to_string(),
    };
    let p = store::plans();
    let direct = crate::store::probe::direct_reads_allowed();
    // With the project held exclusively no other writer runs: one read, then the write.
    let write_alone = || {
        let (sa, sb) = store::read_sides(&p, direct, project.id, a, b);
        if sa.canonical == sb.canonical {
            return Ok(Applied::unchanged(sa.canonical));
        }
        decide_and_write(&p, project, op, &sa, &sb, provenance)
    };
    if crate::sync::locks::holds_project_exclusively(project.id) {
        // A bulk transaction that already locked its project (skips the read below).
        return write_alone();
    }
    let (mut sa, mut sb) = store::read_sides(&p, direct, project.id, a, b);
    // Replays change nothing and need no lock.
    if sa.canonical == sb.canonical {
        return Ok(Applied::unchanged(sa.canonical));
    }
    // Neither do refusals, read under a fresh snapshot (READ COMMITTED): what the rules refuse
    // for (an identified or existing id, a size) only grows as clusters join, so no commit
    // after the read turns it into a join; only splits and settings changes could, and they
    // are concurrent with this event whichever order it is given. A cluster that joined
    // another between the two sides' reads made read_sides fall back to one SPI snapshot.
    if direct {
        rules::decide(op, &project.settings, &sa, &sb)?;
    }
    let limit = crate::pg::guc::cluster_locks_per_transaction();
    match crate::sync::locks::hold_project(project.id, limit) {
        None => return Err(contention()),
        // Read again: the first read may predate the lock.
        Some(crate::sync::locks::ProjectHold::Exclusive) => return write_alone(),
        Some(crate::sync::locks::ProjectHold::Shared) => {}
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
        if !crate::sync::locks::try_clusters(keys) && !crate::sync::locks::wait_clusters(keys) {
            return Err(contention());
        }
        let (na, nb) = store::read_sides(&p, direct, project.id, a, b);
        if na.canonical != sa.canonical || nb.canonical != sb.canonical {
            // Someone joined one of the clusters before we got the locks: start over.
            crate::sync::locks::release_clusters(keys);
            sa = na;
            sb = nb;
            continue;
        }
        let result = decide_and_write(&p, project, op, &na, &nb, provenance);
        if result.is_err() {
            crate::sync::locks::release_clusters(keys);
        }
        return result;
    }
    Err(contention())
}

fn decide_and_write(
    p: &store::Plans,
    project: &Project,
    op: Op,
    a: &Side,
    b: &Side,
    provenance: &Provenance,
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
                            provenance.kind.into(),
                            pgrx::JsonB(provenance.detail.clone()).into(),
                            provenance.role.as_str().into(),
                            (if plan.absorbed.exists {
                                plan.absorbed.size as i32
                            } else {
                                1
                            })
                            .into(),
                        ],
                    )
                    .or_bug("writing a join");
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
                        crate::pg::raise(conflict.clone())
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

/// What executing an event's plan did.
#[derive(Default)]
pub struct Executed {
    /// A join was made.
    pub changed: bool,
    /// Every refusal to record, in order: the plan's (its ignored note first), then those of
    /// the operations the rules refused here.
    pub refusals: Vec<Refusal>,
    /// The first refusal that makes the event a failure (the ignored note does not).
    pub failed: Option<IdentityError>,
}

/// Executes what an event means (`ingest::plan_event`): applies its operations in order and
/// returns every refusal as data, for the caller to record with its source (`record_refusals`).
/// Only a retryable error (`IdentityError::is_retryable`) is returned as an error: the caller
/// raises it, so that the transaction is retried rather than the event recorded as refused.
pub fn execute(
    project: &Project,
    plan: EventPlan,
    source: &Source,
) -> Result<Executed, IdentityError> {
    super::execute_with(plan, |planned| {
        match apply(
            project,
            planned.op,
            planned.a.as_deref(),
            planned.b.as_deref(),
            source,
        ) {
            Ok(_) => Ok(Ok(())),
            Err(err) if err.is_retryable() => Err(err),
            Err(err) => Ok(Err(err)),
        }
    })
}
