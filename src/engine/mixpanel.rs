//! `mp_import_mixpanel`'s work (its SQL function is in sql/mixpanel.sql, the Rust entry
//! api/mixpanel.rs): a Mixpanel data-pipeline export's identity mappings seeded into a project
//! in one pass, as `mp_backfill` seeds a history: the project's state loaded into a graph, the
//! mapping read through a cursor as its table's owner, planned and joined in memory by
//! `core::mixpanel`, then written in bulk (ids, clusters, one merge-log row per join with source
//! 'mixpanel_import'); refused rows recorded as rejections. Then the people rows as `$set`
//! updates. Online writers of identities wait for it (SHARE ROW EXCLUSIVE lock).

use pgrx::prelude::*;

use crate::core::error::IdentityError;

use crate::core::mixpanel::{Applied, Mappings};
use crate::pg::{raise, OrBug, OrRaise};
use crate::store;
use crate::store::bulk::*;
use crate::store::mixpanel::{insert_people, write_import_refusals, ImportRefusal};

/// What an import did: mp_import_mixpanel's result row, less the events it stamps in SQL.
#[derive(Default)]
pub struct Counts {
    pub mappings: i64,
    pub joins: i64,
    pub unchanged: i64,
    pub invalid: i64,
    pub mapped_twice: i64,
    pub chains: i64,
    pub conflicts: i64,
    pub ids_written: i64,
    pub clusters_written: i64,
    pub people: i64,
    pub people_refused: i64,
}

/// The operation recorded with the refused rows of each table.
const MAPPING_OPERATION: &str = "mixpanel_import";
const PEOPLE_OPERATION: &str = "mixpanel_people";
const FUNCTION: &str = "mp_import_mixpanel";

/// A column read as text (the SQL function casts the columns it checked to text).
fn text(r: &pgrx::spi::SpiHeapTupleData<'_>, n: usize) -> Option<String> {
    r.get::<String>(n).or_bug("reading an export row")
}

/// The import. `mapping_sql` returns (distinct_id, resolved_distinct_id) as text from the table
/// `mappings`; `people`, when given, the table and its query of (distinct_id, properties) as
/// text. Each table is read as its owner (pg/owner.rs).
pub fn import(
    token: &str,
    mappings: pg_sys::Oid,
    mapping_sql: &str,
    people: Option<(pg_sys::Oid, &str)>,
) -> Counts {
    let distributed = crate::sync::placement::distributed();
    if distributed {
        // The import's statement has read the replicated tables on this node already, after
        // which Citus refuses the bulk writes mp_backfill makes from a fresh backend: import on
        // one server, then mp_distribute (the identity state goes to every node with its rows).
        crate::pg::raise(IdentityError::NotOnCitus {
            function: "mp_import_mixpanel",
            hint: "Import before SELECT mp_distribute(): the imported identities go to every node with it.",
        });
    }
    let project = crate::engine::project(Some(token)).or_raise();
    // A caller who may not act as a table's owner is refused (42501) before anything is locked.
    for table in std::iter::once(mappings).chain(people.map(|(p, _)| p)) {
        crate::pg::owner::as_table_owner(table, FUNCTION, || ());
    }
    let settings = project.settings.clone();
    let mode = project.mode;
    let pid = project.id;
    let mut counts = Counts::default();
    let table_name = Spi::get_one_with_args::<String>(
        "SELECT $1::pg_catalog.oid::pg_catalog.regclass::pg_catalog.text",
        &[mappings.into()],
    )
    .or_bug("naming the mapping table")
    .unwrap_or_default();
    let mut log = LogRows::backfill(
        crate::pg::current_role_name(),
        store::merge_log_has_provenance(),
        distributed,
    );
    log.source = "mixpanel_import";
    log.detail = serde_json::json!({ "note": "imported from Mixpanel", "table": table_name });
    log.ordinal_key = "mapping_row";

    if !crate::sync::locks::hold_cluster_wide(pid) {
        raise(crate::core::error::IdentityError::project_contention(
            &project.token,
        ));
    }
    Spi::connect_mut(|c| {
        if !distributed {
            c.update("LOCK TABLE identity_merge.identities, identity_merge.clusters IN SHARE ROW EXCLUSIVE MODE", None, &[])
                .or_bug("reading the project state");
        }
        let mut graph = load_graph(c, pid);
        let mut plan = Mappings::new();
        let mut refusals: Vec<ImportRefusal> = Vec::new();
        let flush = |refusals: &mut Vec<ImportRefusal>| {
            Spi::connect_mut(|c| {
                write_import_refusals(c, pid, mappings, MAPPING_OPERATION, refusals)
            });
            refusals.clear();
        };

        // 1. Every row, its ids checked, kept as graph nodes.
        for_each_row_of(c, mapping_sql, &[], Some((mappings, FUNCTION)), |r| {
            counts.mappings += 1;
            let (d, resolved) = (text(&r, 1), text(&r, 2));
            if let Err(err) = plan.add(
                &mut graph,
                &settings,
                counts.mappings,
                d.as_deref(),
                resolved.as_deref(),
            ) {
                counts.invalid += 1;
                refusals.push(ImportRefusal {
                    ordinal: counts.mappings,
                    a: d,
                    b: resolved,
                    err,
                });
                if refusals.len() >= CHUNK {
                    flush(&mut refusals);
                }
            }
        })
        .or_bug("reading the identity mappings");

        // 2. Ids mapped twice and chains.
        let checked = plan.check(&graph);
        counts.mapped_twice = checked.mapped_twice.len() as i64;
        counts.chains = checked.chains.len() as i64;
        for (row, err) in checked.mapped_twice.into_iter().chain(checked.chains) {
            refusals.push(ImportRefusal {
                ordinal: row.ordinal,
                a: Some(graph.name(row.distinct_id).to_string()),
                b: Some(graph.name(row.resolved).to_string()),
                err,
            });
            if refusals.len() >= CHUNK {
                flush(&mut refusals);
            }
        }

        // 3. The joins, in export order; the merge log's rows written as they come.
        let mut join_ordinals: Vec<i64> = Vec::new();
        for row in &checked.accepted {
            match crate::core::mixpanel::apply(&mut graph, mode, &settings, row) {
                Ok(Applied::Joined) => join_ordinals.push(row.ordinal),
                Ok(Applied::Unchanged) => counts.unchanged += 1,
                Err(err) => {
                    counts.conflicts += 1;
                    refusals.push(ImportRefusal {
                        ordinal: row.ordinal,
                        a: Some(graph.name(row.distinct_id).to_string()),
                        b: Some(graph.name(row.resolved).to_string()),
                        err,
                    });
                    if refusals.len() >= CHUNK {
                        flush(&mut refusals);
                    }
                }
            }
            if graph.joins.len() >= CHUNK {
                let joins = graph.take_joins();
                write_joins(c, pid, &graph, &joins, &join_ordinals, &log);
                join_ordinals.clear();
            }
        }
        drop(checked.accepted);
        let (joins, ids, clusters) = write_batch(c, pid, &mut graph, &[], &join_ordinals, &log);
        drop(graph);
        write_import_refusals(c, pid, mappings, MAPPING_OPERATION, &refusals);
        refusals.clear();
        counts.joins = joins;
        counts.ids_written = ids;
        counts.clusters_written = clusters;

        // 4. People rows: `$set` updates of valid ids with a JSON object of properties.
        if let Some((people, people_sql)) = people {
            let mut rows: Vec<(String, String)> = Vec::new();
            let mut refused: Vec<ImportRefusal> = Vec::new();
            let mut n = 0i64;
            for_each_row_of(c, people_sql, &[], Some((people, FUNCTION)), |r| {
                n += 1;
                let (d, properties) = (text(&r, 1), text(&r, 2));
                match crate::core::mixpanel::people_row(
                    &settings,
                    d.as_deref(),
                    properties.as_deref(),
                ) {
                    Ok(()) => rows.push((d.unwrap(), properties.unwrap())),
                    Err(err) => refused.push(ImportRefusal {
                        ordinal: n,
                        a: d,
                        b: None,
                        err,
                    }),
                }
            })
            .or_bug("reading the people rows");
            counts.people_refused = refused.len() as i64;
            write_import_refusals(c, pid, people, PEOPLE_OPERATION, &refused);
            counts.people = insert_people(c, pid, rows);
        }

        // Fresh statistics for what was just written (as mp_backfill), and every backend's
        // stamp cache emptied at commit.
        crate::pg::as_owner(|| {
            c.update(
                "ANALYZE identity_merge.identities, identity_merge.clusters, identity_merge.merge_log",
                None,
                &[],
            )
            .or_bug("reading the project state")
        });
    });
    crate::sync::cache::signal();
    counts
}
