//! Bulk writes of the identity graph: a history's joins and refusals (`mp_backfill`,
//! api/backfill.rs) and a statement's batch (engine/batch.rs), written as arrays through a few
//! statements per chunk rather than one statement per join; and the cursor a history is read
//! through.

use pgrx::prelude::*;

use crate::core::error::{IdentityError, Reason};
use crate::core::graph::Graph;
use crate::pg::OrBug;

pub const FETCH: std::ffi::c_long = 10_000;
/// Rows per bulk write (small under the test suite, so its histories cross chunk boundaries).
pub const CHUNK: usize = if cfg!(feature = "pg_test") {
    16
} else {
    50_000
};

pub struct Refusal {
    pub ordinal: i64,
    pub op: Option<String>,
    pub a: Option<String>,
    pub b: Option<String>,
    pub err: IdentityError,
}

/// Runs `sql` through a cursor and hands every row to `f`, freeing each fetched batch (a history
/// may hold millions of rows). With `reader` (a user's table, for mp_backfill_from), the cursor
/// is opened and every batch fetched as that table's owner (pg/owner.rs); `f` runs as the caller.
pub fn for_each_row(
    c: &pgrx::spi::SpiClient<'_>,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    reader: Option<pg_sys::Oid>,
    f: impl FnMut(pgrx::spi::SpiHeapTupleData<'_>),
) -> Result<(), pgrx::spi::SpiError> {
    for_each_row_of(c, sql, args, reader.map(|r| (r, "mp_backfill_from")), f)
}

/// `for_each_row` reading as the owner of a table for the function named (its messages).
pub fn for_each_row_of(
    c: &pgrx::spi::SpiClient<'_>,
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    reader: Option<(pg_sys::Oid, &'static str)>,
    mut f: impl FnMut(pgrx::spi::SpiHeapTupleData<'_>),
) -> Result<(), pgrx::spi::SpiError> {
    fn as_reader<R>(reader: Option<(pg_sys::Oid, &'static str)>, f: impl FnOnce() -> R) -> R {
        match reader {
            Some((rel, what)) => crate::pg::owner::as_table_owner(rel, what, f),
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

pub fn text_array(
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
pub fn write_chunk(
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
pub fn load_graph(c: &pgrx::spi::SpiClient<'_>, pid: i32) -> Graph {
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
pub struct LogRows {
    pub role: String,
    pub provenance: bool,
    pub distributed: bool,
    /// The rows' source ('backfill', 'mixpanel_import') and source_detail: `detail` (a JSON
    /// object) with the join's history ordinal added under `ordinal_key`.
    pub source: &'static str,
    pub detail: serde_json::Value,
    pub ordinal_key: &'static str,
}

impl LogRows {
    /// A backfill's: source 'backfill', `{"backfill_ordinal": n}`.
    pub fn backfill(role: String, provenance: bool, distributed: bool) -> LogRows {
        LogRows {
            role,
            provenance,
            distributed,
            source: "backfill",
            detail: serde_json::json!({}),
            ordinal_key: "backfill_ordinal",
        }
    }
}

/// Writes what a batch of history did, in bulk: new and moved ids, absorbed and changed
/// clusters, one merge-log row per join (with its history ordinal), one rejection per refused
/// row. Returns (joins, ids written, clusters written).
pub fn write_batch(
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
pub fn write_joins(
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
                ", $10, $11::pg_catalog.jsonb OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object($12, u.h), $9, pg_catalog.pg_current_xact_id()".to_string(),
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
                log.role.as_str().into(),
                log.source.into(),
                pgrx::JsonB(log.detail.clone()).into(),
                log.ordinal_key.into()]),
        );
    }
}

/// One rejection per refused history entry, with its ordinal.
pub fn write_refusals(c: &mut pgrx::spi::SpiClient<'_>, pid: i32, refusals: &[Refusal]) {
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
pub fn id_columns(
    graph: &Graph,
    chunk: &[crate::core::graph::IdNodes],
) -> Vec<Vec<Option<String>>> {
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
pub fn insert_new_ids(
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
pub fn write_clusters(c: &mut pgrx::spi::SpiClient<'_>, pid: i32, graph: &mut Graph) -> i64 {
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

const SQL_REPOINT: &str = "UPDATE identity_merge.identities i SET canonical_id = u.k \
     FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) u(x, k) \
     WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.canonical_id OPERATOR(pg_catalog.=) u.x";

/// Writes a statement's batch (engine/batch.rs) decided in `graph`: stored ids of absorbed
/// clusters re-pointed, new ids, clusters, one merge-log row per join with its `sources` entry.
pub fn write_statement_batch(
    c: &mut pgrx::spi::SpiClient<'_>,
    pid: i32,
    graph: &mut Graph,
    sources: &[crate::store::Provenance],
) {
    // Every stored id of an absorbed cluster, loaded by the batch or not, goes to its cluster's
    // canonical now.
    let (absorbed, kept): (Vec<Option<String>>, Vec<Option<String>>) = graph
        .absorbed_stored()
        .into_iter()
        .map(|(x, k)| (Some(x), Some(k)))
        .unzip();
    if !absorbed.is_empty() {
        text_array(c, SQL_REPOINT, vec![absorbed, kept], pid);
    }
    let (new_ids, _) = graph.new_and_moved_ids();
    insert_new_ids(c, pid, graph, &new_ids);
    write_clusters(c, pid, graph);
    let g = &*graph;
    let text = |f: &dyn Fn(usize) -> String| -> Vec<Option<String>> {
        (0..g.joins.len()).map(|n| Some(f(n))).collect()
    };
    let operation = text(&|n| g.joins[n].op.as_str().to_string());
    let id_a = text(&|n| g.name(g.joins[n].a).to_string());
    let id_b = text(&|n| g.name(g.joins[n].b).to_string());
    let kept = text(&|n| g.name(g.joins[n].kept).to_string());
    let absorbed = text(&|n| g.name(g.joins[n].absorbed).to_string());
    let moved: Vec<Option<i32>> = g.joins.iter().map(|j| Some(j.moved as i32)).collect();
    let mut args: Vec<pgrx::datum::DatumWithOid> = vec![
        operation.into(),
        id_a.into(),
        id_b.into(),
        kept.into(),
        absorbed.into(),
        moved.into(),
    ];
    let sql = if crate::store::merge_log_has_provenance() {
        let kind: Vec<Option<String>> = sources.iter().map(|s| Some(s.kind.to_string())).collect();
        let detail: Vec<Option<String>> =
            sources.iter().map(|s| Some(s.detail.to_string())).collect();
        let role: Vec<Option<String>> = sources.iter().map(|s| Some(s.role.clone())).collect();
        args.extend([kind.into(), detail.into(), role.into()]);
        "INSERT INTO identity_merge.merge_log (project_id, operation, id_a, id_b, kept_canonical, absorbed_canonical, moved_ids, \
                                               source, source_detail, role_name, transaction_id) \
         SELECT $1, u.o, u.a, u.b, u.k, u.x, u.m, u.s, u.d::pg_catalog.jsonb, u.r, pg_catalog.pg_current_xact_id() \
         FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), \
                         pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]), pg_catalog.unnest($7::int4[]), \
                         pg_catalog.unnest($8::text[]), pg_catalog.unnest($9::text[]), pg_catalog.unnest($10::text[])) \
              WITH ORDINALITY u(o, a, b, k, x, m, s, d, r, n) \
         ORDER BY u.n"
    } else {
        "INSERT INTO identity_merge.merge_log (project_id, operation, id_a, id_b, kept_canonical, absorbed_canonical, moved_ids) \
         SELECT $1, u.o, u.a, u.b, u.k, u.x, u.m \
         FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), \
                         pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::text[]), pg_catalog.unnest($7::int4[])) \
              WITH ORDINALITY u(o, a, b, k, x, m, n) \
         ORDER BY u.n"
    };
    write_chunk(c, sql, pid, |all| all.extend(args));
}
