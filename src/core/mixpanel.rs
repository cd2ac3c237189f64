//! A Mixpanel project's identity mappings (its data pipelines' `mp_identity_mappings_data`:
//! `distinct_id`, `resolved_distinct_id`), planned for `mp_import_mixpanel`. Plain Rust.
//!
//! Two steps, over the ids of the graph the import writes (`Graph::node`, so that ten million
//! rows cost their ids once and 16 bytes a row):
//! 1. `Mappings::add`, per row as read: both ids valid (`RuleSettings::validate_id`, else the
//!    row is refused as the identity functions refuse such an id), kept as nodes, and what
//!    each distinct_id is mapped to (once, or to two different ids).
//! 2. `Mappings::check`, once every row is in: a distinct_id mapped to two different resolved
//!    ids (`errMappedTwice`: none of its rows is imported, whichever came first), and a row
//!    whose resolved id is itself mapped to another id (`errMappingChain`: in a consistent
//!    export a resolved id resolves to itself). Order-independent: the same rows in any order
//!    give the same verdicts.
//!
//! Then `apply` joins each accepted row in the graph: the distinct_id joins the resolved id's
//! person. Ids new to the project take Mixpanel's resolved id as their canonical (the rules'
//! choice of canonical depends on the order of events the export no longer has); an id the
//! project already holds in an identified cluster (in a Legacy project: any cluster) keeps
//! its person, and the row is refused as a conflict (`errImportConflict`), never overwritten.

use crate::core::error::{IdentityError, Reason};
use crate::core::graph::Graph;
use crate::core::rules::{JoinPlan, Outcome, RuleSettings, Side, DEVICE_PREFIX};
use crate::core::{Mode, Op};

/// One mapping row that passed the id checks: its position in the export (1-based, as read)
/// and its two ids as graph nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingRow {
    pub ordinal: i64,
    pub distinct_id: u32,
    pub resolved: u32,
}

/// `resolved[node]` while no row maps the node.
const UNSET: u32 = u32::MAX;

/// The mapping rows read so far (step 1) and what each distinct_id is mapped to.
#[derive(Default)]
pub struct Mappings {
    rows: Vec<MappingRow>,
    /// Per node: the resolved id of the first row mapping it (UNSET: none).
    resolved: Vec<u32>,
    /// Nodes mapped to two different ids, with the second one (rare: a map).
    twice: std::collections::HashMap<u32, u32>,
}

/// What step 2 decided: the rows to import in export order, and the refused ones.
pub struct Checked {
    pub accepted: Vec<MappingRow>,
    pub mapped_twice: Vec<(MappingRow, IdentityError)>,
    pub chains: Vec<(MappingRow, IdentityError)>,
}

/// What importing one accepted row did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A join was made (the merge log records it).
    Joined,
    /// The ids were one person already (a self row, a duplicate row, a re-import).
    Unchanged,
}

impl Mappings {
    pub fn new() -> Mappings {
        Mappings::default()
    }

    /// Rows kept so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Step 1 for one row: refused (the error to record) when an id is NULL or not a valid id.
    pub fn add(
        &mut self,
        graph: &mut Graph,
        settings: &RuleSettings,
        ordinal: i64,
        distinct_id: Option<&str>,
        resolved: Option<&str>,
    ) -> Result<(), IdentityError> {
        settings.validate_id("distinct_id", distinct_id)?;
        settings.validate_id("resolved_distinct_id", resolved)?;
        let d = graph.node(distinct_id.unwrap());
        let r = graph.node(resolved.unwrap());
        let needed = graph.len();
        if self.resolved.len() < needed {
            self.resolved.resize(needed, UNSET);
        }
        let first = self.resolved[d as usize];
        if first == UNSET {
            self.resolved[d as usize] = r;
        } else if first != r {
            self.twice.entry(d).or_insert(r);
        }
        self.rows.push(MappingRow {
            ordinal,
            distinct_id: d,
            resolved: r,
        });
        Ok(())
    }

    /// Another id `node` is mapped to than `not` (for the message of a refused row).
    fn other_of(&self, node: u32, not: u32) -> u32 {
        let first = self.resolved[node as usize];
        if first != not {
            first
        } else {
            self.twice.get(&node).copied().unwrap_or(first)
        }
    }

    /// Step 2: every row kept, in export order, accepted or refused.
    pub fn check(self, graph: &Graph) -> Checked {
        let mut checked = Checked {
            accepted: Vec::with_capacity(self.rows.len()),
            mapped_twice: Vec::new(),
            chains: Vec::new(),
        };
        let name = |n: u32| graph.name(n).to_string();
        for row in &self.rows {
            let (d, r) = (row.distinct_id, row.resolved);
            if self.twice.contains_key(&d) {
                let err = IdentityError::BadMapping {
                    reason: Reason::MappedTwice,
                    distinct_id: name(d),
                    resolved: name(r),
                    other: name(self.other_of(d, r)),
                };
                checked.mapped_twice.push((*row, err));
                continue;
            }
            // The resolved id mapped to anything but itself (or to two ids): a chain.
            let of_r = self.resolved.get(r as usize).copied().unwrap_or(UNSET);
            if d != r && of_r != UNSET && (of_r != r || self.twice.contains_key(&r)) {
                let err = IdentityError::BadMapping {
                    reason: Reason::MappingChain,
                    distinct_id: name(d),
                    resolved: name(r),
                    other: name(self.other_of(r, r)),
                };
                checked.chains.push((*row, err));
                continue;
            }
            checked.accepted.push(*row);
        }
        checked
    }
}

/// The operation a merge log records an imported join as, in call order (a, b): `link(user,
/// device)` for a Simplified project's device, else `identify(resolved, distinct_id)`. Both
/// keep the first id's cluster's canonical and mark the cluster identified, so the log
/// replays (mp_check, mp_split) to the clusters the import made.
pub fn logged_op(mode: Mode, distinct_id: &str, resolved: &str) -> Op {
    if mode == Mode::Simplified
        && distinct_id.starts_with(DEVICE_PREFIX)
        && !resolved.starts_with(DEVICE_PREFIX)
    {
        Op::Link
    } else {
        Op::Identify
    }
}

/// Whether an imported row may join `d` (the distinct_id's cluster) to `r` (the resolved id's):
/// together already, joined (the resolved id's canonical kept, the cluster identified), or
/// refused when the distinct_id already belongs to a person of the project.
pub fn decide(
    mode: Mode,
    settings: &RuleSettings,
    r: &Side,
    d: &Side,
) -> Result<Outcome, IdentityError> {
    if r.canonical == d.canonical {
        return Ok(Outcome::Together(r.canonical.clone()));
    }
    // Within one import a distinct_id is met once (step 2), so an existing cluster of it is
    // the project's own: an identified one is another person (Legacy: any, aliases are final).
    if d.exists && (d.identified || mode == Mode::Legacy) {
        return Err(IdentityError::BadMapping {
            reason: Reason::ImportConflict,
            distinct_id: d.id.clone(),
            resolved: r.id.clone(),
            other: d.canonical.clone(),
        });
    }
    let size = r.size + d.size;
    // Two clusters the project held are joined within its size limit (Original); a new id joins
    // its Mixpanel person whatever the size (Mixpanel's own limit made the cluster).
    if d.exists && mode == Mode::Original && size > settings.max_cluster_size {
        return Err(IdentityError::ManyIds {
            op: Op::Identify,
            a: r.id.clone(),
            b: d.id.clone(),
            size,
            limit: settings.max_cluster_size,
        });
    }
    Ok(Outcome::Join(JoinPlan {
        kept: r.clone(),
        absorbed: d.clone(),
        size,
        identified: true,
    }))
}

/// Step 3 for one accepted row: the join in the graph.
pub fn apply(
    graph: &mut Graph,
    mode: Mode,
    settings: &RuleSettings,
    row: &MappingRow,
) -> Result<Applied, IdentityError> {
    if row.distinct_id == row.resolved {
        return Ok(Applied::Unchanged);
    }
    let d = graph.name(row.distinct_id).to_string();
    let r = graph.name(row.resolved).to_string();
    let before = graph.joins_made();
    graph.apply_decided(logged_op(mode, &d, &r), &r, &d, |sr, sd| {
        decide(mode, settings, sr, sd)
    })?;
    Ok(if graph.joins_made() > before {
        Applied::Joined
    } else {
        Applied::Unchanged
    })
}

/// A people row of the export (`distinct_id`, `properties`), imported as a `$set` of its
/// properties: a valid id and a JSON object, else refused (errInvalidID, errNullID,
/// errMalformedEvent).
pub fn people_row(
    settings: &RuleSettings,
    distinct_id: Option<&str>,
    properties: Option<&str>,
) -> Result<(), IdentityError> {
    settings.validate_id("distinct_id", distinct_id)?;
    let bad = |problem: &str| IdentityError::MalformedEvent {
        field: "properties".into(),
        problem: problem.into(),
    };
    match serde_json::from_str::<serde_json::Value>(properties.ok_or_else(|| bad("is NULL"))?) {
        Ok(serde_json::Value::Object(_)) => Ok(()),
        Ok(_) => Err(bad("is not a JSON object")),
        Err(_) => Err(bad("is not valid JSON")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RuleSettings {
        RuleSettings::default()
    }

    /// Plans and imports `rows` into `graph`; returns (joined, unchanged, refused codes by
    /// ordinal).
    fn import(
        graph: &mut Graph,
        mode: Mode,
        rows: &[(Option<&str>, Option<&str>)],
    ) -> (usize, usize, Vec<(i64, &'static str)>) {
        let s = settings();
        let mut m = Mappings::new();
        let mut refused = Vec::new();
        for (n, (d, r)) in rows.iter().enumerate() {
            if let Err(e) = m.add(graph, &s, n as i64 + 1, *d, *r) {
                refused.push((n as i64 + 1, e.reason().unwrap().code()));
            }
        }
        let checked = m.check(graph);
        for (row, e) in checked.mapped_twice.iter().chain(&checked.chains) {
            refused.push((row.ordinal, e.reason().unwrap().code()));
        }
        let (mut joined, mut unchanged) = (0, 0);
        for row in &checked.accepted {
            match apply(graph, mode, &s, row) {
                Ok(Applied::Joined) => joined += 1,
                Ok(Applied::Unchanged) => unchanged += 1,
                Err(e) => refused.push((row.ordinal, e.reason().unwrap().code())),
            }
        }
        refused.sort();
        (joined, unchanged, refused)
    }

    #[test]
    fn every_id_resolves_as_mapped_with_mixpanels_canonical() {
        let mut g = Graph::new();
        // Mixpanel's canonical need not be the one the rules would pick (the identified id of
        // the first $identify): here an anonymous id resolves the cluster.
        let (joined, unchanged, refused) = import(
            &mut g,
            Mode::Original,
            &[
                (Some("d1"), Some("U1")),
                (Some("d2"), Some("U1")),
                (Some("U1"), Some("U1")),
                (Some("api-merged"), Some("U1")),
                (Some("U2"), Some("anon-9")),
            ],
        );
        assert_eq!((joined, unchanged, refused), (4, 1, vec![]));
        for id in ["d1", "d2", "U1", "api-merged"] {
            assert_eq!(g.resolve(id), "U1");
        }
        assert_eq!(g.resolve("U2"), "anon-9");
        assert_eq!(g.cluster_of("d1"), Some(("U1".to_string(), 4, true)));
        // Logged as identify(resolved, distinct_id): the replay gives the same clusters.
        let log: Vec<(Op, &str, &str)> = g
            .joins
            .iter()
            .map(|j| (j.op, g.name(j.a), g.name(j.b)))
            .collect();
        assert!(log.iter().all(|(op, _, _)| *op == Op::Identify));
        let s = RuleSettings::replaying(Mode::Original);
        let (mut replayed, refused) = crate::core::graph::replay(&s, &log);
        assert!(refused.is_empty());
        for id in ["d1", "d2", "api-merged"] {
            assert_eq!(replayed.resolve(id), "U1");
        }
        assert_eq!(replayed.resolve("U2"), "anon-9");
    }

    #[test]
    fn malformed_rows_are_refused_with_their_reason() {
        let mut g = Graph::new();
        let (joined, _, refused) = import(
            &mut g,
            Mode::Original,
            &[
                (None, Some("U1")),              // 1 NULL distinct_id
                (Some("d1"), None),              // 2 NULL resolved id
                (Some(""), Some("U1")),          // 3 empty
                (Some("d2"), Some("undefined")), // 4 blocked
                (Some("twice"), Some("U1")),     // 5 mapped to two ids...
                (Some("twice"), Some("U2")),     // 6 ...both refused
                (Some("twice"), Some("U1")),     // 7 (a repeat of 5, refused too)
                (Some("a"), Some("b")),          // 8 chain: b is mapped to c
                (Some("b"), Some("c")),          // 9 fine
                (Some("ok"), Some("U1")),        // 10 fine
                (Some("x"), Some("twice")),      // 11 chain: twice is mapped elsewhere
            ],
        );
        assert_eq!(joined, 2);
        assert_eq!(
            refused,
            vec![
                (1, "errNullID"),
                (2, "errNullID"),
                (3, "errInvalidID"),
                (4, "errInvalidID"),
                (5, "errMappedTwice"),
                (6, "errMappedTwice"),
                (7, "errMappedTwice"),
                (8, "errMappingChain"),
                (11, "errMappingChain"),
            ]
        );
        assert_eq!(g.resolve("b"), "c");
        assert_eq!(g.resolve("a"), "a");
        assert_eq!(g.resolve("twice"), "twice");
        assert_eq!(g.resolve("ok"), "U1");
        // Refused ids are interned but in no cluster: nothing of them is written.
        let (new, moved) = g.new_and_moved_ids();
        let mut written: Vec<&str> = new.iter().map(|&(i, _)| g.name(i)).collect();
        written.sort();
        assert_eq!(written, vec!["U1", "b", "c", "ok"]);
        assert!(moved.is_empty());
    }

    #[test]
    fn verdicts_do_not_depend_on_row_order() {
        let rows = [
            (Some("t"), Some("R1")),
            (Some("t"), Some("R2")),
            (Some("a"), Some("b")),
            (Some("b"), Some("c")),
            (Some("e"), Some("R1")),
        ];
        let mut reversed = rows;
        reversed.reverse();
        let mut g1 = Graph::new();
        let mut g2 = Graph::new();
        let (j1, _, r1) = import(&mut g1, Mode::Original, &rows);
        let (j2, _, r2) = import(&mut g2, Mode::Original, &reversed);
        assert_eq!(j1, j2);
        let codes = |r: &[(i64, &'static str)]| {
            let mut c: Vec<&str> = r.iter().map(|x| x.1).collect();
            c.sort();
            c
        };
        assert_eq!(codes(&r1), codes(&r2));
        for id in ["t", "a", "b", "e"] {
            assert_eq!(g1.resolve(id), g2.resolve(id));
        }
    }

    #[test]
    fn a_second_import_changes_nothing() {
        let rows = [
            (Some("d1"), Some("U1")),
            (Some("$device:D1"), Some("U1")),
            (Some("d3"), Some("U3")),
        ];
        let mut g = Graph::new();
        assert_eq!(import(&mut g, Mode::Original, &rows).0, 3);
        let joins = g.joins_made();
        let (joined, unchanged, refused) = import(&mut g, Mode::Original, &rows);
        assert_eq!((joined, unchanged, refused), (0, 3, vec![]));
        assert_eq!(g.joins_made(), joins);
    }

    #[test]
    fn ids_the_project_holds_are_merged_by_the_rules_or_refused() {
        let mut g = Graph::new();
        // Stored: an identified person P {P, pd, pd2}; an anonymous merge {m1, m2} (not
        // identified).
        g.load("P", "P", 3, true);
        g.load("pd", "P", 3, true);
        g.load("pd2", "P", 3, true);
        g.load("m1", "m1", 2, false);
        g.load("m2", "m1", 2, false);
        let (joined, unchanged, refused) = import(
            &mut g,
            Mode::Original,
            &[
                (Some("pd"), Some("P")),   // 1 already together
                (Some("pd2"), Some("U9")), // 2 pd2 is P's: conflict, never overwritten
                (Some("m2"), Some("U9")),  // 3 anonymous cluster joins U9 (canonical U9)
                (Some("n"), Some("P")),    // 4 a new id joins the stored person (canonical P)
            ],
        );
        assert_eq!(joined, 2);
        assert_eq!(unchanged, 1);
        assert_eq!(refused, vec![(2, "errImportConflict")]);
        assert_eq!(g.resolve("pd2"), "P");
        assert_eq!(g.resolve("m1"), "U9");
        assert_eq!(g.resolve("n"), "P");
        // Legacy: any stored cluster of the distinct_id is final.
        let mut g = Graph::new();
        g.load("m2", "m1", 2, false);
        let (_, _, refused) = import(&mut g, Mode::Legacy, &[(Some("m2"), Some("U9"))]);
        assert_eq!(refused, vec![(1, "errImportConflict")]);
    }

    #[test]
    fn simplified_devices_are_logged_as_links() {
        let mut g = Graph::new();
        let (joined, _, refused) = import(
            &mut g,
            Mode::Simplified,
            &[
                (Some("$device:D1"), Some("U1")),
                (Some("$device:D2"), Some("U1")),
                // A user merged into another (a project that was Original before): imported,
                // logged as identify.
                (Some("U0"), Some("U1")),
            ],
        );
        assert_eq!((joined, refused), (3, vec![]));
        let ops: Vec<Op> = g.joins.iter().map(|j| j.op).collect();
        assert_eq!(ops, vec![Op::Link, Op::Link, Op::Identify]);
        assert_eq!(g.resolve("$device:D2"), "U1");
        assert_eq!(g.resolve("U0"), "U1");
        // A device the project already linked to another user: a conflict.
        let (_, _, refused) = import(
            &mut g,
            Mode::Simplified,
            &[(Some("$device:D1"), Some("U7"))],
        );
        assert_eq!(refused, vec![(1, "errImportConflict")]);
        let e = decide(
            Mode::Simplified,
            &settings(),
            &Side::new_id("U7"),
            &Side {
                id: "$device:D1".into(),
                canonical: "U1".into(),
                size: 4,
                identified: true,
                exists: true,
            },
        )
        .unwrap_err();
        assert_eq!(
            e.message(),
            "errImportConflict: mapping of distinct_id \"$device:D1\" to resolved_distinct_id \"U7\" not imported: the distinct_id already belongs to person \"U1\" in this project"
        );
    }

    #[test]
    fn people_rows_are_a_valid_id_and_an_object() {
        let s = settings();
        assert_eq!(
            people_row(&s, Some("U1"), Some(r#"{"$name": "Ann"}"#)),
            Ok(())
        );
        let code = |d: Option<&str>, p: Option<&str>| {
            people_row(&s, d, p).unwrap_err().reason().unwrap().code()
        };
        assert_eq!(code(None, Some("{}")), "errNullID");
        assert_eq!(code(Some("null"), Some("{}")), "errInvalidID");
        assert_eq!(code(Some("U1"), Some("[1]")), "errMalformedEvent");
        assert_eq!(code(Some("U1"), Some("{")), "errMalformedEvent");
        assert_eq!(code(Some("U1"), None), "errMalformedEvent");
    }

    #[test]
    fn the_size_limit_holds_for_clusters_the_project_had() {
        let s = RuleSettings {
            max_cluster_size: 3,
            ..settings()
        };
        let mut g = Graph::new();
        g.load("a1", "a1", 2, false);
        g.load("a2", "a1", 2, false);
        g.load("R", "R", 2, false);
        g.load("r2", "R", 2, false);
        let mut m = Mappings::new();
        m.add(&mut g, &s, 1, Some("a2"), Some("R")).unwrap();
        // New ids join their person whatever the size.
        for n in 0..5 {
            m.add(&mut g, &s, 2 + n, Some(&format!("new{n}")), Some("R"))
                .unwrap();
        }
        let checked = m.check(&g);
        let e = apply(&mut g, Mode::Original, &s, &checked.accepted[0]).unwrap_err();
        assert_eq!(e.reason(), Some(Reason::ManyIds));
        for row in &checked.accepted[1..] {
            assert_eq!(apply(&mut g, Mode::Original, &s, row), Ok(Applied::Joined));
        }
        assert_eq!(g.cluster_of("new4"), Some(("R".to_string(), 7, true)));
    }
}
