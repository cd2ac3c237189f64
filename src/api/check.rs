//! `mp_check`'s merge-log replay: rebuilds the clusters from `identity_merge.merge_log` alone
//! (plain union-find, the kept canonical surviving each join; once the project holds
//! retractions, the joins in force replayed with the rules) and reports every id whose stored
//! canonical differs from the replay, or that the log does not explain. The structural checks
//! are plain SQL in sql/api.sql.

use std::collections::HashMap;
use std::ops::Not;

use pgrx::prelude::*;

use crate::pg::OrBug;

/// Replays joins (a, b, kept) and returns id -> canonical.
pub fn replay(
    joins: impl IntoIterator<Item = (String, String, String)>,
) -> HashMap<String, String> {
    let mut parent: HashMap<String, String> = HashMap::new();
    let mut canonical: HashMap<String, String> = HashMap::new();
    fn find(parent: &mut HashMap<String, String>, x: &str) -> String {
        let mut root = x.to_string();
        while let Some(p) = parent.get(&root) {
            if *p == root {
                break;
            }
            root = p.clone();
        }
        let mut cur = x.to_string();
        while cur != root {
            let next = parent
                .insert(cur.clone(), root.clone())
                .unwrap_or_else(|| root.clone());
            cur = next;
        }
        root
    }
    for (a, b, kept) in joins {
        for id in [&a, &b, &kept] {
            parent.entry(id.clone()).or_insert_with(|| id.clone());
        }
        let (ra, rb) = (find(&mut parent, &a), find(&mut parent, &b));
        if ra != rb {
            parent.insert(rb.clone(), ra.clone());
        }
        let root = find(&mut parent, &a);
        canonical.insert(root, kept);
    }
    let ids: Vec<String> = parent.keys().cloned().collect();
    ids.into_iter()
        .map(|id| {
            let root = find(&mut parent, &id);
            let c = canonical.get(&root).cloned().unwrap_or_else(|| id.clone());
            (id, c)
        })
        .collect()
}

/// Replays joins (a, b, kept) with their operations by the rules of `mode` (see
/// `core::graph::replay`) and returns id -> canonical.
fn replay_with_rules(
    joins: &[(String, String, String)],
    ops: &[String],
    mode: &str,
) -> HashMap<String, String> {
    let mode = crate::core::Mode::parse(mode).unwrap_or(crate::core::Mode::Original);
    let pairs: Vec<(crate::core::Op, &str, &str)> = joins
        .iter()
        .zip(ops)
        .filter_map(|((a, b, _), op)| {
            crate::core::Op::from_history_name(op).map(|op| (op, a.as_str(), b.as_str()))
        })
        .collect();
    let (mut graph, _) =
        crate::core::graph::replay(&crate::core::rules::RuleSettings::replaying(mode), &pairs);
    let mut out = HashMap::new();
    for (a, b, _) in joins {
        for id in [a, b] {
            if let Some((canonical, _, _)) = graph.cluster_of(id) {
                out.insert(id.clone(), canonical);
            }
        }
    }
    out
}

#[pg_schema]
mod identity_merge {
    use super::*;

    /// A NOT NULL text column of the state tables.
    fn text(row: &pgrx::spi::SpiHeapTupleData<'_>, n: usize) -> String {
        row.get(n)
            .or_bug("reading the identity state")
            .or_bug("reading the identity state")
    }

    /// Ids whose stored canonical disagrees with a replay of the merge log.
    #[pg_extern(stable, parallel_safe)]
    fn _check_log(
        project_id: i32,
    ) -> TableIterator<'static, (name!(check_name, String), name!(detail, String))> {
        // Joins still in force (the retracted ones left the graph), in log order, with their
        // operation: once a project holds retractions, a join's recorded canonical can be stale
        // (an earlier join it built on was taken back), so the log is replayed with the rules.
        let retractions = crate::store::merge_log_has_retractions();
        let (joins, ops, retracted, mode, stored) = Spi::connect(|c| {
            let sql = format!(
                "SELECT id_a::text, id_b::text, kept_canonical::text, operation::text FROM identity_merge.merge_log \
                 WHERE project_id OPERATOR(pg_catalog.=) $1 {} ORDER BY seq",
                if retractions { "AND retracted_by IS NULL" } else { "" }
            );
            let rows: Vec<(String, String, String, String)> = c
                .select(&sql, None, &[project_id.into()])
                .or_bug("reading the merge log")
                .map(|r| (text(&r, 1), text(&r, 2), text(&r, 3), text(&r, 4)))
                .collect();
            let ops: Vec<String> = rows.iter().map(|r| r.3.clone()).collect();
            let joins: Vec<(String, String, String)> =
                rows.into_iter().map(|(a, b, k, _)| (a, b, k)).collect();
            let retracted = retractions
                && c.select(
                    "SELECT 1 FROM identity_merge.retractions WHERE project_id OPERATOR(pg_catalog.=) $1 LIMIT 1",
                    Some(1),
                    &[project_id.into()],
                )
                .or_bug("reading the retractions")
                .is_empty()
                .not();
            let mode: String = c
                .select(
                    "SELECT mode::text FROM identity_merge.projects WHERE project_id OPERATOR(pg_catalog.=) $1",
                    Some(1),
                    &[project_id.into()],
                )
                .or_bug("reading the project")
                .first()
                .get(1)
                .or_bug("reading the project")
                .unwrap_or_default();
            let stored: Vec<(String, String)> = c
                .select(
                    "SELECT distinct_id::text, canonical_id::text FROM identity_merge.identities \
                     WHERE project_id OPERATOR(pg_catalog.=) $1",
                    None,
                    &[project_id.into()],
                )
                .or_bug("reading the identities")
                .map(|r| (text(&r, 1), text(&r, 2)))
                .collect();
            (joins, ops, retracted, mode, stored)
        });
        let mut replayed = if retracted {
            replay_with_rules(&joins, &ops, &mode)
        } else {
            replay(joins)
        };
        let mut out = Vec::new();
        for (id, canonical) in stored {
            match replayed.remove(&id) {
                None => out.push((
                    "log_replay".to_string(),
                    format!("id {id:?} is not in the merge log"),
                )),
                Some(r) if r != canonical => out.push((
                    "log_replay".to_string(),
                    format!("id {id:?} has canonical {canonical:?}; the merge log gives {r:?}"),
                )),
                Some(_) => {}
            }
        }
        for (id, _) in replayed {
            out.push((
                "log_replay".to_string(),
                format!("id {id:?} of the merge log is missing from identities"),
            ));
        }
        out.sort();
        TableIterator::new(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_follows_kept_canonicals() {
        let j = |a: &str, b: &str, k: &str| (a.to_string(), b.to_string(), k.to_string());
        let r = replay(vec![
            j("a", "b", "a"),
            j("u", "a", "u"),
            j("c", "d", "c"),
            j("c", "b", "c"),
        ]);
        for id in ["a", "b", "u", "c", "d"] {
            assert_eq!(r[id], "c", "{id}");
        }
        assert_eq!(r.len(), 5);
    }
}
