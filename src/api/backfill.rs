//! `mp_backfill`: loads a history of identity events in one pass. The events are read through
//! a cursor, applied in memory by `graph::Graph` (the online rules, union-find), and the result
//! is written in bulk: changed ids, changed clusters, one merge-log row per join, one rejection
//! per refused event. Online writers of identities wait for it (SHARE ROW EXCLUSIVE lock).

use pgrx::prelude::*;

use crate::core::error::{IdentityError, Reason};
use crate::core::graph::Graph;
use crate::core::Op;
use crate::pg::{raise, OrBug, OrRaise};
use crate::store;

const FETCH: std::ffi::c_long = 10_000;
/// Rows per bulk write (small under the test suite, so its histories cross chunk boundaries).
const CHUNK: usize = if cfg!(feature = "pg_test") {
    16
} else {
    50_000
};

struct Refusal {
    ordinal: i64,
    op: Option<String>,
    a: Option<String>,
    b: Option<String>,
    err: IdentityError,
}

/// Runs `sql` through a cursor and hands every row to `f`, freeing each fetched batch (a history
/// may hold millions of rows). With `reader` (a user's table, for mp_backfill_from), the cursor
/// is opened and every batch fetched as that table's owner (src/owner.rs); `f` runs as the caller.
fn for_each_row(
    c: &pgrx::spi::SpiClient<'_>,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    reader: Option<pg_sys::Oid>,
    mut f: impl FnMut(pgrx::spi::SpiHeapTupleData<'_>),
) -> Result<(), pgrx::spi::SpiError> {
    fn as_reader<R>(reader: Option<pg_sys::Oid>, f: impl FnOnce() -> R) -> R {
        match reader {
            Some(rel) => crate::pg::owner::as_table_owner(rel, "mp_backfill_from", f),
            None => f(),
        }
    }
    let mut cursor = as_reader(reader, || c.try_open_cursor(sql, args))?;
    loop {
        let rows = as_reader(reader, || cursor.fetch(FETCH))?;
        if rows.is_empty() {
            return Ok(());
        }
        for r in rows {
            f(r);
        }
        // SAFETY: frees the batch just fetched, whose rows `f` has finished with.
        unsafe { pg_sys::SPI_freetuptable(pg_sys::SPI_tuptable) };
    }
}

pub(crate) fn text_array(
    c: &mut pgrx::spi::SpiClient<'_>,
    sql: &str,
    arrays: Vec<Vec<Option<String>>>,
    project_id: i32,
) {
    write_chunk(c, sql, project_id, |args| {
        for a in arrays {
            args.push(a.into());
        }
    });
}

/// Runs one bulk write with the arguments `fill` adds after the project id. The argument
/// arrays are built in a memory context of their own, freed after the write: built in SPI's
/// context they would all stay until the end (gigabytes for a history of millions).
pub(crate) fn write_chunk(
    c: &mut pgrx::spi::SpiClient<'_>,
    sql: &str,
    project_id: i32,
    fill: impl FnOnce(&mut Vec<pgrx::datum::DatumWithOid>),
) {
    let mut scratch = pgrx::PgMemoryContexts::new("identity_merge backfill chunk");
    // SAFETY: the arguments are built and used inside the scratch context and dropped before
    // it is freed (when `scratch` goes out of scope); nothing allocated there escapes.
    unsafe {
        scratch.switch_to(|_| {
            let mut args: Vec<pgrx::datum::DatumWithOid> = vec![project_id.into()];
            fill(&mut args);
            c.update(sql, None, &args)
                .or_bug("writing a backfill chunk");
        })
    }
}

/// The project's current state, loaded into a graph: clusters, then ids (two plain scans,
/// joined here; a cursor's fast-start plan of the SQL join can degrade to a rescan per row).
fn load_graph(c: &pgrx::spi::SpiClient<'_>, pid: i32) -> Graph {
    let mut graph = Graph::new();
    let mut clusters: std::collections::HashMap<String, (i64, bool)> =
        std::collections::HashMap::new();
    for_each_row(
        c,
        "SELECT canonical_id::text, size, identified FROM identity_merge.clusters \
         WHERE project_id OPERATOR(pg_catalog.=) $1",
        &[pid.into()],
        None,
        |r| {
            let canonical: String = r
                .get(1)
                .or_bug("reading the project state")
                .or_bug("reading the project state");
            clusters.insert(
                canonical,
                (
                    r.get::<i32>(2)
                        .or_bug("reading the project state")
                        .or_bug("reading the project state") as i64,
                    r.get(3)
                        .or_bug("reading the project state")
                        .or_bug("reading the project state"),
                ),
            );
        },
    )
    .or_bug("reading the project state");
    for_each_row(
        c,
        "SELECT distinct_id::text, canonical_id::text FROM identity_merge.identities \
         WHERE project_id OPERATOR(pg_catalog.=) $1",
        &[pid.into()],
        None,
        |r| {
            let id: String = r
                .get(1)
                .or_bug("reading the project state")
                .or_bug("reading the project state");
            let canonical: String = r
                .get(2)
                .or_bug("reading the project state")
                .or_bug("reading the project state");
            let (size, identified) = clusters.get(&canonical).copied().unwrap_or((1, false));
            graph.load(&id, &canonical, size, identified);
        },
    )
    .or_bug("reading the project state");
    drop(clusters);
    graph
}

/// How the merge log's rows are written: by whom, with the provenance columns when the
/// installed SQL has them, and with seq taken from the log itself on Citus.
struct LogRows {
    role: String,
    provenance: bool,
    distributed: bool,
}

/// Writes what a batch of history did, in bulk: new and moved ids, absorbed and changed
/// clusters, one merge-log row per join (with its history ordinal), one rejection per refused
/// row. Returns (joins, ids written, clusters written).
fn write_batch(
    c: &mut pgrx::spi::SpiClient<'_>,
    pid: i32,
    graph: &mut Graph,
    refusals: &[Refusal],
    join_ordinals: &[i64],
    log: &LogRows,
) -> (i64, i64, i64) {
    // Bulk writes, in key order (btree inserts then touch pages one after another).
    let (new_ids, moved_ids) = graph.new_and_moved_ids();
    let ids_written = (new_ids.len() + moved_ids.len()) as i64;
    insert_new_ids(c, pid, graph, &new_ids);
    drop(new_ids);
    for chunk in moved_ids.chunks(CHUNK) {
        text_array(
            c,
            // Stored ids: an upsert, so each row is found through the primary key whatever
            // plan an UPDATE ... FROM would get.
            "INSERT INTO identity_merge.identities (project_id, distinct_id, canonical_id) \
             SELECT $1, u.d, u.c FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) u(d, c) \
             ON CONFLICT (project_id, distinct_id) DO UPDATE SET canonical_id = EXCLUDED.canonical_id",
            id_columns(graph, chunk),
            pid,
        );
    }
    drop(moved_ids);
    let clusters = write_clusters(c, pid, graph);
    let joins = graph.take_joins();
    write_joins(c, pid, graph, &joins, join_ordinals, log);
    write_refusals(c, pid, refusals);
    (graph.joins_made() as i64, ids_written, clusters)
}

/// One merge-log row per join, in order, with its history ordinal (`join_ordinals`, one per
/// join). Also called during the history, every CHUNK joins: a join's row is final when it is
/// made, and holding millions of them to the end would cost more than the graph.
fn write_joins(
    c: &mut pgrx::spi::SpiClient<'_>,
    pid: i32,
    g: &Graph,
    joins: &[crate::core::graph::Join],
    join_ordinals: &[i64],
    log: &LogRows,
) {
    for (n, chunk) in joins.chunks(CHUNK).enumerate() {
        let col = |f: &dyn Fn(&crate::core::graph::Join) -> String| {
            chunk.iter().map(|j| Some(f(j))).collect::<Vec<_>>()
        };
        let moved: Vec<Option<i32>> = chunk.iter().map(|j| Some(j.moved as i32)).collect();
        let ordinals: Vec<Option<i64>> = join_ordinals[n * CHUNK..n * CHUNK + chunk.len()]
            .iter()
            .map(|o| Some(*o))
            .collect();
        // Provenance columns when the installed SQL has them (see store::join_sql).
        let (mut columns, mut values) = if log.provenance {
            (
                ", source, source_detail, role_name, transaction_id".to_string(),
                ", 'backfill', pg_catalog.jsonb_build_object('backfill_ordinal', u.h), $9, pg_catalog.pg_current_xact_id()".to_string(),
            )
        } else {
            (String::new(), String::new())
        };
        if log.distributed {
            // On Citus seq is not a sequence's (sql/scaling.sql): the joins follow the log,
            // under the cluster-wide lock taken when the backfill began.
            columns.push_str(", seq");
            values.push_str(", (SELECT COALESCE(pg_catalog.max(l.seq), 0) FROM identity_merge.merge_log l) + u.n");
        }
        write_chunk(
            c,
            &format!("INSERT INTO identity_merge.merge_log (project_id, operation, id_a, id_b, kept_canonical, absorbed_canonical, moved_ids{columns}) \
             SELECT $1, u.o, u.a, u.b, u.k, u.x, u.m{values} \
             FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]), pg_catalog.unnest($7::int4[]), pg_catalog.unnest($8::int8[])) WITH ORDINALITY u(o, a, b, k, x, m, h, n) \
             ORDER BY u.n"),
            pid,
            |args| args.extend([col(&|j| j.op.as_str().to_string()).into(),
                col(&|j| g.name(j.a).to_string()).into(),
                col(&|j| g.name(j.b).to_string()).into(),
                col(&|j| g.name(j.kept).to_string()).into(),
                col(&|j| g.name(j.absorbed).to_string()).into(),
                moved.into(),
                ordinals.into(),
                log.role.as_str().into()]),
        );
    }
}

/// One rejection per refused history entry, with its ordinal.
fn write_refusals(c: &mut pgrx::spi::SpiClient<'_>, pid: i32, refusals: &[Refusal]) {
    for chunk in refusals.chunks(CHUNK) {
        let reason: Vec<Option<String>> = chunk
            .iter()
            .map(|r| {
                Some(
                    r.err
                        .reason()
                        .unwrap_or(Reason::MalformedEvent)
                        .code()
                        .to_string(),
                )
            })
            .collect();
        let message: Vec<Option<String>> = chunk
            .iter()
            .map(|r| Some(crate::core::ingest::scrub_nul_str(&r.err.message())))
            .collect();
        let op: Vec<Option<String>> = chunk.iter().map(|r| r.op.clone()).collect();
        let a: Vec<Option<String>> = chunk.iter().map(|r| r.a.clone()).collect();
        let b: Vec<Option<String>> = chunk.iter().map(|r| r.b.clone()).collect();
        let ordinal: Vec<Option<i64>> = chunk.iter().map(|r| Some(r.ordinal)).collect();
        write_chunk(
            c,
            "INSERT INTO identity_merge.rejections (project_id, reason_code, message, operation, id_a, id_b, source_row) \
             SELECT $1, u.r, u.m, u.o, u.a, u.b, pg_catalog.jsonb_build_object('backfill_ordinal', u.n) \
             FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]), pg_catalog.unnest($7::int8[])) u(r, m, o, a, b, n)",
            pid,
            |args| args.extend([reason.into(), message.into(), op.into(), a.into(), b.into(), ordinal.into()]),
        );
    }
}

/// (id, canonical) nodes as the two text arrays a bulk write of identities takes.
fn id_columns(graph: &Graph, chunk: &[crate::core::graph::IdNodes]) -> Vec<Vec<Option<String>>> {
    let (ids, canon): (Vec<Option<String>>, Vec<Option<String>>) = chunk
        .iter()
        .map(|&(i, c)| {
            (
                Some(graph.name(i).to_string()),
                Some(graph.name(c).to_string()),
            )
        })
        .unzip();
    vec![ids, canon]
}

/// Inserts ids new to the store (`Graph::new_and_moved_ids`' first list) with their canonical.
/// The caller keeps other writers out (a table lock, or the project held exclusively), so no
/// conflict check is needed.
pub(crate) fn insert_new_ids(
    c: &mut pgrx::spi::SpiClient<'_>,
    pid: i32,
    graph: &Graph,
    new_ids: &[crate::core::graph::IdNodes],
) {
    for chunk in new_ids.chunks(CHUNK) {
        text_array(
            c,
            "INSERT INTO identity_merge.identities (project_id, distinct_id, canonical_id) \
             SELECT $1, u.d, u.c FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) u(d, c)",
            id_columns(graph, chunk),
            pid,
        );
    }
}

/// Drops the stored clusters the graph's joins absorbed and writes the final size and identified
/// flag of every cluster they changed. Returns how many clusters were written.
///
/// Only a stored canonical has a cluster row (`Graph::is_stored_canonical`), as the online
/// path's join assumes too: an absorbed canonical that was new to the store has no row to
/// delete, and a cluster whose canonical is new is inserted without a conflict check (a
/// history's new clusters are most of them; the check costs about a third of the insert).
pub(crate) fn write_clusters(c: &mut pgrx::spi::SpiClient<'_>, pid: i32, graph: &mut Graph) -> i64 {
    // Names are made a chunk at a time: for a history of millions of joins, all of them at
    // once would cost more memory than the graph.
    let absorbed: Vec<u32> = graph
        .absorbed_nodes()
        .iter()
        .copied()
        .filter(|&x| graph.is_stored_canonical(x))
        .collect();
    for chunk in absorbed.chunks(CHUNK) {
        let absorbed: Vec<Option<String>> = chunk
            .iter()
            .map(|&x| Some(graph.name(x).to_string()))
            .collect();
        text_array(
            c,
            "DELETE FROM identity_merge.clusters WHERE project_id OPERATOR(pg_catalog.=) $1 \
             AND canonical_id OPERATOR(pg_catalog.=) ANY ($2::text[])",
            vec![absorbed],
            pid,
        );
    }
    let roots = graph.changed_roots();
    let (stored, new): (Vec<u32>, Vec<u32>) = roots
        .iter()
        .partition(|&&r| graph.is_stored_canonical(graph.root_canonical(r)));
    let insert = "INSERT INTO identity_merge.clusters (project_id, canonical_id, size, identified) \
         SELECT $1, u.c, u.s, u.i FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::int4[]), pg_catalog.unnest($4::bool[])) u(c, s, i)";
    let upsert = format!(
        "{insert} ON CONFLICT (project_id, canonical_id) DO UPDATE \
         SET size = EXCLUDED.size, identified = EXCLUDED.identified, updated_at = EXCLUDED.updated_at"
    );
    for (sql, roots) in [(upsert.as_str(), stored), (insert, new)] {
        for chunk in roots.chunks(CHUNK) {
            let facts: Vec<(&str, i64, bool)> =
                chunk.iter().map(|&r| graph.root_facts(r)).collect();
            let canon: Vec<Option<String>> =
                facts.iter().map(|(c, _, _)| Some(c.to_string())).collect();
            let sizes: Vec<Option<i32>> = facts.iter().map(|(_, s, _)| Some(*s as i32)).collect();
            let ident: Vec<Option<bool>> = facts.iter().map(|(_, _, i)| Some(*i)).collect();
            write_chunk(c, sql, pid, |args| {
                args.extend([canon.into(), sizes.into(), ident.into()])
            });
        }
    }
    roots.len() as i64
}

#[pg_extern(volatile, parallel_unsafe)]
fn mp_backfill(
    source: Option<&str>,
    project: default!(Option<&str>, "'default'"),
) -> TableIterator<
    'static,
    (
        name!(events, i64),
        name!(joins, i64),
        name!(refused, i64),
        name!(ids_written, i64),
        name!(clusters_written, i64),
    ),
> {
    let null = |argument| {
        raise(IdentityError::NullArgument {
            function: "mp_backfill",
            argument,
        })
    };
    let source = source.unwrap_or_else(|| null("source"));
    backfill(source, project.unwrap_or_else(|| null("project")), None)
}

/// `identity_merge._backfill_from_table(source text, project text, events regclass)`, declared
/// in sql/api.sql: mp_backfill_from's history query, read as the owner of `events`.
#[pg_extern(sql = false)]
fn _backfill_from_table(
    source: &str,
    project: &str,
    events: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(events, i64),
        name!(joins, i64),
        name!(refused, i64),
        name!(ids_written, i64),
        name!(clusters_written, i64),
    ),
> {
    backfill(source, project, Some(events))
}

/// mp_backfill's work, reading the history as the owner of `reader` when given.
fn backfill(
    source: &str,
    project: &str,
    reader: Option<pg_sys::Oid>,
) -> TableIterator<
    'static,
    (
        name!(events, i64),
        name!(joins, i64),
        name!(refused, i64),
        name!(ids_written, i64),
        name!(clusters_written, i64),
    ),
> {
    if source.trim().is_empty() {
        raise(IdentityError::InvalidArgument {
            what: "backfill source query",
            value: source.to_string(),
            hint: "Pass a query returning (operation text, id_a text, id_b text) in time order, e.g. SELECT op, a, b FROM history ORDER BY t.",
        });
    }
    let distributed = crate::sync::placement::distributed();
    if distributed {
        // Bulk writes to the replicated tables go to every node at once, which Citus refuses in
        // a transaction that already read a placement in this backend: none is, from here.
        Spi::run("SELECT pg_catalog.set_config('citus.enable_local_execution', 'off', true)")
            .or_bug("setting citus.enable_local_execution");
    }
    let project = store::project(Some(project)).or_raise();
    let settings = project.settings.clone();
    let pid = project.id;
    let mut refusals: Vec<Refusal> = Vec::new();
    // (joins, ids written, clusters written) of the batches written so far.
    let mut totals: (i64, i64, i64) = (0, 0, 0);
    // Refused rows of the batches written so far.
    let mut refused: i64 = 0;
    // The history ordinal of each join of `graph.joins`, and who loads the history.
    let mut join_ordinals: Vec<i64> = Vec::new();
    let log = LogRows {
        role: crate::pg::current_role_name(),
        provenance: store::merge_log_has_provenance(),
        distributed,
    };
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

        // The history, in the order the query gives.
        for_each_row(c, source, &[], reader, |r| {
            if r.columns() < 3 {
                raise(IdentityError::InvalidArgument {
                    what: "backfill source query",
                    value: source.to_string(),
                    hint: "It must return three columns: operation, id_a, id_b.",
                });
            }
            events += 1;
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
                        hint: "Its three columns (operation, id_a, id_b) must be text: cast them with ::text.",
                    })
                })
            };
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
                let source = store::Source {
                    kind: "backfill",
                    detail: serde_json::json!({ "backfill_ordinal": events }),
                };
                let result = match a.as_deref() {
                    None => Err(IdentityError::NullId { field: "distinct_id" }),
                    Some(id) => crate::api::retract::split(&project, id, &source).map(|_| ()),
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
            let op = name.as_deref().and_then(Op::from_history_name);
            let result = match (op, project.mode) {
                (None, _) => Err(IdentityError::MalformedEvent {
                    field: "operation".into(),
                    problem: format!(
                        "{:?} is not identify, alias, merge, link or split",
                        name.as_deref().unwrap_or("NULL")
                    ),
                }),
                (Some(op), mode) if !mode.allows(op) => Err(IdentityError::WrongMode {
                    op: "this operation",
                    token: project.token.clone(),
                    mode,
                }),
                (Some(Op::Link), _) => {
                    // The raw device id is validated as the online path does (ingest), then
                    // prefixed; a link needs both a valid user and a valid device.
                    let plan = crate::core::ingest::simplified_event(&settings, b.clone(), a.clone());
                    match (plan.refusals.into_iter().next(), plan.link) {
                        (Some(err), _) => Err(err),
                        (None, Some((user, device))) => {
                            graph.apply(&settings, Op::Link, Some(&user), Some(&device))
                        }
                        (None, None) => Err(IdentityError::NullId {
                            field: if a.is_none() { "$user_id" } else { "$device_id" },
                        }),
                    }
                }
                (Some(op), _) => graph.apply(&settings, op, a.as_deref(), b.as_deref()),
            };
            // The history entry each join came from (its provenance in the merge log).
            if graph.joins.len() > join_ordinals.len() {
                join_ordinals.push(events);
            }
            if graph.joins.len() >= CHUNK {
                let joins = graph.take_joins();
                Spi::connect_mut(|c| write_joins(c, pid, &graph, &joins, &join_ordinals, &log));
                join_ordinals.clear();
            }
            if let Err(err) = result {
                refusals.push(Refusal {
                    ordinal: events,
                    op: name,
                    a,
                    b,
                    err,
                });
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
                hint:
                    "Pass a query returning (operation text, id_a text, id_b text) in time order.",
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
        TableIterator::once((
            events,
            totals.0,
            refused + refusals.len() as i64,
            totals.1,
            totals.2,
        ))
    })
}
