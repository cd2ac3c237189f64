//! Undo (its SQL functions are api/retract.rs): `mp_split` retracts every join an id took part in,
//! `mp_unjoin` one logged join. The cluster's remaining joins are replayed in log order with the
//! rules (`core::graph::replay`), which gives each resulting cluster its canonical id, size and
//! identified state, exactly as if the retracted joins had never been made; ids left without a join
//! leave the graph (an id never joined is alone and unknown to it). The retraction is logged with
//! its provenance (`identity_merge.retractions`, `merge_log.retracted_by`), under the project's
//! exclusive lock, so it is serialized with every other writer of the project.

use std::collections::{HashMap, HashSet};

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::core::graph::replay;
use crate::core::rules::{Project, RuleSettings};
use crate::core::Op;
use crate::pg::{as_owner, OrBug};

/// What to retract.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// Every join the id took part in.
    Id(&'a str),
    /// One join, by merge_log.seq.
    Seq(i64),
}

/// A logged join still in force.
struct Join {
    seq: i64,
    op: Op,
    a: String,
    b: String,
}

/// (id, old canonical, new canonical) for every id whose canonical changed.
pub type Changed = Vec<(String, String, String)>;

pub fn one_text(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<String> {
    Spi::get_one_with_args::<String>(sql, args).ok().flatten()
}

/// The canonical id of `id`, or None when the graph does not hold it.
fn canonical_of(project_id: i32, id: &str) -> Option<String> {
    one_text(
        "SELECT canonical_id::text FROM identity_merge.identities \
         WHERE project_id OPERATOR(pg_catalog.=) $1 AND distinct_id OPERATOR(pg_catalog.=) $2",
        &[project_id.into(), id.into()],
    )
}

/// Whether any logged join (retracted ones included) names `id`: an id alone after a
/// retraction, as opposed to one never seen.
fn ever_joined(project_id: i32, id: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM identity_merge.merge_log WHERE project_id OPERATOR(pg_catalog.=) $1 \
                         AND id_a OPERATOR(pg_catalog.=) $2) \
             OR EXISTS (SELECT 1 FROM identity_merge.merge_log WHERE project_id OPERATOR(pg_catalog.=) $1 \
                         AND id_b OPERATOR(pg_catalog.=) $2)",
        &[project_id.into(), id.into()],
    )
    .or_bug("reading the merge log")
    .unwrap_or(false)
}

/// The joins in force of the cluster `canonical`, in log order, and its ids.
fn cluster(project_id: i32, canonical: &str) -> (Vec<String>, Vec<Join>) {
    Spi::connect(|c| {
        let ids: Vec<String> = c
            .select(
                "SELECT distinct_id::text FROM identity_merge.identities \
                 WHERE project_id OPERATOR(pg_catalog.=) $1 AND canonical_id OPERATOR(pg_catalog.=) $2",
                None,
                &[project_id.into(), canonical.into()],
            )
            .or_bug("reading a cluster")
            .map(|r| r.get(1).or_bug("reading a cluster").or_bug("reading a cluster"))
            .collect();
        let joins: Vec<Join> = c
            .select(
                "SELECT l.seq, l.operation::text, l.id_a::text, l.id_b::text \
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
            .map(|r| {
                let name: String = r.get(2).or_bug("reading a join").or_bug("reading a join");
                Join {
                    seq: r.get(1).or_bug("reading a join").or_bug("reading a join"),
                    op: Op::from_history_name(&name)
                        .or_bug("reading the operation of a join"),
                    a: r.get(3).or_bug("reading a join").or_bug("reading a join"),
                    b: r.get(4).or_bug("reading a join").or_bug("reading a join"),
                }
            })
            .collect();
        (ids, joins)
    })
}

/// Retracts `target`'s joins in `project` and rewrites its cluster. Runs as the extension owner
/// with the project held exclusively.
pub fn retract(
    project: &Project,
    target: Target,
    provenance: &crate::store::Source,
) -> Result<Changed, IdentityError> {
    let role = crate::pg::current_role_name();
    as_owner(|| {
        // Serialized with every writer of the project: the cluster is read and rewritten whole.
        let limit = 0;
        if crate::sync::locks::hold_project(project.id, limit).is_none() {
            return Err(IdentityError::project_contention(&project.token));
        }
        let (canonical, target_text) = match target {
            Target::Id(id) => match canonical_of(project.id, id) {
                Some(c) => (c, id.to_string()),
                None if ever_joined(project.id, id) => return Ok(Vec::new()),
                None => {
                    return Err(IdentityError::UnknownId {
                        id: id.to_string(),
                        token: project.token.clone(),
                    })
                }
            },
            Target::Seq(seq) => {
                let row = Spi::connect(|c| {
                    let rows = c
                        .select(
                            "SELECT id_a::text, (retracted_by IS NOT NULL) FROM identity_merge.merge_log \
                             WHERE seq OPERATOR(pg_catalog.=) $1 AND project_id OPERATOR(pg_catalog.=) $2",
                            Some(1),
                            &[seq.into(), project.id.into()],
                        )
                        .or_bug("reading a join");
                    if rows.is_empty() {
                        return None;
                    }
                    let r = rows.first();
                    Some((
                        r.get::<String>(1)
                            .or_bug("reading a join")
                            .or_bug("reading a join"),
                        r.get::<bool>(2)
                            .or_bug("reading a join")
                            .or_bug("reading a join"),
                    ))
                });
                match row {
                    None => return Err(IdentityError::UnknownJoin { seq }),
                    Some((_, true)) => return Ok(Vec::new()),
                    Some((id_a, false)) => (
                        canonical_of(project.id, &id_a).or_bug("finding the cluster of a join"),
                        seq.to_string(),
                    ),
                }
            }
        };
        let (ids, joins) = cluster(project.id, &canonical);
        let mut retracted: HashSet<i64> = joins
            .iter()
            .filter(|j| match target {
                Target::Id(id) => j.a == id || j.b == id,
                Target::Seq(seq) => j.seq == seq,
            })
            .map(|j| j.seq)
            .collect();
        if retracted.is_empty() {
            return Ok(Vec::new());
        }
        let remaining: Vec<&Join> = joins
            .iter()
            .filter(|j| !retracted.contains(&j.seq))
            .collect();
        let pairs: Vec<(Op, &str, &str)> = remaining
            .iter()
            .map(|j| (j.op, j.a.as_str(), j.b.as_str()))
            .collect();
        let (mut graph, refused) = replay(&RuleSettings::replaying(project.mode), &pairs);
        // A join the rules would not make without the retracted ones goes too (it cannot, for
        // joins accepted in this order, but the log must replay to what is stored).
        retracted.extend(refused.iter().map(|&i| remaining[i].seq));

        // The new state of every id of the old cluster.
        let mut now: HashMap<&str, Option<String>> = HashMap::new();
        let mut clusters: HashMap<String, (i64, bool)> = HashMap::new();
        for id in &ids {
            let c = graph.cluster_of(id);
            if let Some((canon, size, identified)) = &c {
                clusters.insert(canon.clone(), (*size, *identified));
            }
            now.insert(id.as_str(), c.map(|(canon, _, _)| canon));
        }
        let (gone, moved): (Vec<_>, Vec<_>) = ids.iter().partition(|id| now[id.as_str()].is_none());
        let moved: Vec<(&String, String)> = moved
            .into_iter()
            .filter_map(|id| {
                let c = now[id.as_str()].clone().unwrap_or_default();
                (c != canonical).then_some((id, c))
            })
            .collect();
        let mut seqs: Vec<i64> = retracted.into_iter().collect();
        seqs.sort_unstable();

        Spi::connect_mut(|c| -> Result<(), pgrx::spi::SpiError> {
            c.update(
                "DELETE FROM identity_merge.clusters \
                 WHERE project_id OPERATOR(pg_catalog.=) $1 AND canonical_id OPERATOR(pg_catalog.=) $2",
                None,
                &[project.id.into(), canonical.as_str().into()],
            )?;
            let gone_ids: Vec<Option<String>> = gone.iter().map(|id| Some((*id).clone())).collect();
            c.update(
                "DELETE FROM identity_merge.identities \
                 WHERE project_id OPERATOR(pg_catalog.=) $1 AND distinct_id OPERATOR(pg_catalog.=) ANY ($2::text[])",
                None,
                &[project.id.into(), gone_ids.into()],
            )?;
            let moved_ids: Vec<Option<String>> = moved.iter().map(|(id, _)| Some((*id).clone())).collect();
            let moved_to: Vec<Option<String>> = moved.iter().map(|(_, c)| Some(c.clone())).collect();
            c.update(
                "UPDATE identity_merge.identities i SET canonical_id = u.c \
                   FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) u(d, c) \
                  WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.distinct_id OPERATOR(pg_catalog.=) u.d",
                None,
                &[project.id.into(), moved_ids.into(), moved_to.into()],
            )?;
            let canon: Vec<Option<String>> = clusters.keys().map(|k| Some(k.clone())).collect();
            let sizes: Vec<Option<i32>> = clusters.values().map(|(s, _)| Some(*s as i32)).collect();
            let ident: Vec<Option<bool>> = clusters.values().map(|(_, i)| Some(*i)).collect();
            c.update(
                "INSERT INTO identity_merge.clusters (project_id, canonical_id, size, identified) \
                 SELECT $1, u.c, u.s, u.i FROM ROWS FROM (pg_catalog.unnest($2::text[]), \
                        pg_catalog.unnest($3::int4[]), pg_catalog.unnest($4::bool[])) u(c, s, i)",
                None,
                &[project.id.into(), canon.into(), sizes.into(), ident.into()],
            )?;
            let operation = match target {
                Target::Id(_) => "split",
                Target::Seq(_) => "unjoin",
            };
            let seq_list: Vec<Option<i64>> = seqs.iter().map(|s| Some(*s)).collect();
            c.update(
                "WITH r AS (INSERT INTO identity_merge.retractions \
                      (project_id, operation, target, old_canonical, retracted, source, source_detail, role_name, transaction_id) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, pg_catalog.pg_current_xact_id()) RETURNING retraction_id) \
                 UPDATE identity_merge.merge_log l SET retracted_by = r.retraction_id FROM r \
                  WHERE l.seq OPERATOR(pg_catalog.=) ANY ($5::int8[])",
                None,
                &[
                    project.id.into(),
                    operation.into(),
                    target_text.as_str().into(),
                    canonical.as_str().into(),
                    seq_list.into(),
                    provenance.kind.into(),
                    pgrx::JsonB(provenance.detail.clone()).into(),
                    role.as_str().into(),
                ],
            )?;
            Ok(())
        })
        .or_bug("writing a retraction");
        // This backend's stamp cache: emptied (other backends hear of it at commit).
        crate::sync::cache::clear();
        crate::sync::stats::count(project.id, crate::sync::stats::Counter::Splits, 1);
        crate::store::queue_stale(project.id, std::iter::once(canonical.as_str()));

        let mut changed: Changed = gone
            .iter()
            .map(|id| ((*id).clone(), canonical.clone(), (*id).clone()))
            .chain(
                moved
                    .iter()
                    .map(|(id, c)| ((*id).clone(), canonical.clone(), c.clone())),
            )
            .filter(|(_, old, new)| old != new)
            .collect();
        changed.sort();
        Ok(changed)
    })
}

/// `mp_split` for a history row of `mp_backfill` (the caller holds the tables locked).
pub fn split(
    project: &Project,
    id: &str,
    source: &crate::store::Source,
) -> Result<Changed, IdentityError> {
    retract(project, Target::Id(id), source)
}
