//! The identity graph in memory, for batch loads of history (`mp_backfill`) and a statement's
//! batch (batch.rs): a union-find over interned ids where every event goes through the same
//! `rules::precheck` / `rules::decide` as the online path, so every path gives the same
//! clusters, canonicals and refusals. Plain Rust.
//!
//! Memory is what limits a backfill (tens of millions of ids in one backend), so an id costs
//! its bytes plus about 30: the ids' bytes one after another in one buffer, a hash table of
//! node numbers (4 bytes a slot) that hashes and compares through that buffer, and the
//! union-find's facts as plain columns of 4-byte numbers.

use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::core::error::IdentityError;
use crate::core::rules::{self, Op, Outcome, RuleSettings, Side};

/// One join made by the batch, as the merge log records it; ids are nodes (`Graph::name`), so
/// a history of millions of joins holds no copies of their ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    pub op: Op,
    pub a: u32,
    pub b: u32,
    pub kept: u32,
    pub absorbed: u32,
    /// Ids the absorbed cluster held (a cluster's size is an int4 in the store).
    pub moved: u32,
}

/// (id, canonical) as nodes (`Graph::name`).
pub type IdNodes = (u32, u32);

/// `initial` of a node new in this graph (not loaded from the store).
const NEW: u32 = u32::MAX;

#[derive(Default)]
pub struct Graph {
    /// Every id's bytes, one after another: node `i` is `bytes[end[i - 1]..end[i]]`.
    bytes: Vec<u8>,
    end: Vec<u64>,
    /// Node numbers, hashed and compared by their ids' bytes. The hasher is hashbrown's default
    /// (foldhash, seeded at random per table): the ids come from users, so never an unseeded hash.
    index: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    parent: Vec<u32>,
    /// Per root: the canonical id (a node), the size, whether identified.
    canonical: Vec<u32>,
    size: Vec<u32>,
    identified: Vec<bool>,
    /// The canonical each node had when loaded (`NEW`: new in this batch).
    initial: Vec<u32>,
    /// Joins not written yet (`take_joins` hands them over for writing).
    pub joins: Vec<Join>,
    /// The kept and the absorbed canonical of every join made, written or not: what the
    /// clusters' writes need, 8 bytes a join.
    kept_all: Vec<u32>,
    absorbed_all: Vec<u32>,
}

/// The bytes of node `node` in the ids' buffer `bytes`, whose ends are `end`.
fn node_bytes<'a>(bytes: &'a [u8], end: &[u64], node: u32) -> &'a [u8] {
    let i = node as usize;
    let start = if i == 0 { 0 } else { end[i - 1] as usize };
    &bytes[start..end[i] as usize]
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    pub fn len(&self) -> usize {
        self.parent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parent.is_empty()
    }

    fn bytes_of(&self, node: u32) -> &[u8] {
        node_bytes(&self.bytes, &self.end, node)
    }

    /// The id of a node.
    pub fn name(&self, node: u32) -> &str {
        // SAFETY: ids are interned from &str (`intern`), one after another at char boundaries,
        // so a node's bytes are UTF-8. (Checking them again cost about 5% of an import's time:
        // every written id and every merge-log row's four ids are named.)
        unsafe { std::str::from_utf8_unchecked(self.bytes_of(node)) }
    }

    fn find_node(&self, id: &[u8]) -> Option<u32> {
        self.find_hashed(self.hasher.hash_one(id), id)
    }

    fn find_hashed(&self, hash: u64, id: &[u8]) -> Option<u32> {
        self.index.find(hash, |&n| self.bytes_of(n) == id).copied()
    }

    fn intern(&mut self, id: &str) -> u32 {
        // Hashed once, for the lookup and the insert.
        let hash = self.hasher.hash_one(id.as_bytes());
        if let Some(i) = self.find_hashed(hash, id.as_bytes()) {
            return i;
        }
        let i = self.parent.len() as u32;
        self.bytes.extend_from_slice(id.as_bytes());
        self.end.push(self.bytes.len() as u64);
        let (bytes, end, hasher) = (&self.bytes, &self.end, &self.hasher);
        // (The table may rehash while `self.index` is borrowed: the closure reads the ids'
        // buffer through the other fields.)
        self.index
            .insert_unique(hash, i, |&n| hasher.hash_one(node_bytes(bytes, end, n)));
        self.parent.push(i);
        self.canonical.push(i);
        self.size.push(1);
        self.identified.push(false);
        self.initial.push(NEW);
        i
    }

    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    /// Loads one stored id with its cluster's canonical, size and identified flag. When that
    /// stored cluster is held already (another of its ids was loaded), the id joins it as it is
    /// now: an online batch loads ids as its events reach them, and the cluster may have been
    /// joined to others in the batch since its first id was loaded (its stored facts are then
    /// out of date, the graph's are not).
    pub fn load(&mut self, id: &str, canonical: &str, size: i64, identified: bool) {
        if let Some(c) = self.find_node(canonical.as_bytes()) {
            if self.initial[c as usize] == c {
                let i = self.intern(id);
                if self.initial[i as usize] == NEW && self.parent[i as usize] == i {
                    let root = self.find(c);
                    self.parent[i as usize] = root;
                    self.initial[i as usize] = c;
                }
                return;
            }
        }
        let c = self.intern(canonical);
        let i = self.intern(id);
        let (rc, ri) = (self.find(c), self.find(i));
        if rc != ri {
            // Attach under the canonical's root; the root carries the stored cluster's facts.
            let (big, small) = if self.size[rc as usize] >= self.size[ri as usize] {
                (rc, ri)
            } else {
                (ri, rc)
            };
            self.parent[small as usize] = big;
        }
        let root = self.find(c);
        self.canonical[root as usize] = c;
        self.size[root as usize] = size as u32;
        self.identified[root as usize] = identified;
        self.initial[i as usize] = c;
        self.initial[c as usize] = c;
    }

    fn side(&mut self, id: &str) -> Side {
        match self.find_node(id.as_bytes()) {
            Some(i) => {
                let root = self.find(i);
                let exists = self.initial[i as usize] != NEW
                    || self.parent[i as usize] != i
                    || self.size[root as usize] > 1;
                if !exists {
                    return Side::new_id(id);
                }
                Side {
                    id: id.to_string(),
                    canonical: self.name(self.canonical[root as usize]).to_string(),
                    size: self.size[root as usize] as i64,
                    identified: self.identified[root as usize],
                    exists: true,
                }
            }
            None => Side::new_id(id),
        }
    }

    /// Applies one operation with the online rules. Returns the canonical id, or the refusal.
    pub fn apply(
        &mut self,
        settings: &RuleSettings,
        op: Op,
        a: Option<&str>,
        b: Option<&str>,
    ) -> Result<String, IdentityError> {
        rules::precheck(op, settings, a, b)?;
        let (a, b) = (a.unwrap(), b.unwrap());
        self.apply_decided(op, a, b, |sa, sb| rules::decide(op, settings, sa, sb))
    }

    /// Applies a join that `decide` decides from the two ids' clusters (`a`, `b` in call order
    /// of `op`, which the merge log records): `apply` with the rules of `op`, or an import of
    /// Mixpanel's mapping (core::mixpanel) with its own decision. Returns the canonical id.
    pub fn apply_decided(
        &mut self,
        op: Op,
        a: &str,
        b: &str,
        decide: impl FnOnce(&Side, &Side) -> Result<Outcome, IdentityError>,
    ) -> Result<String, IdentityError> {
        let (sa, sb) = (self.side(a), self.side(b));
        match decide(&sa, &sb)? {
            Outcome::Together(c) => Ok(c),
            Outcome::Join(plan) => {
                let (ia, ib) = (self.intern(a), self.intern(b));
                let (ra, rb) = (self.find(ia), self.find(ib));
                let kept_node = self.intern(&plan.kept.canonical);
                let absorbed_node = self.intern(&plan.absorbed.canonical);
                let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] {
                    (ra, rb)
                } else {
                    (rb, ra)
                };
                self.parent[small as usize] = big;
                self.canonical[big as usize] = kept_node;
                self.size[big as usize] = plan.size as u32;
                self.identified[big as usize] = plan.identified;
                self.joins.push(Join {
                    op,
                    a: ia,
                    b: ib,
                    kept: kept_node,
                    absorbed: absorbed_node,
                    moved: plan.absorbed.size as u32,
                });
                self.kept_all.push(kept_node);
                self.absorbed_all.push(absorbed_node);
                Ok(plan.kept.canonical)
            }
        }
    }

    /// The cluster of a known id: (canonical id, size, identified); None for an id the graph
    /// does not hold or that is alone.
    pub fn cluster_of(&mut self, id: &str) -> Option<(String, i64, bool)> {
        let side = self.side(id);
        side.exists
            .then_some((side.canonical, side.size, side.identified))
    }

    /// Every id whose canonical differs from what was loaded (or that is new), with its
    /// canonical now (the tests' readable form of `new_and_moved_ids`).
    #[cfg(test)]
    pub fn changed_ids(&mut self) -> Vec<(String, String)> {
        let (mut new, moved) = self.new_and_moved_ids();
        new.extend(moved);
        new.into_iter()
            .map(|(i, c)| (self.name(i).to_string(), self.name(c).to_string()))
            .collect()
    }

    /// `changed_ids` as (id, canonical) nodes in two lists, each sorted by id: ids new to the
    /// store, and stored ids whose canonical changed. (Sorted, their index entries are written
    /// in key order, and new ids need no conflict check.)
    pub fn new_and_moved_ids(&mut self) -> (Vec<IdNodes>, Vec<IdNodes>) {
        let (mut new, mut moved) = (Vec::new(), Vec::new());
        for i in 0..self.len() as u32 {
            let root = self.find(i);
            let c = self.canonical[root as usize];
            let initial = self.initial[i as usize];
            let in_cluster = self.size[root as usize] > 1 || initial != NEW;
            if in_cluster && initial != c {
                if initial == NEW {
                    new.push((i, c));
                } else {
                    moved.push((i, c));
                }
            }
        }
        // Byte order, as the identities' "C" collation sorts.
        let by_id = |x: &(u32, u32), y: &(u32, u32)| self.bytes_of(x.0).cmp(self.bytes_of(y.0));
        new.sort_unstable_by(by_id);
        moved.sort_unstable_by(by_id);
        (new, moved)
    }

    /// How many joins were made (written or not).
    pub fn joins_made(&self) -> usize {
        self.kept_all.len()
    }

    /// The joins not written yet, for writing; the graph keeps what the clusters need.
    pub fn take_joins(&mut self) -> Vec<Join> {
        std::mem::take(&mut self.joins)
    }

    /// The root of every cluster the joins changed, once each.
    pub fn changed_roots(&mut self) -> Vec<u32> {
        let mut roots: Vec<u32> = (0..self.kept_all.len())
            .map(|n| self.find(self.kept_all[n]))
            .collect();
        roots.sort_unstable();
        roots.dedup();
        roots
    }

    /// A root's canonical id, as a node.
    pub fn root_canonical(&self, root: u32) -> u32 {
        self.canonical[root as usize]
    }

    /// A root's cluster: (canonical id, size, identified).
    pub fn root_facts(&self, root: u32) -> (&str, i64, bool) {
        let r = root as usize;
        (
            self.name(self.canonical[r]),
            self.size[r] as i64,
            self.identified[r],
        )
    }

    /// Final facts of every cluster the joins changed: (canonical, size, identified).
    #[cfg(test)]
    pub fn changed_clusters(&mut self) -> Vec<(String, i64, bool)> {
        self.changed_roots()
            .into_iter()
            .map(|r| {
                let (c, size, identified) = self.root_facts(r);
                (c.to_string(), size, identified)
            })
            .collect()
    }

    /// Canonicals that stopped being canonical (their cluster rows go), as nodes.
    pub fn absorbed_nodes(&self) -> &[u32] {
        &self.absorbed_all
    }

    /// Whether a node was loaded as a stored cluster's canonical: only such a node has a
    /// cluster row in the store (every loaded id's canonical is loaded with it, and a canonical
    /// is a member of its own cluster, which `mp_check` verifies). Any other canonical a join
    /// keeps or absorbs is an id new to the store.
    pub fn is_stored_canonical(&self, node: u32) -> bool {
        self.initial[node as usize] == node
    }

    /// `absorbed_nodes` as ids.
    #[cfg(test)]
    pub fn absorbed_canonicals(&self) -> Vec<String> {
        self.absorbed_all
            .iter()
            .map(|&x| self.name(x).to_string())
            .collect()
    }

    /// The node of an id, interned when new (alone, in no cluster: `new_and_moved_ids` writes
    /// it only once a join puts it in one).
    pub fn node(&mut self, id: &str) -> u32 {
        self.intern(id)
    }

    /// Whether the graph holds `id` (loaded, or met by an operation).
    pub fn holds(&self, id: &str) -> bool {
        self.find_node(id.as_bytes()).is_some()
    }

    /// The canonical id now of an id the graph holds; None for one it does not hold (whose
    /// stored answer stands).
    pub fn canonical_of(&mut self, id: &[u8]) -> Option<&str> {
        let i = self.find_node(id)?;
        let root = self.find(i);
        Some(self.name(self.canonical[root as usize]))
    }

    /// Stored canonicals this batch absorbed, each with the canonical its cluster has now:
    /// every stored id pointing at the first must point at the second (also the ids the batch
    /// never loaded).
    pub fn absorbed_stored(&mut self) -> Vec<(String, String)> {
        let absorbed: Vec<u32> = self
            .absorbed_all
            .iter()
            .copied()
            .filter(|&x| self.initial[x as usize] == x)
            .collect();
        absorbed
            .into_iter()
            .map(|x| {
                let root = self.find(x);
                (
                    self.name(x).to_string(),
                    self.name(self.canonical[root as usize]).to_string(),
                )
            })
            .collect()
    }

    /// The canonical of an id now (itself when unknown).
    pub fn resolve(&mut self, id: &str) -> String {
        match self.find_node(id.as_bytes()) {
            Some(i) => {
                let root = self.find(i);
                self.name(self.canonical[root as usize]).to_string()
            }
            None => id.to_string(),
        }
    }
}

/// Replays logged joins in order, from nothing, with the rules: the clusters they make. How a
/// retraction recomputes a cluster from the joins that remain, and how `mp_check` checks a
/// project whose log holds retractions (a join's recorded canonical can be stale once an earlier
/// join is retracted). Returns the graph and the indexes of the joins the rules refused in the
/// replay (none for joins that were accepted in this order; a retraction retracts those too).
pub fn replay(settings: &RuleSettings, joins: &[(Op, &str, &str)]) -> (Graph, Vec<usize>) {
    let mut graph = Graph::new();
    let mut refused = Vec::new();
    for (i, (op, a, b)) in joins.iter().enumerate() {
        if graph.apply(settings, *op, Some(a), Some(b)).is_err() {
            refused.push(i);
        }
    }
    (graph, refused)
}

/// The chain of joins that connects `from` to `to`: the logged joins of a cluster form a tree
/// (each join connected two clusters that were apart, and refused operations are not joins), so
/// the chain is unique, and a breadth-first search finds it. `edges` are the joins' two ids;
/// the answer is the indexes of the joins on the chain, in order from `from`; `Some(vec![])`
/// when `from == to`; None when no chain connects them (two clusters).
pub fn join_path(edges: &[(&str, &str)], from: &str, to: &str) -> Option<Vec<usize>> {
    if from == to {
        return Some(Vec::new());
    }
    let mut adjacent: HashMap<&str, Vec<(usize, &str)>> = HashMap::new();
    for (i, (a, b)) in edges.iter().enumerate() {
        adjacent.entry(a).or_default().push((i, b));
        adjacent.entry(b).or_default().push((i, a));
    }
    // For each id reached: the join it was reached through and the id before it.
    let mut reached: HashMap<&str, Option<(usize, &str)>> = HashMap::new();
    reached.insert(from, None);
    let mut queue = std::collections::VecDeque::from([from]);
    while let Some(id) = queue.pop_front() {
        if id == to {
            let mut path = Vec::new();
            let mut at = to;
            while let Some(Some((edge, before))) = reached.get(at) {
                path.push(*edge);
                at = before;
            }
            path.reverse();
            return Some(path);
        }
        for &(edge, next) in adjacent.get(id).map(Vec::as_slice).unwrap_or(&[]) {
            if !reached.contains_key(next) {
                reached.insert(next, Some((edge, id)));
                queue.push_back(next);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_after_a_retraction_recomputes_the_cluster() {
        // merge(X, Y) kept X; merge(Y, Z) kept X (Y's canonical then). Retract the first: the
        // second alone makes {Y, Z} with Y canonical, X alone.
        let s = RuleSettings::replaying(crate::core::Mode::Original);
        let (mut g, refused) = replay(&s, &[(Op::Merge, "Y", "Z")]);
        assert!(refused.is_empty());
        assert_eq!(g.cluster_of("Z"), Some(("Y".to_string(), 2, false)));
        assert_eq!(g.cluster_of("X"), None);
        // identify marks the cluster identified; a device links once (Simplified)
        let (mut g, _) = replay(&s, &[(Op::Identify, "U", "D"), (Op::Alias, "A", "U")]);
        assert_eq!(g.cluster_of("A"), Some(("U".to_string(), 3, true)));
        let simplified = RuleSettings::replaying(crate::core::Mode::Simplified);
        let (_, refused) = replay(
            &simplified,
            &[(Op::Link, "U1", "$device:D"), (Op::Link, "U2", "$device:D")],
        );
        assert_eq!(refused, vec![1]);
    }

    #[test]
    fn join_paths_follow_the_tree() {
        // U-D1 (identify), U-A (alias), M-U (merge), D2-M (identify)
        let edges = [("U", "D1"), ("A", "U"), ("M", "U"), ("D2", "M")];
        assert_eq!(join_path(&edges, "D1", "M"), Some(vec![0, 2]));
        assert_eq!(join_path(&edges, "D2", "A"), Some(vec![3, 2, 1]));
        assert_eq!(join_path(&edges, "U", "U"), Some(vec![]));
        assert_eq!(join_path(&edges, "D1", "elsewhere"), None);
    }
    use crate::core::rules::AnonIdFormat;

    fn any() -> RuleSettings {
        RuleSettings {
            anon_id_format: AnonIdFormat::Any,
            ..RuleSettings::default()
        }
    }

    #[test]
    fn joins_follow_the_rules() {
        let s = any();
        let mut g = Graph::new();
        assert_eq!(
            g.apply(&s, Op::Merge, Some("a1"), Some("a2")).unwrap(),
            "a1"
        );
        assert_eq!(
            g.apply(&s, Op::Identify, Some("U"), Some("a2")).unwrap(),
            "U"
        );
        assert_eq!(g.resolve("a1"), "U");
        let e = g
            .apply(&s, Op::Identify, Some("V"), Some("a1"))
            .unwrap_err();
        assert_eq!(
            e.reason().unwrap().code(),
            "errAnonDistinctIdAssignedAlready"
        );
        assert_eq!(g.apply(&s, Op::Alias, Some("al"), Some("a1")).unwrap(), "U");
        assert_eq!(
            g.apply(&s, Op::Alias, Some("al"), Some("X"))
                .unwrap_err()
                .reason()
                .unwrap()
                .code(),
            "errAliasAlreadyExists"
        );
        assert_eq!(g.joins.len(), 3);
        let mut changed = g.changed_ids();
        changed.sort();
        assert_eq!(
            changed,
            vec![
                ("U".into(), "U".into()),
                ("a1".into(), "U".into()),
                ("a2".into(), "U".into()),
                ("al".into(), "U".into())
            ]
        );
        assert_eq!(g.changed_clusters(), vec![("U".into(), 4, true)]);
    }

    #[test]
    fn loaded_state_is_respected() {
        let s = RuleSettings {
            max_cluster_size: 3,
            ..any()
        };
        let mut g = Graph::new();
        g.load("U", "U", 2, true);
        g.load("d", "U", 2, true);
        assert_eq!(g.resolve("d"), "U");
        assert_eq!(
            g.apply(&s, Op::Identify, Some("V"), Some("d"))
                .unwrap_err()
                .reason()
                .unwrap()
                .code(),
            "errAnonDistinctIdAssignedAlready"
        );
        assert_eq!(g.apply(&s, Op::Merge, Some("x"), Some("d")).unwrap(), "x");
        assert_eq!(
            g.apply(&s, Op::Merge, Some("x"), Some("y"))
                .unwrap_err()
                .reason()
                .unwrap()
                .code(),
            "errManyIDs"
        );
        let mut changed = g.changed_ids();
        changed.sort();
        assert_eq!(
            changed,
            vec![
                ("U".into(), "x".into()),
                ("d".into(), "x".into()),
                ("x".into(), "x".into())
            ]
        );
        assert_eq!(g.absorbed_canonicals(), vec!["U".to_string()]);
    }

    #[test]
    fn ids_loaded_after_their_cluster_joined_take_its_state_now() {
        let s = any();
        let mut g = Graph::new();
        // Stored: {a1, a2} with canonical a1. The batch meets a1 first.
        g.load("a1", "a1", 2, false);
        assert_eq!(
            g.apply(&s, Op::Identify, Some("U"), Some("a1")).unwrap(),
            "U"
        );
        // a2 is met later: it joins the cluster as it is now, whose facts stay the graph's.
        assert!(!g.holds("a2"));
        g.load("a2", "a1", 2, false);
        assert_eq!(g.resolve("a2"), "U");
        assert_eq!(g.canonical_of(b"a2"), Some("U"));
        assert_eq!(g.canonical_of(b"zz"), None);
        assert_eq!(
            g.apply(&s, Op::Identify, Some("V"), Some("a2"))
                .unwrap_err()
                .reason()
                .unwrap()
                .code(),
            "errAnonDistinctIdAssignedAlready"
        );
        assert_eq!(g.changed_clusters(), vec![("U".into(), 3, true)]);
        // Stored ids of a1's cluster (loaded or not) move to U; U itself is new.
        assert_eq!(
            g.absorbed_stored(),
            vec![("a1".to_string(), "U".to_string())]
        );
        let (new, _) = g.new_and_moved_ids();
        let new: Vec<&str> = new.iter().map(|&(i, _)| g.name(i)).collect();
        assert_eq!(new, vec!["U"]);
    }

    #[test]
    fn many_ids_intern_once_and_keep_their_bytes() {
        let s = any();
        let mut g = Graph::new();
        // 20,000 joins of 40,000 ids of every length from 1 to 60 bytes, some multi-byte.
        for n in 0..20_000u32 {
            let a = format!("u{n}é{}", "x".repeat((n % 50) as usize));
            let b = format!("d{n}");
            g.apply(&s, Op::Merge, Some(&a), Some(&b)).unwrap();
        }
        assert_eq!(g.len(), 40_000);
        for n in (0..20_000u32).step_by(997) {
            let a = format!("u{n}é{}", "x".repeat((n % 50) as usize));
            assert!(g.holds(&a));
            assert_eq!(g.resolve(&format!("d{n}")), a);
            assert_eq!(g.canonical_of(format!("d{n}").as_bytes()), Some(a.as_str()));
        }
        assert!(!g.holds("d20000"));
        // Meeting the ids again finds the same nodes: no duplicates.
        g.apply(&s, Op::Merge, Some("d5"), Some("u5éxxxxx"))
            .unwrap();
        assert_eq!(g.len(), 40_000);
        assert_eq!(g.joins.len(), 20_000);
        let (new, moved) = g.new_and_moved_ids();
        assert_eq!((new.len(), moved.len()), (40_000, 0));
        // Sorted by bytes, as the store's "C" collation.
        assert!(new
            .windows(2)
            .all(|w| g.name(w[0].0).as_bytes() < g.name(w[1].0).as_bytes()));
    }

    #[test]
    fn absorbed_stored_canonicals_point_at_the_canonical_now_through_chains() {
        let s = any();
        let mut g = Graph::new();
        // Stored: {x1, x2} canonical x1; {y1, y2} canonical y1; z alone is new.
        g.load("x2", "x1", 2, false);
        g.load("y2", "y1", 2, false);
        // y absorbs x, then the new z absorbs y's cluster (merge keeps the first id's canonical).
        assert_eq!(
            g.apply(&s, Op::Merge, Some("y2"), Some("x2")).unwrap(),
            "y1"
        );
        assert_eq!(g.apply(&s, Op::Merge, Some("z"), Some("y1")).unwrap(), "z");
        let mut stored = g.absorbed_stored();
        stored.sort();
        assert_eq!(
            stored,
            vec![
                ("x1".to_string(), "z".to_string()),
                ("y1".to_string(), "z".to_string())
            ]
        );
        // z is the one new id; x1 and y1 are written by re-pointing, not listed as new.
        let (new, _) = g.new_and_moved_ids();
        let new: Vec<&str> = new.iter().map(|&(i, _)| g.name(i)).collect();
        assert_eq!(new, vec!["z"]);
        assert_eq!(g.changed_clusters(), vec![("z".to_string(), 5, false)]);
        let mut absorbed = g.absorbed_canonicals();
        absorbed.sort();
        assert_eq!(absorbed, vec!["x1".to_string(), "y1".to_string()]);
    }

    #[test]
    fn only_loaded_canonicals_count_as_stored_clusters() {
        let s = any();
        let mut g = Graph::new();
        // Stored: {x1, x2} canonical x1 (x2 loaded); n1, n2, m are new.
        g.load("x2", "x1", 2, false);
        g.apply(&s, Op::Merge, Some("n1"), Some("n2")).unwrap();
        g.apply(&s, Op::Merge, Some("m"), Some("n1")).unwrap();
        g.apply(&s, Op::Merge, Some("x2"), Some("m")).unwrap();
        let node = |g: &Graph, id: &str| g.find_node(id.as_bytes()).unwrap();
        assert!(g.is_stored_canonical(node(&g, "x1")));
        for id in ["x2", "n1", "n2", "m"] {
            assert!(!g.is_stored_canonical(node(&g, id)), "{id}");
        }
        // The three absorbed canonicals were new: no stored cluster row is theirs.
        let stored: Vec<&str> = g
            .absorbed_nodes()
            .iter()
            .filter(|&&x| g.is_stored_canonical(x))
            .map(|&x| g.name(x))
            .collect();
        assert!(stored.is_empty(), "{stored:?}");
        assert_eq!(g.absorbed_canonicals(), vec!["n2", "n1", "m"]);
        // The one changed cluster keeps the stored canonical: its row is updated, not inserted.
        let roots = g.changed_roots();
        assert_eq!(roots.len(), 1);
        let kept = g.root_canonical(roots[0]);
        assert_eq!(g.name(kept), "x1");
        assert!(g.is_stored_canonical(kept));
    }
}
