//! `mp_ingest`: a staged batch moved into an attached table set-wise (engine/staged.rs) gives
//! what the same rows inserted one by one through the stamping trigger give; its refusals
//! change nothing; the trigger skips exactly its own rows.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::support::*;
    use pgrx::prelude::*;

    /// Rows of a random event stream, as SQL tuples `(n, distinct_id, event, properties, device,
    /// usr)`: valid, refused, malformed and oversized identity events of every kind, ordinary
    /// events, ids in properties and in the device and user columns, NULL distinct_ids.
    fn random_stream(seed: u64, len: usize) -> Vec<String> {
        let long = "L".repeat(300);
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
            &long,
        ];
        let mut x = (seed + 7).wrapping_mul(0x9E3779B97F4A7C15) | 1;
        let mut next = |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        let mut rows = Vec::new();
        for n in 0..len {
            let mut id = || format!("\"{}\"", ids[next(ids.len())]);
            let (i1, i2, i3) = (id(), id(), id());
            let (event, props) = match next(14) {
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
                11 => ("$identify", "[1, 2]".to_string()),
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
            // Every 5th row sends no distinct_id (a Simplified row gets one filled in).
            let distinct = if n % 5 == 4 {
                "NULL".to_string()
            } else {
                format!("'{}'", ids[next(ids.len())])
            };
            rows.push(format!(
                "({n}, {distinct}, '{event}', '{}', {device}, {usr})",
                props.replace('\'', "''")
            ));
        }
        rows
    }

    /// The stream staged and moved with mp_ingest, and the same rows inserted one statement
    /// each through the trigger, leave the same ids, clusters, merge log, refusals and rows
    /// (distinct_ids filled in, stamps: the trigger's after mp_restamp, which a legacy project
    /// never changes), in each mode.
    #[pg_test]
    fn mp_ingest_equals_the_trigger_row_by_row_on_random_streams() {
        run("SET LOCAL identity_merge.anon_id_format = 'any'");
        for (k, mode) in ["original", "legacy", "simplified"].into_iter().enumerate() {
            let (trig, ing) = (format!("ing_trig_{mode}"), format!("ing_set_{mode}"));
            for p in [&trig, &ing] {
                run(&format!(
                    "SELECT mp_create_project('{p}', '{mode}'), mp_set_project_setting('{p}', 'anon_id_format', 'any'), \
                     mp_set_project_setting('{p}', 'max_cluster_size', '6'); \
                     CREATE TABLE {p}_ev (n int, distinct_id text, event text, properties jsonb, device text, usr text, canonical_id text); \
                     SELECT mp_attach('{p}_ev', '{p}', device_id_column => 'device', user_id_column => 'usr')"
                ));
            }
            let rows = random_stream(k as u64, 300);
            run(&format!(
                "CREATE TABLE {ing}_stage (n int, distinct_id text, event text, properties jsonb, device text, usr text); \
                 INSERT INTO {ing}_stage VALUES {}",
                rows.join(", ")
            ));
            // The same rows one statement each, in the staging table's order (its physical
            // order, in which INSERT ... SELECT * FROM it would hand them to the trigger: a
            // long row may sit after shorter ones sent later).
            run(&format!(
                "DO $$ DECLARE r record; BEGIN \
                   FOR r IN SELECT * FROM {ing}_stage ORDER BY ctid LOOP \
                     INSERT INTO {trig}_ev (n, distinct_id, event, properties, device, usr) \
                     VALUES (r.n, r.distinct_id, r.event, r.properties, r.device, r.usr); \
                   END LOOP; END $$"
            ));
            let result = one(&format!(
                "SELECT format('%s|%s|%s', rows_inserted, identity_events, refused) FROM mp_ingest('{ing}_stage', '{ing}_ev')"
            ))
            .unwrap();
            run(&format!("SELECT mp_restamp('{trig}_ev')"));
            let of = |q: &str, p: &str| one(&q.replace("$P", p)).unwrap_or_default();
            let pid = "(SELECT project_id FROM identity_merge.projects WHERE token = '$P')";
            let ids_q = format!("SELECT string_agg(distinct_id || '>' || canonical_id, ',' ORDER BY distinct_id) FROM identity_merge.identities WHERE project_id = {pid}");
            let clusters_q = format!("SELECT string_agg(format('%s/%s/%s', canonical_id, size, identified), ',' ORDER BY canonical_id) FROM identity_merge.clusters WHERE project_id = {pid}");
            let log_q = format!("SELECT string_agg(format('%s:%s:%s:%s>%s:%s', operation, id_a, id_b, absorbed_canonical, kept_canonical, moved_ids), ',' ORDER BY seq) FROM identity_merge.merge_log WHERE project_id = {pid}");
            let refusals_q = format!(
                "SELECT string_agg(format('%s:%s:%s:%s:%s', reason_code, operation, id_a, id_b, source_row->>'distinct_id'), ',' ORDER BY rejection_id) \
                 FROM identity_merge.rejections WHERE project_id = {pid}"
            );
            let rows_q = "SELECT string_agg(format('%s:%s:%s', n, distinct_id, canonical_id), ',' ORDER BY n) FROM $P_ev";
            for (what, q) in [
                ("identities", ids_q.as_str()),
                ("clusters", &clusters_q),
                ("merge log", &log_q),
                ("refusals", &refusals_q),
                ("rows", rows_q),
            ] {
                let want = of(q, &trig);
                assert!(!want.is_empty(), "{mode}: the stream left no {what}");
                assert_eq!(want, of(q, &ing), "{mode}: {what}");
            }
            let refused = of(
                &format!(
                    "SELECT count(*)::text FROM identity_merge.rejections WHERE project_id = {pid}"
                ),
                &trig,
            );
            assert!(
                result.starts_with("300|") && result.ends_with(&format!("|{refused}")),
                "{mode}: counts {result} (refused by the trigger: {refused})"
            );
            // The joins are the ingest's, with its provenance.
            assert_eq!(
                of(&format!("SELECT string_agg(DISTINCT source || ':' || (source_detail->>'staging'), ',') FROM identity_merge.merge_log WHERE project_id = {pid}"), &ing),
                format!("ingest:public.{ing}_stage"),
                "{mode}: provenance"
            );
            assert_eq!(
                of("SELECT count(*)::text FROM mp_check('$P')", &ing),
                "0",
                "{mode}: mp_check"
            );
        }
    }

    /// The trigger does not fire for mp_ingest's own rows (its WHEN), but does for a row a
    /// user's trigger on the target writes meanwhile into another attached table, and for
    /// rows of a table attached before 0.1.14 (no WHEN) the trigger passes them through.
    #[pg_test]
    fn the_trigger_skips_only_the_ingest_s_own_rows() {
        // A project of its own: mp_ingest holds its project until the test's transaction
        // ends, and the other tests, run at once on the same server, use 'default'.
        run("SET LOCAL identity_merge.anon_id_format = 'any'; \
             SELECT mp_create_project('ing_skip'); \
             SELECT mp_identify('U1', 'D1', 'ing_skip'), mp_identify('U2', 'D2', 'ing_skip'); \
             CREATE TABLE skip_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text); \
             CREATE TABLE skip_copy (LIKE skip_ev); \
             SELECT mp_attach('skip_ev', 'ing_skip'), mp_attach('skip_copy', 'ing_skip'); \
             CREATE FUNCTION pg_temp.copy_row() RETURNS trigger LANGUAGE plpgsql AS $$ \
               BEGIN INSERT INTO skip_copy (n, distinct_id) VALUES (NEW.n, NEW.distinct_id); RETURN NEW; END $$; \
             CREATE TRIGGER a_copy BEFORE INSERT ON skip_ev FOR EACH ROW EXECUTE FUNCTION pg_temp.copy_row(); \
             CREATE TEMP TABLE skip_stage (n int, distinct_id text, event text, properties jsonb); \
             INSERT INTO skip_stage VALUES (1, 'D1', 'x', '{}'), (2, 'D2', 'x', '{}'), (3, 'D9', 'x', '{}')");
        assert_eq!(
            one("SELECT (pg_get_triggerdef(t.oid) ~ 'WHEN \\(identity_merge._stamp_wanted\\(''skip_ev''::regclass\\)\\)')::text FROM pg_trigger t WHERE t.tgrelid = 'skip_ev'::regclass AND t.tgname = 'identity_merge_stamp'")
                .as_deref(),
            Some("true")
        );
        assert_eq!(
            one("SELECT rows_inserted::text FROM mp_ingest('skip_stage', 'skip_ev')").as_deref(),
            Some("3")
        );
        let stamps = "SELECT string_agg(n || ':' || canonical_id, ',' ORDER BY n) FROM TABLE";
        assert_eq!(
            one(&stamps.replace("TABLE", "skip_ev")).as_deref(),
            Some("1:U1,2:U2,3:D9")
        );
        // The nested INSERT of the user's trigger was stamped by the stamping trigger.
        assert_eq!(
            one(&stamps.replace("TABLE", "skip_copy")).as_deref(),
            Some("1:U1,2:U2,3:D9")
        );
        // An old attachment: the same trigger without its WHEN.
        run("DROP TRIGGER identity_merge_stamp ON skip_ev; \
             CREATE TRIGGER identity_merge_stamp BEFORE INSERT OR UPDATE OF distinct_id ON skip_ev FOR EACH ROW \
               EXECUTE FUNCTION identity_merge.stamp_event('ing_skip', 'distinct_id', 'canonical_id'); \
             TRUNCATE skip_ev, skip_copy; SELECT mp_merge('U1', 'U2', 'ing_skip')");
        assert_eq!(
            one("SELECT rows_inserted::text FROM mp_ingest('skip_stage', 'skip_ev')").as_deref(),
            Some("3")
        );
        let merged = one("SELECT mp_resolve('D2', 'ing_skip')").unwrap();
        assert_eq!(
            one(&stamps.replace("TABLE", "skip_ev")),
            Some(format!("1:{merged},2:{merged},3:D9"))
        );
        // A later plain INSERT is stamped by the trigger as always.
        run("INSERT INTO skip_ev (n, distinct_id) VALUES (4, 'D1')");
        assert_eq!(
            one("SELECT canonical_id FROM skip_ev WHERE n = 4"),
            Some(merged)
        );
    }

    /// A partitioned target: rows are routed to its partitions, whose triggers (cloned from the
    /// parent's, WHEN included) skip them; the stamps are right.
    #[pg_test]
    fn a_partitioned_target_is_ingested() {
        run("SET LOCAL identity_merge.anon_id_format = 'any'; \
             SELECT mp_create_project('ing_part'), mp_identify('U7', 'D7', 'ing_part'); \
             CREATE TABLE part_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text) PARTITION BY RANGE (n); \
             CREATE TABLE part_ev_1 PARTITION OF part_ev FOR VALUES FROM (0) TO (10); \
             CREATE TABLE part_ev_2 PARTITION OF part_ev FOR VALUES FROM (10) TO (20); \
             SELECT mp_attach('part_ev', 'ing_part'); \
             CREATE TEMP TABLE part_stage (n int, distinct_id text, event text, properties jsonb); \
             INSERT INTO part_stage VALUES (1, 'D8', 'x', '{}'), \
               (12, 'U8', '$identify', '{\"$identified_id\": \"U8\", \"$anon_id\": \"D8\"}'), (15, 'D7', 'x', '{}')");
        assert_eq!(
            one("SELECT format('%s|%s', rows_inserted, identity_events) FROM mp_ingest('part_stage', 'part_ev')").as_deref(),
            Some("3|1")
        );
        assert_eq!(
            one("SELECT string_agg(tableoid::regclass || ':' || canonical_id, ',' ORDER BY n) FROM part_ev").as_deref(),
            Some("part_ev_1:U8,part_ev_2:U8,part_ev_2:U7")
        );
    }

    /// Refusals name the problem with their SQLSTATE and change nothing; a failure of the
    /// INSERT takes the identity events back with it.
    #[pg_test]
    fn refusals_change_nothing() {
        run("SET LOCAL identity_merge.anon_id_format = 'any'; \
             SELECT mp_create_project('ing_ref'); \
             CREATE TABLE ref_ev (n int PRIMARY KEY, distinct_id text, event text DEFAULT 'x', properties jsonb, canonical_id text); \
             CREATE TABLE ref_plain (n int, distinct_id text); \
             SELECT mp_attach('ref_ev', 'ing_ref'); \
             CREATE TEMP TABLE ref_stage (n int, distinct_id text, event text, properties jsonb); \
             INSERT INTO ref_stage VALUES (1, 'D1', '$identify', '{\"$identified_id\": \"U1\", \"$anon_id\": \"D1\"}'), (2, 'D1', 'x', '{}'); \
             CREATE TEMP VIEW ref_view AS SELECT * FROM ref_stage; \
             CREATE TEMP TABLE ref_extra (n int, nope text); \
             CREATE TEMP TABLE ref_retyped (n bigint); \
             CREATE TEMP TABLE ref_no_event (n int, distinct_id text, properties jsonb); \
             CREATE TABLE ref_retyped_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text); \
             SELECT mp_attach('ref_retyped_ev', 'ing_ref'); \
             ALTER TABLE ref_retyped_ev ALTER COLUMN properties TYPE bytea USING convert_to(properties::text, 'UTF8'); \
             CREATE TEMP TABLE ref_retyped_stage (LIKE ref_retyped_ev)");
        let before = state();
        for (sql, code) in [
            ("SELECT mp_ingest('ref_stage', 'ref_plain')", "55000"),
            ("SELECT mp_ingest('ref_ev', 'ref_ev')", "22023"),
            ("SELECT mp_ingest('ref_view', 'ref_ev')", "0A000"),
            ("SELECT mp_ingest('ref_extra', 'ref_ev')", "42703"),
            ("SELECT mp_ingest('ref_retyped', 'ref_ev')", "42804"),
            ("SELECT mp_ingest('ref_no_event', 'ref_ev')", "0A000"),
            (
                "SELECT mp_ingest('ref_retyped_stage', 'ref_retyped_ev')",
                "42804",
            ),
            ("SELECT mp_ingest(NULL, 'ref_ev')", "22004"),
            ("SELECT mp_ingest('ref_stage', 'ref_ev', NULL)", "22004"),
        ] {
            let got = err(sql);
            assert!(got.starts_with(code), "{sql}: {got}");
        }
        assert!(err("SELECT mp_ingest('ref_extra', 'ref_ev')").contains("\"nope\""));
        // Row 1 exists in the target: the INSERT fails, and the $identify with it.
        run("INSERT INTO ref_ev (n, distinct_id) VALUES (1, 'X')");
        let before_insert = state();
        assert!(err("SELECT mp_ingest('ref_stage', 'ref_ev')").starts_with("23505"));
        assert_eq!(state(), before_insert);
        assert_eq!(before_insert, before);
        run("DELETE FROM ref_ev");
        assert_eq!(
            one("SELECT format('%s|%s|%s', rows_inserted, identity_events, refused) FROM mp_ingest('ref_stage', 'ref_ev', empty_staging => true)")
                .as_deref(),
            Some("2|1|0")
        );
        assert_eq!(
            one("SELECT count(*)::text FROM ref_stage").as_deref(),
            Some("0")
        );
        assert_eq!(
            one("SELECT string_agg(canonical_id, ',' ORDER BY n) FROM ref_ev").as_deref(),
            Some("U1,U1")
        );
    }

    /// A writer ingests into its own table; a reader, who may not, is refused.
    #[pg_test]
    fn a_writer_ingests_its_own_tables() {
        run("CREATE ROLE ing_w; CREATE ROLE ing_r; SELECT mp_grant_writer('ing_w'), mp_grant_reader('ing_r'); \
             SELECT mp_create_project('ing_own'); \
             GRANT CREATE ON SCHEMA public TO ing_w; \
             SET LOCAL ROLE ing_w; \
             SET LOCAL identity_merge.anon_id_format = 'any'; \
             CREATE TABLE w_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text); \
             SELECT mp_attach('w_ev', 'ing_own'); \
             CREATE TABLE w_stage (LIKE w_ev); \
             INSERT INTO w_stage (n, distinct_id, event, properties) VALUES \
               (1, 'D5', '$identify', '{\"$identified_id\": \"U5\", \"$anon_id\": \"D5\"}'), (2, 'D5', 'x', '{}')");
        assert_eq!(
            one("SELECT rows_inserted || '|' || identity_events FROM mp_ingest('w_stage', 'w_ev')")
                .as_deref(),
            Some("2|1")
        );
        assert_eq!(
            one("SELECT string_agg(canonical_id, ',' ORDER BY n) FROM w_ev").as_deref(),
            Some("U5,U5")
        );
        run("RESET ROLE; SET LOCAL ROLE ing_r");
        assert!(err("SELECT mp_ingest('w_stage', 'w_ev')").starts_with("42501"));
        run("RESET ROLE");
    }
}
