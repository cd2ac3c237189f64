//! Why two ids are one person: `mp_explain`, the chain of logged joins that connects an id to
//! its cluster's canonical id (or to another id). A cluster's joins form a tree (each join
//! connected two clusters that were apart), so the chain is unique; `core::graph::join_path`
//! finds it over the joins of the one cluster, read through the merge log's index on id_a.

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::core::graph::join_path;
use crate::pg::{as_owner, OrBug, OrRaise};

/// One logged join, as mp_explain shows it.
struct Join {
    seq: i64,
    operation: String,
    id_a: String,
    id_b: String,
    kept: String,
    absorbed: String,
    merged_at: pgrx::datum::TimestampWithTimeZone,
    source: Option<String>,
    source_detail: Option<pgrx::JsonB>,
    role_name: Option<String>,
    transaction_id: Option<i64>,
}

type Row = (
    i32,
    i64,
    String,
    String,
    String,
    String,
    String,
    pgrx::datum::TimestampWithTimeZone,
    Option<String>,
    Option<pgrx::JsonB>,
    Option<String>,
    Option<i64>,
);

/// The canonical id of `id`, or None when the id was never seen.
fn canonical_of(project_id: i32, id: &str) -> Option<String> {
    as_owner(|| {
        Spi::get_one_with_args::<String>(
            "SELECT canonical_id::text FROM identity_merge.identities \
             WHERE project_id OPERATOR(pg_catalog.=) $1 AND distinct_id OPERATOR(pg_catalog.=) $2",
            &[project_id.into(), id.into()],
        )
        .ok()
        .flatten()
    })
}

/// Every join in force (not retracted) of the cluster whose canonical id is `canonical`, in log order.
fn cluster_joins(project_id: i32, canonical: &str) -> Vec<Join> {
    as_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT l.seq, l.operation::text, l.id_a::text, l.id_b::text, l.kept_canonical::text, \
                        l.absorbed_canonical::text, l.merged_at, l.source, l.source_detail, l.role_name::text, \
                        l.transaction_id::text::int8 \
                   FROM identity_merge.identities i \
                   JOIN identity_merge.merge_log l \
                     ON l.project_id OPERATOR(pg_catalog.=) $1 AND l.id_a OPERATOR(pg_catalog.=) i.distinct_id \
                  WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.canonical_id OPERATOR(pg_catalog.=) $2 \
                    AND l.retracted_by IS NULL \
                  ORDER BY l.seq",
                None,
                &[project_id.into(), canonical.into()],
            )
            .or_bug("reading a cluster's joins")
            .map(|r| Join {
                seq: r.get(1).or_bug("reading a join").or_bug("reading a join"),
                operation: r.get(2).or_bug("reading a join").or_bug("reading a join"),
                id_a: r.get(3).or_bug("reading a join").or_bug("reading a join"),
                id_b: r.get(4).or_bug("reading a join").or_bug("reading a join"),
                kept: r.get(5).or_bug("reading a join").or_bug("reading a join"),
                absorbed: r.get(6).or_bug("reading a join").or_bug("reading a join"),
                merged_at: r.get(7).or_bug("reading a join").or_bug("reading a join"),
                source: r.get(8).or_bug("reading a join"),
                source_detail: r.get(9).or_bug("reading a join"),
                role_name: r.get(10).or_bug("reading a join"),
                transaction_id: r.get(11).or_bug("reading a join"),
            })
            .collect()
        })
    })
}

/// The chain of joins from `from` to `to` (both in the cluster `canonical`), as rows.
fn chain(project_id: i32, canonical: &str, from: &str, to: &str) -> Vec<Row> {
    let joins = cluster_joins(project_id, canonical);
    let edges: Vec<(&str, &str)> = joins
        .iter()
        .map(|j| (j.id_a.as_str(), j.id_b.as_str()))
        .collect();
    let path = join_path(&edges, from, to).unwrap_or_default();
    path.into_iter()
        .enumerate()
        .map(|(step, i)| {
            let j = &joins[i];
            (
                step as i32 + 1,
                j.seq,
                j.operation.clone(),
                j.id_a.clone(),
                j.id_b.clone(),
                j.kept.clone(),
                j.absorbed.clone(),
                j.merged_at,
                j.source.clone(),
                j.source_detail.as_ref().map(|d| pgrx::JsonB(d.0.clone())),
                j.role_name.clone(),
                j.transaction_id,
            )
        })
        .collect()
}

/// The chain of joins connecting `distinct_id` to its cluster's canonical id, one row per join
/// in path order (no rows for the canonical id itself). An id never seen: 42704.
#[pg_extern(stable, strict, parallel_safe)]
fn mp_explain(
    distinct_id: &str,
    project: default!(&str, "'default'"),
) -> TableIterator<
    'static,
    (
        name!(step, i32),
        name!(seq, i64),
        name!(operation, String),
        name!(id_a, String),
        name!(id_b, String),
        name!(kept_canonical, String),
        name!(absorbed_canonical, String),
        name!(merged_at, pgrx::datum::TimestampWithTimeZone),
        name!(source, Option<String>),
        name!(source_detail, Option<pgrx::JsonB>),
        name!(role_name, Option<String>),
        name!(transaction_id, Option<i64>),
    ),
> {
    let project_id = crate::engine::project_id(project)
        .map_err(|e| match e {
            IdentityError::UnknownProject { token } => {
                IdentityError::UnknownExplainProject { token }
            }
            other => other,
        })
        .or_raise();
    let canonical = canonical_of(project_id, distinct_id)
        .ok_or_else(|| IdentityError::UnknownId {
            id: distinct_id.to_string(),
            token: project.to_string(),
        })
        .or_raise();
    TableIterator::new(chain(project_id, &canonical, distinct_id, &canonical))
}

/// The chain of joins connecting two ids: no rows when they are not in one cluster (or are the
/// same id). The project is not optional here: `mp_explain(a, b)` is the one-id form. (The ids
/// are `from_id` / `to_id`: an input may not share a name with an output column.)
#[pg_extern(stable, strict, parallel_safe, name = "mp_explain")]
fn mp_explain_between(
    id_a: &str,
    id_b: &str,
    project: &str,
) -> TableIterator<
    'static,
    (
        name!(step, i32),
        name!(seq, i64),
        name!(operation, String),
        name!(id_a, String),
        name!(id_b, String),
        name!(kept_canonical, String),
        name!(absorbed_canonical, String),
        name!(merged_at, pgrx::datum::TimestampWithTimeZone),
        name!(source, Option<String>),
        name!(source_detail, Option<pgrx::JsonB>),
        name!(role_name, Option<String>),
        name!(transaction_id, Option<i64>),
    ),
> {
    let project_id = crate::engine::project_id(project).or_raise();
    let rows = match (
        canonical_of(project_id, id_a),
        canonical_of(project_id, id_b),
    ) {
        (Some(ca), Some(cb)) if ca == cb => chain(project_id, &ca, id_a, id_b),
        _ => Vec::new(),
    };
    TableIterator::new(rows)
}
