//! `mp_check`'s merge-log replay: rebuilds the clusters from `identity_merge.merge_log` alone
//! (plain union-find, the kept canonical surviving each join) and reports every id whose stored
//! canonical differs from the replay, or that the log does not explain. The structural checks
//! are plain SQL in sql/api.sql.

use std::collections::HashMap;

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
        let (joins, stored) = Spi::connect(|c| {
            let joins: Vec<(String, String, String)> = c
                .select(
                    "SELECT id_a::text, id_b::text, kept_canonical::text FROM identity_merge.merge_log \
                     WHERE project_id OPERATOR(pg_catalog.=) $1 ORDER BY seq",
                    None,
                    &[project_id.into()],
                )
                .or_bug("reading the merge log")
                .map(|r| (text(&r, 1), text(&r, 2), text(&r, 3)))
                .collect();
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
            (joins, stored)
        });
        let mut replayed = replay(joins);
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
