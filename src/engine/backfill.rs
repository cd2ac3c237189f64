//! `mp_backfill`'s work (its SQL functions are api/backfill.rs): loads a history of identity
//! events in one pass. The events are read through a cursor, applied in memory by `graph::Graph` (the online rules, union-find), and the result
//! is written in bulk: changed ids, changed clusters, one merge-log row per join, one rejection
//! per refused event. Online writers of identities wait for it (SHARE ROW EXCLUSIVE lock).

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::core::Op;
use crate::pg::{raise, OrBug, OrRaise};
use crate::store;
use crate::store::bulk::*;

/// What each row of a history's query is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// `(operation, id_a, id_b)`: mp_backfill's history (and the Segment form of
    /// mp_backfill_from), an operation by name with its two ids, or a `split`.
    History,
    /// `(event, properties, device_id, user_id)`, all text: an event table's rows
    /// (mp_backfill_from), each planned by `core::ingest::plan_row` as the stamping trigger
    /// plans it. The query's `$1` is the identity event names (`Op::event_names`), for it to
    /// read only those rows in an Original or Legacy project.
    Events,
}

impl Rows {
    fn columns(self) -> usize {
        match self {
            Rows::History => 3,
            Rows::Events => 4,
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Rows::History => "It must return three columns: operation, id_a, id_b.",
            Rows::Events => "It must return four columns: event, properties, device_id, user_id.",
        }
    }

    fn type_hint(self) -> &'static str {
        match self {
            Rows::History => "Its three columns (operation, id_a, id_b) must be text: cast them with ::text.",
            Rows::Events => "Its four columns (event, properties, device_id, user_id) must be text: cast them with ::text.",
        }
    }

    fn query_hint(self) -> &'static str {
        match self {
            Rows::History => "Pass a query returning (operation text, id_a text, id_b text) in time order.",
            Rows::Events => "Pass a query returning (event text, properties text, device_id text, user_id text) in time order.",
        }
    }
}

/// What a backfill did: mp_backfill's result row (events, joins, refused, ids_written,
/// clusters_written).
pub type Counts = (i64, i64, i64, i64, i64);

/// mp_backfill's work, reading the history as the owner of `reader` when given.
pub fn backfill(source: &str, project: &str, reader: Option<pg_sys::Oid>, rows: Rows) -> Counts {
    if source.trim().is_empty() {
        raise(IdentityError::InvalidArgument {
            what: "backfill source query",
            value: source.to_string(),
            hint: match rows {
                Rows::History => "Pass a query returning (operation text, id_a text, id_b text) in time order, e.g. SELECT op, a, b FROM history ORDER BY t.",
                Rows::Events => rows.query_hint(),
            },
        });
    }
    let distributed = crate::sync::placement::distributed();
    if distributed {
        // Bulk writes to the replicated tables go to every node at once, which Citus refuses in
        // a transaction that already read a placement in this backend: none is, from here.
        Spi::run("SELECT pg_catalog.set_config('citus.enable_local_execution', 'off', true)")
            .or_bug("setting citus.enable_local_execution");
    }
    let project = crate::engine::project(Some(project)).or_raise();
    let settings = project.settings.clone();
    let pid = project.id;
    let mut refusals: Vec<Refusal> = Vec::new();
    // (joins, ids written, clusters written) of the batches written so far.
    let mut totals: (i64, i64, i64) = (0, 0, 0);
    // Refused rows of the batches written so far.
    let mut refused: i64 = 0;
    // The history ordinal of each join of `graph.joins`, and who loads the history.
    let mut join_ordinals: Vec<i64> = Vec::new();
    let log = LogRows::backfill(
        crate::pg::current_role_name(),
        store::merge_log_has_provenance(),
        distributed,
    );
    let mut events: i64 = 0;

    if !crate::sync::locks::hold_cluster_wide(pid) {
        raise(IdentityError::project_contention(&project.token));
    }
    Spi::connect_mut(|c| {
        // On Citus the cluster-wide lock just taken already keeps every other writer out (and
        // Citus cannot send a LOCK to every node after the lock's local read).
        if !distributed {
            c.update("LOCK TABLE identity_merge.identities, identity_merge.clusters IN SHARE ROW EXCLUSIVE MODE", None, &[])
                .or_bug("reading the project state");
        }
        let mut graph = load_graph(c, pid);

        // An event table's query reads only the identity events' rows in an Original or
        // Legacy project: their names are the core's (a Simplified project's query reads every
        // row, and has no parameter to use).
        let args: Vec<pgrx::datum::DatumWithOid> = match rows {
            Rows::History => Vec::new(),
            Rows::Events => vec![Op::event_names().collect::<Vec<&str>>().into()],
        };
        // The history, in the order the query gives.
        for_each_row(c, source, &args, reader, |r| {
            if r.columns() < rows.columns() {
                raise(IdentityError::InvalidArgument {
                    what: "backfill source query",
                    value: source.to_string(),
                    hint: rows.hint(),
                });
            }
            // Each column is read as text only when it is text (pgrx checks the type): another
            // type is the caller's mistake, named, not a value read as something it is not.
            let text = |n: usize| -> Option<String> {
                r.get::<String>(n).unwrap_or_else(|_| {
                    let found = r
                        .get_datum_by_ordinal(n)
                        .map(|d| crate::pg::type_name(d.oid()))
                        .unwrap_or_else(|_| "unknown".into());
                    raise(IdentityError::InvalidArgument {
                        what: "backfill source query",
                        value: format!("column {n} is of type {found}, not text"),
                        hint: rows.type_hint(),
                    })
                })
            };
            let refused_now: Vec<Refusal> = if rows == Rows::Events {
                // A row planned as the stamping trigger plans it (core::ingest), its operations
                // and refusals taken through the one execute loop (engine::execute_with), the
                // graph in place of the store. A row meaning nothing for identity is not counted.
                let plan = crate::core::ingest::plan_row(
                    &project,
                    text(1).as_deref(),
                    text(2).as_deref(),
                    text(3),
                    text(4),
                );
                if plan.is_empty() {
                    return;
                }
                events += 1;
                let done = crate::engine::execute_with(plan, |op| {
                    Ok(graph
                        .apply(&settings, op.op, op.a.as_deref(), op.b.as_deref())
                        .map(drop))
                })
                .unwrap_or_else(|e| raise(e));
                done.refusals
                    .into_iter()
                    .map(|r| Refusal {
                        ordinal: events,
                        op: Some(r.operation.to_string()),
                        a: r.a,
                        b: r.b,
                        err: r.error,
                    })
                    .collect()
            } else {
                events += 1;
                let (name, a, b) = (text(1), text(2), text(3));
                if name.as_deref() == Some("split") {
                    // A split retracts joins of the store, the batch's included: the batch so far is
                    // written, the split made as mp_split makes it (through a connection of its own:
                    // the history's cursor stays open), and the graph read again from the store.
                    let (joins, ids, clusters) = Spi::connect_mut(|c| {
                        write_batch(c, pid, &mut graph, &refusals, &join_ordinals, &log)
                    });
                    totals.0 += joins;
                    totals.1 += ids;
                    totals.2 += clusters;
                    refused += refusals.len() as i64;
                    refusals.clear();
                    join_ordinals.clear();
                    let source = crate::store::Source {
                        kind: "backfill",
                        detail: serde_json::json!({ "backfill_ordinal": events }),
                    };
                    let result = match a.as_deref() {
                        None => Err(IdentityError::NullId {
                            field: "distinct_id",
                        }),
                        Some(id) => {
                            crate::engine::retract::split(&project, id, &source).map(|_| ())
                        }
                    };
                    graph = Spi::connect(|c| load_graph(c, pid));
                    if let Err(err) = result {
                        if err.is_retryable() {
                            raise(err);
                        }
                        refusals.push(Refusal {
                            ordinal: events,
                            op: name,
                            a,
                            b,
                            err,
                        });
                    }
                    return;
                }
                let result = crate::core::ingest::plan_history_row(
                    &project,
                    name.as_deref(),
                    a.as_deref(),
                    b.as_deref(),
                )
                .and_then(|p| graph.apply(&settings, p.op, p.a.as_deref(), p.b.as_deref()));
                result
                    .err()
                    .map(|err| Refusal {
                        ordinal: events,
                        op: name,
                        a,
                        b,
                        err,
                    })
                    .into_iter()
                    .collect()
            };
            // The history entry each join came from (its provenance in the merge log).
            while graph.joins.len() > join_ordinals.len() {
                join_ordinals.push(events);
            }
            if graph.joins.len() >= CHUNK {
                let joins = graph.take_joins();
                Spi::connect_mut(|c| write_joins(c, pid, &graph, &joins, &join_ordinals, &log));
                join_ordinals.clear();
            }
            for refusal in refused_now {
                refusals.push(refusal);
                if refusals.len() >= CHUNK {
                    // Written as they come (through a connection of its own: the history's
                    // cursor stays open): a history's refusals are independent of the graph,
                    // and holding millions of them would cost more than the graph itself.
                    Spi::connect_mut(|c| write_refusals(c, pid, &refusals));
                    refused += refusals.len() as i64;
                    refusals.clear();
                }
            }
        })
        .unwrap_or_else(|e| {
            raise(IdentityError::InvalidArgument {
                what: "backfill source query",
                value: format!("{e}: {source}"),
                hint: rows.query_hint(),
            })
        });

        let (joins, ids, clusters) =
            write_batch(c, pid, &mut graph, &refusals, &join_ordinals, &log);
        totals.0 += joins;
        totals.1 += ids;
        totals.2 += clusters;
        // Fresh statistics for what was just written: planners of mp_check, mp_restamp and the
        // online functions would otherwise plan a table of millions of rows as an empty one.
        crate::pg::as_owner(|| {
            c.update(
                "ANALYZE identity_merge.identities, identity_merge.clusters, identity_merge.merge_log",
                None,
                &[],
            )
            .or_bug("reading the project state")
        });
        (
            events,
            totals.0,
            refused + refusals.len() as i64,
            totals.1,
            totals.2,
        )
    })
}
