//! `mp_ingest`: a staged batch moved into an attached table, set-wise (core/staged.rs plans
//! it). Two phases, in one transaction, so that a failure leaves nothing half-applied:
//!
//! 1. The staging rows that can mean something for identity are read in the staging table's
//!    order and each is planned and executed exactly as the stamping trigger would (the same
//!    `core::ingest` plan, `engine::ingest`, refusals recorded with their rows), in one
//!    statement batch (batch.rs: `core::graph` in memory, the project held exclusively, as a
//!    bulk INSERT through the trigger holds it), written at the end of the phase.
//! 2. One INSERT ... SELECT moves every row with its final stamp: a join with
//!    `identity_merge.identities` as phase 1 left it. The stamping trigger does not fire for
//!    its rows: the trigger's WHEN (`identity_merge._stamp_wanted`, api/ingest.rs) is false for
//!    a row of this very statement, told by the statement's own active snapshot
//!    (pg/statement.rs), so a row a nested statement writes (a user's trigger) is stamped as
//!    always. A table attached before 0.1.14 has a trigger without that WHEN: the trigger
//!    itself passes the row through (api/stamp.rs), at a row trigger's cost.
//!
//! It runs with the caller's rights (it is an INSERT ... SELECT the caller could run), and the
//! staging table is locked in SHARE mode, so that the rows phase 1 applied are the rows phase 2
//! inserts.

use std::cell::RefCell;

use pgrx::prelude::*;

use crate::core::attachment::TriggerArgs;
use crate::core::error::{IdentityError, StagingProblem};
use crate::core::ingest;
use crate::core::staged::{self, Column, Tables};
use crate::core::{Mode, Op};
use crate::pg::{raise, OrBug, OrRaise};

/// The INSERT of phase 2 while it runs: its active snapshot (compared, never read) and the
/// target with its partitions.
struct OwnInsert {
    snapshot: pg_sys::Snapshot,
    tables: Vec<pg_sys::Oid>,
}

thread_local! {
    static OWN_INSERT: RefCell<Option<OwnInsert>> = const { RefCell::new(None) };
}

/// Whether a row being inserted into `table` is one of `mp_ingest`'s own INSERT's, already
/// stamped: the stamping trigger leaves it alone. Asked for every inserted row (the trigger's
/// WHEN): without an ingest running, one thread-local read.
pub fn own_row(table: pg_sys::Oid) -> bool {
    OWN_INSERT.with(|own| {
        let Ok(own) = own.try_borrow() else {
            return false;
        };
        match own.as_ref() {
            None => false,
            Some(own) => {
                own.tables.contains(&table)
                    && crate::pg::active_snapshot().is_some_and(|s| s == own.snapshot)
            }
        }
    })
}

/// Forgets the running INSERT when dropped (also when an ERROR unwinds through it).
struct OwnInsertGuard;

impl Drop for OwnInsertGuard {
    fn drop(&mut self) {
        OWN_INSERT.with(|own| {
            if let Ok(mut own) = own.try_borrow_mut() {
                *own = None;
            }
        });
    }
}

/// At the end of a transaction: nothing of an INSERT that did not finish is kept.
pub fn at_transaction_end() {
    drop(OwnInsertGuard);
}

/// What `mp_ingest` did.
pub struct Counts {
    /// Rows inserted into the target.
    pub rows: i64,
    /// Staging rows that meant something for identity (applied, refused or ignored).
    pub identity_events: i64,
    /// Refusals recorded in identity_merge.rejections.
    pub refused: i64,
}

fn columns(c: &pgrx::spi::SpiClient<'_>, rel: pg_sys::Oid) -> Vec<Column> {
    c.select(
        "SELECT a.attname::text, a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                a.attgenerated OPERATOR(pg_catalog.<>) '', a.atthasdef OR a.attidentity OPERATOR(pg_catalog.<>) '' \
           FROM pg_catalog.pg_attribute a \
          WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
          ORDER BY a.attnum",
        None,
        &[rel.into()],
    )
    .or_bug("reading the columns of a table")
    .map(|r| Column {
        name: r.get::<String>(1).ok().flatten().unwrap_or_default(),
        type_id: r
            .get::<pg_sys::Oid>(2)
            .ok()
            .flatten()
            .map(|o| o.to_u32())
            .unwrap_or(0),
        type_name: r.get::<String>(3).ok().flatten().unwrap_or_default(),
        column_type: crate::pg::column_type(
            r.get::<pg_sys::Oid>(2)
                .ok()
                .flatten()
                .unwrap_or(pg_sys::InvalidOid),
        ),
        generated: r.get::<bool>(4).ok().flatten().unwrap_or(false),
        has_default: r.get::<bool>(5).ok().flatten().unwrap_or(false),
    })
    .collect()
}

/// The facts of one relation: its name as SQL, its kind.
fn relation(c: &pgrx::spi::SpiClient<'_>, rel: pg_sys::Oid) -> (String, String) {
    let row = c
        .select(
            "SELECT pg_catalog.format('%I.%I', n.nspname, k.relname), k.relkind::text \
               FROM pg_catalog.pg_class k JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) k.relnamespace \
              WHERE k.oid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[rel.into()],
        )
        .or_bug("reading a relation");
    if row.is_empty() {
        raise(IdentityError::MissingObject {
            what: format!("relation {}", rel.to_u32()),
        });
    }
    let row = row.first();
    (
        row.get::<String>(1).ok().flatten().unwrap_or_default(),
        row.get::<String>(2).ok().flatten().unwrap_or_default(),
    )
}

fn relkind_name(kind: &str) -> &'static str {
    match kind {
        "p" => "partitioned table",
        "v" => "view",
        "m" => "materialized view",
        "f" => "foreign table",
        "S" => "sequence",
        "i" | "I" => "index",
        "c" => "composite type",
        _ => "relation",
    }
}

/// Moves every row of `staging` into the attached table `target` (see the module's comment);
/// `empty_staging`: TRUNCATE the staging table afterwards.
pub fn ingest(staging: pg_sys::Oid, target: pg_sys::Oid, empty_staging: bool) -> Counts {
    let (staging_sql, staging_kind, target_sql, trigger, project_id) = Spi::connect(|c| {
        let (staging_sql, staging_kind) = relation(c, staging);
        let (target_sql, _) = relation(c, target);
        let attached: Option<i32> = crate::pg::as_owner(|| {
            c.select(
                "SELECT project_id FROM identity_merge.attachments WHERE events::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[target.into()],
            )
            .or_bug("reading the attachments")
            .next()
            .and_then(|r| r.get::<i32>(1).ok().flatten())
        });
        let trigger = c
            .select(
                "SELECT t.tgargs, t.tgqual IS NOT NULL FROM pg_catalog.pg_trigger t \
                  WHERE t.tgrelid OPERATOR(pg_catalog.=) $1 AND t.tgname OPERATOR(pg_catalog.=) 'identity_merge_stamp'",
                Some(1),
                &[target.into()],
            )
            .or_bug("reading the stamping trigger");
        let trigger = (!trigger.is_empty()).then(|| {
            let row = trigger.first();
            let args: Vec<u8> = row.get(1).ok().flatten().unwrap_or_default();
            let has_when = row.get::<bool>(2).ok().flatten().unwrap_or(false);
            (TriggerArgs::split_catalog(&args), has_when)
        });
        (staging_sql, staging_kind, target_sql, trigger, attached)
    });
    let refuse = |problem: StagingProblem| -> ! {
        raise(IdentityError::Staging {
            staging: staging_sql.clone(),
            target: target_sql.clone(),
            problem,
        })
    };
    let (Some((args, has_when)), Some(project_id)) = (trigger, project_id) else {
        refuse(StagingProblem::NotAttached)
    };
    if staging == target {
        refuse(StagingProblem::SameTable);
    }
    if staging_kind != "r" {
        refuse(StagingProblem::NotATable {
            kind: relkind_name(&staging_kind),
        });
    }
    if crate::sync::placement::distributed() {
        refuse(StagingProblem::Distributed);
    }
    let args = TriggerArgs::parse(&args).or_raise();
    let project = crate::engine::project(Some(&args.project)).or_raise();
    if project.id != project_id {
        raise(IdentityError::AttachmentMismatch {
            table: target_sql.clone(),
            problem: "its trigger names another project than its registration".into(),
        });
    }
    if !has_when {
        pgrx::notice!(
            "table {target_sql} was attached before identity_merge 0.1.14: its trigger fires for every ingested row (run mp_attach on it again to skip it)"
        );
    }
    let plan = Spi::connect(|c| {
        staged::plan(
            &args,
            project.mode,
            project.id,
            &Tables {
                staging_sql: &staging_sql,
                target_sql: &target_sql,
                staging: &columns(c, staging),
                target: &columns(c, target),
            },
        )
    })
    .unwrap_or_else(|problem| refuse(problem));

    // The rows applied are the rows inserted: no one changes the staging table meanwhile. As
    // the caller (LOCK TABLE checks the caller's rights on it).
    Spi::run(&format!("LOCK TABLE ONLY {staging_sql} IN SHARE MODE"))
        .unwrap_or_else(|e| raise(crate::pg::internal("locking the staging table", e)));

    // Phase 1: the identity rows, in order, through the statement batch.
    let mut identity_events: i64 = 0;
    let mut refused: i64 = 0;
    // Per-row answers of phase one for the INSERT (core::staged::StagedPlan::insert_sql):
    // Simplified (row, filled-in distinct_id), Legacy (alias created, its event's row).
    let mut rows_of: (Vec<Option<String>>, Vec<Option<String>>) = (Vec::new(), Vec::new());
    if let Some(read) = &plan.read {
        // The merge log's last entry before this ingest (Legacy, below).
        let logged_before = crate::store::last_merge_seq();
        let statement = (crate::pg::active_command_id(), crate::pg::current_subxact());
        let statement = crate::engine::batch::begin(&project, statement)
            .or_raise()
            .then_some(statement);
        let event_names: Vec<&str> = Op::event_names().collect();
        let read_args: Vec<pgrx::datum::DatumWithOid> = if read.takes_event_names {
            vec![event_names.into()]
        } else {
            Vec::new()
        };
        Spi::connect(|c| {
            crate::store::bulk::for_each_row(c, &read.sql, &read_args, None, |r| {
                let text = |n: usize| r.get::<String>(n).ok().flatten();
                let (event, properties, device, user, distinct, row) =
                    (text(1), text(2), text(3), text(4), text(5), text(6));
                let plan = ingest::plan_row(
                    &project,
                    event.as_deref(),
                    properties.as_deref(),
                    device,
                    user,
                );
                if project.mode == Mode::Simplified && distinct.is_none() {
                    if let Some(filled) = &plan.distinct_id {
                        rows_of.0.push(row.clone());
                        rows_of.1.push(Some(filled.clone()));
                    }
                }
                if plan.is_empty() {
                    return;
                }
                identity_events += 1;
                let source = crate::store::Source {
                    kind: "ingest",
                    detail: serde_json::json!({
                        "table": target_sql,
                        "staging": staging_sql,
                        "row": row,
                        "distinct_id": distinct,
                        "event": event,
                    }),
                };
                let done = crate::engine::ingest(&project, plan, &source, statement, || {
                    let row = serde_json::json!({
                        "distinct_id": distinct,
                        "event": event.as_deref().unwrap_or_default(),
                        "properties": ingest::properties_from_text(properties.as_deref().map(str::as_bytes)),
                    });
                    (Some(target), row)
                })
                .or_raise();
                refused += done.refusals.len() as i64;
            })
            .or_bug("reading the staging table")
        });
        crate::engine::batch::flush();
        if project.mode == Mode::Legacy {
            // The aliases this ingest created, each with its event's row: the merge log of
            // this transaction since phase 1 began (the project is held exclusively, or its
            // joins were logged one by one), read by the provenance it recorded.
            Spi::connect(|c| {
                let aliases = crate::pg::as_owner(|| {
                    c.select(
                        "SELECT l.id_a, l.source_detail->>'row' FROM identity_merge.merge_log l \
                          WHERE l.project_id OPERATOR(pg_catalog.=) $1 AND l.seq OPERATOR(pg_catalog.>) $2 \
                            AND l.transaction_id OPERATOR(pg_catalog.=) pg_catalog.pg_current_xact_id() \
                            AND l.source OPERATOR(pg_catalog.=) 'ingest' AND l.operation OPERATOR(pg_catalog.=) $3 \
                          ORDER BY l.seq",
                        None,
                        &[project.id.into(), logged_before.into(), Op::Alias.as_str().into()],
                    )
                    .or_bug("reading the aliases of the batch")
                    .map(|r| (r.get::<String>(1).ok().flatten(), r.get::<String>(2).ok().flatten()))
                    .collect::<Vec<_>>()
                });
                for (alias, row) in aliases {
                    rows_of.0.push(alias);
                    rows_of.1.push(row);
                }
            });
        }
    }

    // Phase 2: every row, with its stamp, in one statement the trigger skips.
    let tables = crate::store::table_and_partitions(target);
    let with_rows = !rows_of.0.is_empty();
    let params = if with_rows {
        vec![
            crate::pg::statement::text_array(rows_of.0),
            crate::pg::statement::text_array(rows_of.1),
        ]
    } else {
        Vec::new()
    };
    let rows = crate::pg::statement::run_with_own_snapshot(
        plan.insert_sql(with_rows),
        &params,
        |snapshot| {
            OWN_INSERT.with(|own| *own.borrow_mut() = Some(OwnInsert { snapshot, tables }));
            OwnInsertGuard
        },
    );
    crate::sync::stats::count(project.id, crate::sync::stats::Counter::RowsStamped, rows);
    if empty_staging {
        Spi::run(&format!("TRUNCATE ONLY {staging_sql}"))
            .unwrap_or_else(|e| raise(crate::pg::internal("emptying the staging table", e)));
    }
    Counts {
        rows: rows as i64,
        identity_events,
        refused,
    }
}
