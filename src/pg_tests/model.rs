//! Checks against independent answers: backfill against the online functions on random
//! histories, mp_check against injected corruption, a reference model of the contract, and
//! fuzzed JSON payloads.

#[pgrx::pg_schema]
mod tests {
    #[allow(unused_imports)]
    use crate::pg_tests::support::*;
    use pgrx::prelude::*;

    /// mp_backfill and the online functions on the same random history give the same clusters,
    /// canonical ids, merge log and refusals, also when starting from existing state.
    #[pg_test]
    fn backfill_matches_online_on_random_histories() {
        // Tests run at once in one database; mp_backfill after writes in the same transaction
        // would upgrade locks against another such test. Real loads run it in a transaction of
        // its own (docs/functions.md).
        run("SELECT pg_advisory_xact_lock(4242)");
        run("CREATE TABLE hist (n int, op text, a text, b text)");
        run("CREATE TABLE online_refusals (n int, code text)");
        // (mp_split is STRICT: a NULL id gives no rows; a history row is refused as errNullID,
        // which the replay states explicitly.)
        run("CREATE FUNCTION pg_temp.replay(p text) RETURNS void LANGUAGE plpgsql AS $$ \
             DECLARE r record; BEGIN \
               FOR r IN SELECT * FROM hist ORDER BY n LOOP \
                 BEGIN \
                   CASE r.op WHEN 'identify' THEN PERFORM mp_identify(r.a, r.b, p); \
                             WHEN 'alias' THEN PERFORM mp_alias(r.a, r.b, p); \
                             WHEN 'split' THEN \
                               IF r.a IS NULL THEN RAISE EXCEPTION 'errNullID: split of NULL'; END IF; \
                               PERFORM * FROM mp_split(r.a, p); \
                             ELSE PERFORM mp_merge(r.a, r.b, p); END CASE; \
                 EXCEPTION WHEN OTHERS THEN INSERT INTO online_refusals VALUES (r.n, split_part(SQLERRM, ':', 1)); END; \
               END LOOP; END $$");
        let ids: Vec<String> = (0..40)
            .map(|i| match i {
                0 => "null".to_string(),
                1 => "  ".to_string(),
                i if i % 3 == 0 => format!("user-{i}"),
                i => format!("anon-{i}"),
            })
            .collect();
        for seed in 1..=4u64 {
            let (online, batch) = (format!("online{seed}"), format!("batch{seed}"));
            for p in [&online, &batch] {
                run(&format!("SELECT mp_create_project('{p}'), mp_set_project_setting('{p}', 'anon_id_format', 'any'), \
                              mp_set_project_setting('{p}', 'max_cluster_size', '9')"));
                // existing state both start from
                run(&format!("SELECT mp_identify('user-3', 'anon-4', '{p}'), mp_merge('anon-5', 'anon-7', '{p}')"));
            }
            run("TRUNCATE hist, online_refusals");
            let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
            let mut next = |m: usize| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % m as u64) as usize
            };
            for n in 0..400 {
                let op = if next(25) == 0 {
                    "split"
                } else {
                    ["identify", "alias", "merge", "identify", "merge"][next(5)]
                };
                let a = if next(50) == 0 {
                    "NULL".to_string()
                } else {
                    format!("'{}'", ids[next(ids.len())])
                };
                let b = format!("'{}'", ids[next(ids.len())]);
                run(&format!("INSERT INTO hist VALUES ({n}, '{op}', {a}, {b})"));
            }
            run(&format!("SELECT pg_temp.replay('{online}')"));
            run(&format!(
                "SELECT * FROM mp_backfill('SELECT op, a, b FROM hist ORDER BY n', '{batch}')"
            ));
            let of = |q: &str, p: &str| one(&q.replace("$P", p)).unwrap_or_default();
            let ids_q = "SELECT string_agg(distinct_id || '>' || canonical_id, ',' ORDER BY distinct_id) FROM identity_merge.identities \
                         WHERE project_id = (SELECT project_id FROM identity_merge.projects WHERE token = '$P')";
            let clusters_q = "SELECT string_agg(format('%s/%s/%s', canonical_id, size, identified), ',' ORDER BY canonical_id) FROM identity_merge.clusters \
                         WHERE project_id = (SELECT project_id FROM identity_merge.projects WHERE token = '$P')";
            let log_q = "SELECT string_agg(format('%s:%s>%s%s', operation, absorbed_canonical, kept_canonical, \
                           CASE WHEN retracted_by IS NULL THEN '' ELSE ' (retracted)' END), ',' ORDER BY seq) FROM identity_merge.merge_log \
                         WHERE project_id = (SELECT project_id FROM identity_merge.projects WHERE token = '$P')";
            assert_eq!(
                of(ids_q, &online),
                of(ids_q, &batch),
                "seed {seed}: identities"
            );
            assert_eq!(
                of(clusters_q, &online),
                of(clusters_q, &batch),
                "seed {seed}: clusters"
            );
            assert_eq!(
                of(log_q, &online),
                of(log_q, &batch),
                "seed {seed}: merge log"
            );
            let online_refusals =
                one("SELECT string_agg(n || ':' || code, ',' ORDER BY n) FROM online_refusals")
                    .unwrap_or_default();
            let batch_refusals = of(
                "SELECT string_agg(((source_row->>'backfill_ordinal')::int - 1) || ':' || reason_code, ',' ORDER BY rejection_id) \
                 FROM identity_merge.rejections WHERE project_id = (SELECT project_id FROM identity_merge.projects WHERE token = '$P')",
                &batch,
            );
            assert_eq!(online_refusals, batch_refusals, "seed {seed}: refusals");
            assert!(
                online_refusals.contains("errManyIDs") || seed > 1,
                "the history exercises the size limit"
            );
            assert!(
                online_refusals.contains("errInvalidID") && online_refusals.contains("errNullID"),
                "and bad ids"
            );
            let retracted = of(
                "SELECT count(*)::text FROM identity_merge.merge_log WHERE retracted_by IS NOT NULL \
                 AND project_id = (SELECT project_id FROM identity_merge.projects WHERE token = '$P')",
                &batch,
            );
            assert_ne!(
                retracted, "0",
                "seed {seed}: the history's splits retracted joins"
            );
        }
    }

    /// mp_backfill_from of an event table loaded before attach, and the same rows inserted one
    /// by one through the stamping trigger, give the same ids, clusters, merge log and
    /// refusals, in each mode: both plan a row with core::ingest (malformed and ignored events,
    /// a `$merge` of three ids, properties read for a missing device or user column included).
    #[pg_test]
    fn pg_backfill_from_matches_the_trigger_on_random_event_tables() {
        // mp_backfill_from locks the identity tables; tests running at once take turns.
        run("SELECT pg_advisory_xact_lock(4242)");
        run("SET LOCAL identity_merge.anon_id_format = 'any'");
        let ids = [
            "u1",
            "u2",
            "u3",
            "a1",
            "a2",
            "a3",
            "a4",
            "a5",
            "null",
            "$device:x",
            "7",
        ];
        for (k, mode) in ["original", "legacy", "simplified"].into_iter().enumerate() {
            let (trig, from) = (format!("bft_trig_{mode}"), format!("bft_from_{mode}"));
            for p in [&trig, &from] {
                run(&format!(
                    "SELECT mp_create_project('{p}', '{mode}'), mp_set_project_setting('{p}', 'anon_id_format', 'any'), \
                     mp_set_project_setting('{p}', 'max_cluster_size', '6')"
                ));
                run(&format!(
                    "CREATE TABLE {p}_ev (n int, distinct_id text, event text, properties jsonb, device text, usr text, canonical_id text)"
                ));
            }
            let attach = |p: &str| {
                run(&format!(
                    "SELECT mp_attach('{p}_ev', '{p}', device_id_column => 'device', user_id_column => 'usr')"
                ))
            };
            attach(&trig);
            let mut x = (k as u64 + 7).wrapping_mul(0x9E3779B97F4A7C15) | 1;
            let mut next = |m: usize| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % m as u64) as usize
            };
            let mut rows = Vec::new();
            for n in 0..240 {
                let mut id = || format!("\"{}\"", ids[next(ids.len())]);
                let (i1, i2, i3) = (id(), id(), id());
                let (event, props) = match next(12) {
                    0 | 1 => (
                        "$identify",
                        format!(r#"{{"$identified_id": {i1}, "$anon_id": {i2}}}"#),
                    ),
                    2 | 3 => (
                        "$create_alias",
                        format!(r#"{{"alias": {i1}, "distinct_id": {i2}}}"#),
                    ),
                    4 | 5 => ("$merge", format!(r#"{{"$distinct_ids": [{i1}, {i2}]}}"#)),
                    6 => (
                        "$merge",
                        format!(r#"{{"$distinct_ids": [{i1}, {i2}, {i3}]}}"#),
                    ),
                    7 => ("$identify", format!(r#"{{"$identified_id": {i1}}}"#)),
                    8 => (
                        "$create_alias",
                        format!(r#"{{"alias": true, "distinct_id": {i2}}}"#),
                    ),
                    9 => ("$merge", r#"{"$distinct_ids": ["a1", null]}"#.to_string()),
                    10 => ("Page View", format!(r#"{{"$user_id": {i3}}}"#)),
                    _ => (
                        "Login",
                        format!(r#"{{"$device_id": {i1}, "$user_id": {i3}}}"#),
                    ),
                };
                let mut col = || match next(3) {
                    0 => "NULL".to_string(),
                    _ => format!("'{}'", ids[next(ids.len())]),
                };
                let (device, usr) = (col(), col());
                rows.push(format!(
                    "({n}, 'd{n}', '{event}', '{}', {device}, {usr})",
                    props.replace('\'', "''")
                ));
            }
            for row in &rows {
                // One statement a row: the online path, as events arrive.
                run(&format!(
                    "INSERT INTO {trig}_ev (n, distinct_id, event, properties, device, usr) VALUES {row}"
                ));
            }
            run(&format!(
                "INSERT INTO {from}_ev (n, distinct_id, event, properties, device, usr) VALUES {}",
                rows.join(", ")
            ));
            attach(&from);
            let result = one(&format!(
                "SELECT format('%s|%s|%s', events_read, joins, refused) FROM mp_backfill_from('{from}_ev', 'n')"
            ))
            .unwrap();
            let of = |q: &str, p: &str| one(&q.replace("$P", p)).unwrap_or_default();
            let pid = "(SELECT project_id FROM identity_merge.projects WHERE token = '$P')";
            let ids_q = format!("SELECT string_agg(distinct_id || '>' || canonical_id, ',' ORDER BY distinct_id) FROM identity_merge.identities WHERE project_id = {pid}");
            let clusters_q = format!("SELECT string_agg(format('%s/%s/%s', canonical_id, size, identified), ',' ORDER BY canonical_id) FROM identity_merge.clusters WHERE project_id = {pid}");
            let log_q = format!("SELECT string_agg(format('%s:%s>%s', operation, absorbed_canonical, kept_canonical), ',' ORDER BY seq) FROM identity_merge.merge_log WHERE project_id = {pid}");
            let refusals_q = format!(
                "SELECT string_agg(format('%s:%s:%s:%s', reason_code, operation, id_a, id_b), ',' \
                   ORDER BY (source_row->>'backfill_ordinal')::int NULLS FIRST, rejection_id) \
                 FROM identity_merge.rejections WHERE project_id = {pid}"
            );
            for (what, q) in [
                ("identities", &ids_q),
                ("clusters", &clusters_q),
                ("merge log", &log_q),
                ("refusals", &refusals_q),
            ] {
                assert_eq!(of(q, &trig), of(q, &from), "{mode}: {what}");
            }
            let counts = of(
                &format!(
                    "SELECT format('%s|%s', (SELECT count(*) FROM identity_merge.merge_log WHERE project_id = {pid}), \
                                            (SELECT count(*) FROM identity_merge.rejections WHERE project_id = {pid}))"
                ),
                &trig,
            );
            assert!(
                result.ends_with(&format!("|{counts}")),
                "{mode}: joins and refused of {result} are the trigger's {counts}"
            );
            let refusals = of(&refusals_q, &trig);
            match mode {
                "simplified" => assert!(
                    refusals.contains("errIgnoredInSimplified")
                        && refusals.contains("errUserIdIsDevice"),
                    "{refusals}"
                ),
                _ => {
                    // Every identity event is read (Legacy's ignored ones too), ordinary ones not.
                    let identity_rows = of(
                        &format!("SELECT count(*)::text FROM {from}_ev WHERE event IN ('$identify', '$create_alias', '$merge')"),
                        &from,
                    );
                    assert!(
                        result.starts_with(&format!("{identity_rows}|")),
                        "{mode}: {result}"
                    );
                    assert!(refusals.contains("errMalformedEvent"), "{refusals}");
                    if mode == "legacy" {
                        assert!(refusals.contains("errIgnoredInLegacy"), "{refusals}");
                    }
                }
            }
        }
    }

    #[pg_test]
    fn check_is_clean_after_operations_and_finds_injected_corruption() {
        // mp_backfill locks the identity tables; tests running at once take turns (see below)
        run("SELECT pg_advisory_xact_lock(4242)");
        make_events();
        run("INSERT INTO ev SELECT n, 'd' || (n % 20), 'Page View', '{}' FROM generate_series(1, 200) n");
        run("SELECT mp_merge('d1', 'd2'), mp_identify('U', 'd3'), mp_alias('d4', 'U'), mp_merge('d3', 'd5')");
        run("SELECT * FROM mp_backfill('SELECT ''merge'', ''d6'', ''d7''')");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM mp_check()").unwrap(),
            Some(0),
            "stale stamps are not violations"
        );
        // Each corruption runs in a block that raises what mp_check found, which undoes it.
        let checks = |sql: &str| -> String {
            err(&format!(
                "DO $b$ DECLARE r text; BEGIN {sql}; \
                 SELECT string_agg(DISTINCT check_name, ',') INTO r FROM mp_check(); \
                 RAISE EXCEPTION 'found:%', r; END $b$"
            ))
        };
        assert!(
            checks("UPDATE identity_merge.clusters SET size = 7 WHERE canonical_id = 'U'")
                .contains("size_mismatch")
        );
        assert!(checks(
            "UPDATE identity_merge.identities SET canonical_id = 'd1' WHERE distinct_id = 'd4'"
        )
        .contains("log_replay"));
        assert!(
            checks("DELETE FROM identity_merge.identities WHERE distinct_id = 'U'")
                .contains("canonical_not_member")
        );
        assert!(checks(
            "UPDATE identity_merge.identities SET canonical_id = 'd1' WHERE distinct_id = 'U'"
        )
        .contains("id_in_two_clusters"));
        assert!(
            checks("DELETE FROM identity_merge.clusters WHERE canonical_id = 'd1'")
                .contains("id_without_cluster")
        );
        assert!(
            checks("INSERT INTO identity_merge.identities VALUES (1, 'stray', 'U')")
                .contains("log_replay")
        );
        assert!(
            checks("UPDATE ev SET canonical_id = 'someone-else' WHERE n = 1")
                .contains("unfixable_stamp")
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM mp_check()").unwrap(),
            Some(0)
        );
        run("SELECT mp_restamp('ev')");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM mp_check()").unwrap(),
            Some(0)
        );
    }

    // ---- A reference model, and fuzzing ----

    /// An obviously-correct model of the contract's Original ID Merge, written apart from
    /// `rules`: clusters as sets, identified ids as a set, refusals in the contract's order.
    struct Model {
        cluster_of: std::collections::HashMap<String, usize>,
        clusters: Vec<(std::collections::BTreeSet<String>, String)>,
        identified: std::collections::HashSet<String>,
        limit: usize,
        /// The joins made, in order: (operation, a, b). A split takes some back.
        history: Vec<(String, String, String)>,
        /// Every id a join ever named (an id never seen cannot be split).
        seen: std::collections::HashSet<String>,
    }

    impl Model {
        fn bad(id: Option<&str>) -> Option<&'static str> {
            let Some(id) = id else {
                return Some("errNullID");
            };
            let blocked = ["null", "undefined", "anonymous", "0", "[object object]"];
            if id.trim().is_empty()
                || id.chars().count() > 255
                || blocked.contains(&id.trim().to_lowercase().as_str())
            {
                return Some("errInvalidID");
            }
            None
        }
        fn members(&self, id: &str) -> std::collections::BTreeSet<String> {
            match self.cluster_of.get(id) {
                Some(&c) => self.clusters[c].0.clone(),
                None => [id.to_string()].into(),
            }
        }
        fn canonical(&self, id: &str) -> String {
            self.cluster_of
                .get(id)
                .map(|&c| self.clusters[c].1.clone())
                .unwrap_or_else(|| id.to_string())
        }
        fn join(&mut self, keep: &str, other: &str) -> String {
            let canonical = self.canonical(keep);
            let all: std::collections::BTreeSet<String> = self
                .members(keep)
                .union(&self.members(other))
                .cloned()
                .collect();
            self.clusters.push((all.clone(), canonical.clone()));
            for id in all {
                self.cluster_of.insert(id, self.clusters.len() - 1);
            }
            canonical
        }
        fn apply(
            &mut self,
            op: &str,
            a: Option<&str>,
            b: Option<&str>,
        ) -> Result<String, &'static str> {
            if let Some(e) = Self::bad(a).or(Self::bad(b)) {
                return Err(e);
            }
            let (a, b) = (a.unwrap(), b.unwrap());
            if a == b && op != "merge" {
                return Err("errSameIDs");
            }
            if op == "identify" {
                let bare = b.strip_prefix("$device:").unwrap_or(b);
                let v4 = bare.len() == 36
                    && uuid::Uuid::parse_str(bare)
                        .map(|u| u.get_version_num() == 4)
                        .unwrap_or(false);
                if !v4 {
                    return Err("errAnonDistinctIdNonGUIDForm");
                }
            }
            if self.canonical(a) == self.canonical(b) {
                return Ok(self.canonical(a));
            }
            match op {
                "identify" if self.members(b).iter().any(|m| self.identified.contains(m)) => {
                    return Err("errAnonDistinctIdAssignedAlready")
                }
                "alias" if self.cluster_of.contains_key(a) => return Err("errAliasAlreadyExists"),
                _ => {}
            }
            if self.members(a).len() + self.members(b).len() > self.limit {
                return Err("errManyIDs");
            }
            self.history
                .push((op.to_string(), a.to_string(), b.to_string()));
            self.seen.insert(a.to_string());
            self.seen.insert(b.to_string());
            Ok(self.make(op, a, b))
        }

        fn make(&mut self, op: &str, a: &str, b: &str) -> String {
            match op {
                "identify" => {
                    self.identified.insert(a.to_string());
                    self.join(a, b)
                }
                "alias" => self.join(b, a),
                _ => self.join(a, b),
            }
        }

        /// mp_split: the clusters are rebuilt from the joins that remain, in order (as if the
        /// retracted ones never happened). The ids whose canonical changed, sorted.
        fn split(&mut self, id: &str) -> Result<Vec<String>, &'static str> {
            if !self.seen.contains(id) {
                return Err("never seen");
            }
            let before: Vec<(String, String)> = self
                .members(id)
                .into_iter()
                .map(|m| (m.clone(), self.canonical(&m)))
                .collect();
            let history: Vec<_> = std::mem::take(&mut self.history)
                .into_iter()
                .filter(|(_, a, b)| a != id && b != id)
                .collect();
            self.cluster_of.clear();
            self.clusters.clear();
            self.identified.clear();
            for (op, a, b) in &history {
                self.make(op, a, b);
            }
            self.history = history;
            let mut changed: Vec<String> = before
                .into_iter()
                .filter(|(m, c)| self.canonical(m) != *c)
                .map(|(m, _)| m)
                .collect();
            changed.sort();
            Ok(changed)
        }
    }

    #[pg_test]
    fn extension_agrees_with_the_reference_model() {
        run("SELECT mp_create_project('model'), mp_set_project_setting('model', 'max_cluster_size', '6')");
        run("CREATE FUNCTION pg_temp.op(o text, a text, b text) RETURNS text LANGUAGE plpgsql AS $$ \
             BEGIN RETURN 'ok:' || CASE o WHEN 'identify' THEN mp_identify(a, b, 'model') \
                                        WHEN 'alias' THEN mp_alias(a, b, 'model') \
                                        WHEN 'split' THEN (SELECT coalesce(string_agg(id, ',' ORDER BY id COLLATE \"C\"), '') FROM mp_split(a, 'model')) \
                                        ELSE mp_merge(a, b, 'model') END; \
             EXCEPTION WHEN OTHERS THEN RETURN 'err:' || split_part(SQLERRM, ':', 1); END $$");
        let uuids: Vec<String> = (0..8)
            .map(|i| format!("{:08x}-6f5c-4a7e-9d2b-1c2d3e4f5a6b", i * 7919 + 1))
            .collect();
        let mut pool: Vec<Option<String>> = (0..14).map(|i| Some(format!("id{i}"))).collect();
        pool.extend(uuids.iter().map(|u| Some(u.clone())));
        pool.extend(uuids.iter().take(3).map(|u| Some(format!("$device:{u}"))));
        pool.extend([
            None,
            Some("null".into()),
            Some(" ".into()),
            Some("Undefined".into()),
        ]);
        let mut model = Model {
            cluster_of: Default::default(),
            clusters: vec![],
            identified: Default::default(),
            limit: 6,
            history: vec![],
            seen: Default::default(),
        };
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut next = |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        let (mut oks, mut refusals, mut splits) = (0, 0, 0);
        for step in 0..600 {
            let op = [
                "identify", "alias", "merge", "identify", "alias", "merge", "split",
            ][next(7)];
            let a = pool[next(pool.len())].clone();
            let b = pool[next(pool.len())].clone();
            if op == "split" {
                // Valid ids only (mp_split is STRICT; a blank id is simply never seen).
                let Some(id) = a.clone().filter(|i| !i.trim().is_empty()) else {
                    continue;
                };
                let got = Spi::get_one_with_args::<String>(
                    "SELECT pg_temp.op('split', $1, NULL)",
                    &[id.clone().into()],
                )
                .unwrap()
                .unwrap();
                match model.split(&id) {
                    Ok(changed) => {
                        splits += 1;
                        assert_eq!(
                            got,
                            format!("ok:{}", changed.join(",")),
                            "step {step}: split({id:?})"
                        );
                    }
                    Err(_) => assert_eq!(
                        got, "err:errUnknownID",
                        "step {step}: split({id:?}) of an id never seen"
                    ),
                }
                for pid in pool.iter().flatten().filter(|i| !i.trim().is_empty()) {
                    let r = Spi::get_one_with_args::<String>(
                        "SELECT mp_resolve($1, 'model')",
                        &[pid.as_str().into()],
                    )
                    .unwrap()
                    .unwrap();
                    assert_eq!(
                        r,
                        model.canonical(pid),
                        "step {step}: after split({id}): resolve({pid})"
                    );
                }
                continue;
            }
            let want = match model.apply(op, a.as_deref(), b.as_deref()) {
                Ok(c) => {
                    oks += 1;
                    format!("ok:{c}")
                }
                Err(e) => {
                    refusals += 1;
                    format!("err:{e}")
                }
            };
            let got = Spi::get_one_with_args::<String>(
                "SELECT pg_temp.op($1, $2, $3)",
                &[op.into(), a.clone().into(), b.clone().into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(got, want, "step {step}: {op}({a:?}, {b:?})");
            // every id's canonical agrees after every step
            for id in pool.iter().flatten().filter(|i| !i.trim().is_empty()) {
                let r = Spi::get_one_with_args::<String>(
                    "SELECT mp_resolve($1, 'model')",
                    &[id.as_str().into()],
                )
                .unwrap()
                .unwrap();
                assert_eq!(r, model.canonical(id), "step {step}: resolve({id})");
            }
        }
        assert!(
            oks > 50 && refusals > 100 && splits > 20,
            "the sequence exercises all ({oks} ok, {refusals} refused, {splits} splits)"
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM mp_check('model')").unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn fuzzed_json_never_raises() {
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        fn value(next: &mut dyn FnMut(u64) -> u64, depth: u32) -> serde_json::Value {
            use serde_json::json;
            let keys = [
                "event",
                "properties",
                "token",
                "$token",
                "$distinct_ids",
                "$identified_id",
                "$anon_id",
                "alias",
                "distinct_id",
                "$device_id",
                "$user_id",
                "x",
                "é",
                "",
            ];
            let strings = [
                "$identify",
                "$merge",
                "$create_alias",
                "default",
                "U1",
                "",
                " ",
                "null",
                "$device:D",
                "3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b",
                "ü\u{1F600}",
                "a\"b",
                "\\",
            ];
            match next(if depth > 6 { 5 } else { 8 }) {
                0 => json!(null),
                1 => json!(next(2) == 0),
                2 => json!(next(1_000_000) as i64 - 500_000),
                3 => json!(next(1000) as f64 / 7.0),
                4 => json!(strings[next(strings.len() as u64) as usize]),
                5 | 6 => {
                    let n = next(6);
                    let mut m = serde_json::Map::new();
                    for _ in 0..n {
                        m.insert(
                            keys[next(keys.len() as u64) as usize].to_string(),
                            value(next, depth + 1),
                        );
                    }
                    serde_json::Value::Object(m)
                }
                _ => {
                    serde_json::Value::Array((0..next(4)).map(|_| value(next, depth + 1)).collect())
                }
            }
        }
        let started = std::time::Instant::now();
        let mut tried = 0;
        while tried < 3000 && started.elapsed() < std::time::Duration::from_secs(20) {
            let v = value(&mut next, 0);
            for f in [
                "mp_track",
                "mp_identity_create",
                "mp_identity_create_alias",
                "mp_identity_merge",
            ] {
                let r = Spi::get_one_with_args::<pgrx::JsonB>(
                    &format!("SELECT {f}($1)"),
                    &[pgrx::JsonB(v.clone()).into()],
                )
                .unwrap_or_else(|e| panic!("{f}({v}) raised {e}"))
                .unwrap()
                .0;
                let status = r["status"].as_i64();
                assert!(status == Some(0) || status == Some(1), "{f}({v}) -> {r}");
                tried += 1;
            }
        }
        assert!(tried >= 400, "fuzzed {tried} payloads");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM mp_check()").unwrap(),
            Some(0)
        );
    }
}
