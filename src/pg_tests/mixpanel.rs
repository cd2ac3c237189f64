//! mp_import_mixpanel on random identity mappings (issue 29): every accepted row resolves as
//! mapped, the inverse view equals the accepted rows, the refused rows are the ones a plain model
//! of the verdicts refuses (written here apart from core::mixpanel), each recorded, the same rows
//! in another order give the same people, and a second import changes nothing. The test build's
//! bulk writes are 16 rows a chunk (store::bulk::CHUNK), so the joins cross chunk boundaries.

#[pgrx::pg_schema]
mod tests {
    #[allow(unused_imports)]
    use crate::pg_tests::support::*;
    use pgrx::prelude::*;
    use std::collections::{BTreeSet, HashMap, HashSet};

    type Row = (Option<String>, Option<String>);

    /// The verdicts, modelled plainly: valid rows, minus ids mapped to two ids, minus chains.
    fn accepted(rows: &[Row]) -> Vec<(String, String)> {
        let valid = |v: &Option<String>| {
            v.as_deref()
                .is_some_and(|s| !s.is_empty() && s != "undefined")
        };
        let valid_rows: Vec<(String, String)> = rows
            .iter()
            .filter(|(d, r)| valid(d) && valid(r))
            .map(|(d, r)| (d.clone().unwrap(), r.clone().unwrap()))
            .collect();
        let mut targets: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (d, r) in &valid_rows {
            targets.entry(d).or_default().insert(r);
        }
        valid_rows
            .iter()
            .filter(|(d, r)| {
                targets[d.as_str()].len() == 1
                    && (d == r
                        || targets
                            .get(r.as_str())
                            .is_none_or(|t| t.len() == 1 && t.contains(r.as_str())))
            })
            .cloned()
            .collect()
    }

    fn load(table: &str, rows: &[Row]) {
        run(&format!(
            "CREATE TABLE {table} (distinct_id text, resolved_distinct_id text)"
        ));
        for (d, r) in rows {
            Spi::run_with_args(
                &format!("INSERT INTO {table} VALUES ($1, $2)"),
                &[d.clone().into(), r.clone().into()],
            )
            .unwrap();
        }
    }

    fn view(project: &str) -> BTreeSet<(String, String)> {
        Spi::connect(|c| {
            c.select(
                "SELECT distinct_id, resolved_distinct_id FROM identity_merge.mixpanel_identity_mappings WHERE project = $1",
                None,
                &[project.into()],
            )
            .unwrap()
            .map(|r| (r.get::<String>(1).unwrap().unwrap(), r.get::<String>(2).unwrap().unwrap()))
            .collect()
        })
    }

    #[pg_test]
    fn imports_of_random_mappings_resolve_as_mapped() {
        // The tests run side by side, each in one transaction: the locks an import takes (and its
        // ANALYZE's) are taken first, as a whole, so that a concurrent test's mp_backfill waits
        // for this one instead of deadlocking with it (each holding what the other's next import
        // or ANALYZE needs).
        run("LOCK TABLE identity_merge.identities, identity_merge.clusters, identity_merge.merge_log IN SHARE ROW EXCLUSIVE MODE");
        for seed in 1..=4u64 {
            let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
            let mut next = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mode = if seed % 2 == 0 {
                "simplified"
            } else {
                "original"
            };
            let mut mapping: Vec<Row> = Vec::new();
            for _ in 0..300 {
                let d = match next(40) {
                    0 => None,
                    1 => Some(String::new()),
                    2 => Some("undefined".into()),
                    n if n < 20 => Some(format!("$device:d{}", next(120))),
                    _ => Some(format!("a{}", next(120))),
                };
                let r = match next(30) {
                    0 => None,
                    1 => Some(format!("$device:d{}", next(120))), // chains, now and then
                    _ => Some(format!("u{}", next(25))),
                };
                mapping.push((d, r));
            }
            let want = accepted(&mapping);
            let (p, q) = (format!("m{seed}"), format!("n{seed}"));
            run(&format!(
                "SELECT mp_create_project('{p}', '{mode}'), mp_create_project('{q}', '{mode}')"
            ));
            load(&format!("map_{p}"), &mapping);
            let mut shuffled = mapping.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, next(i as u64 + 1) as usize);
            }
            load(&format!("map_{q}"), &shuffled);

            let counts = one(&format!(
                "SELECT format('%s %s', mappings, invalid + mapped_twice + chains + conflicts) FROM mp_import_mixpanel('{p}', 'map_{p}')"
            ))
            .unwrap();
            assert_eq!(counts, format!("300 {}", 300 - want.len()), "seed {seed}");
            for (d, r) in &want {
                assert_eq!(&resolve_in(d, &p), r, "seed {seed}: {d}");
            }
            let mapped: BTreeSet<(String, String)> =
                want.iter().filter(|(d, r)| d != r).cloned().collect();
            assert_eq!(view(&p), mapped, "seed {seed}: the inverse view");
            assert_eq!(
                one(&format!(
                    "SELECT count(*)::text FROM identity_merge.rejections WHERE operation = 'mixpanel_import' \
                       AND project_id = (SELECT project_id FROM identity_merge.projects WHERE token = '{p}')"
                ))
                .unwrap()
                .parse::<usize>()
                .unwrap(),
                // recorded once per distinct refusal (reason and ids)
                {
                    let refused: HashSet<&Row> = mapping.iter().filter(|row| {
                        !want.iter().any(|(d, r)| row.0.as_deref() == Some(d) && row.1.as_deref() == Some(r))
                    }).collect();
                    refused.len()
                },
                "seed {seed}: rejections"
            );
            assert!(
                rows(&format!("SELECT check_name FROM mp_check('{p}')")).is_empty(),
                "seed {seed}: mp_check"
            );

            // Another order: the same people.
            one(&format!(
                "SELECT joins::text FROM mp_import_mixpanel('{q}', 'map_{q}')"
            ));
            assert_eq!(view(&q), mapped, "seed {seed}: another order");

            // Again: nothing changes.
            let before = state_of(&p);
            let again = one(&format!("SELECT format('%s %s', joins, ids_written) FROM mp_import_mixpanel('{p}', 'map_{p}')")).unwrap();
            assert_eq!(again, "0 0", "seed {seed}: a second import");
            assert_eq!(
                state_of(&p),
                before,
                "seed {seed}: a second import changed the state"
            );
        }
    }
}
