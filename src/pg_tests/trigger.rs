//! The stamping trigger: VALUES, INSERT ... SELECT and COPY, identity rows in row order, refusals
//! recorded with the row, the whole-project cache load, mp_attach's checks and mp_restamp.

#[pgrx::pg_schema]
mod tests {
    #[allow(unused_imports)]
    use crate::pg_tests::support::*;
    use pgrx::prelude::*;

    /// Many misses make the trigger load the whole project into its cache; from then on an id
    /// missing from the cache is unknown without a probe. Stamps stay what mp_resolve says,
    /// also after the statement's own joins and for ids added by them.
    #[pg_test]
    fn a_loaded_project_stamps_like_resolve() {
        run("SELECT mp_create_project('bulk'); \
             SELECT mp_set_project_setting('bulk', 'anon_id_format', 'any'); \
             SELECT mp_merge('u' || g, 'd' || g, 'bulk') FROM generate_series(1, 3000) g; \
             CREATE TABLE bulk_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text); \
             SELECT mp_attach('bulk_ev', 'bulk')");
        let loads = crate::sync::cache::loads_completed();
        run("INSERT INTO bulk_ev (n, distinct_id, event) \
             SELECT g, CASE g % 4 WHEN 0 THEN 'd' || (g % 3000 + 1) WHEN 1 THEN 'u' || (g % 3000 + 1) \
                               ELSE 'new' || g END, 'Page' \
               FROM generate_series(1, 40000) g");
        assert!(
            crate::sync::cache::loads_completed() > loads,
            "40,000 rows with 23,000 distinct ids loaded the project"
        );
        let wrong = one(
            "SELECT count(*)::text FROM bulk_ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id, 'bulk')",
        );
        assert_eq!(wrong.as_deref(), Some("0"));
        // Joins inside the statement, then rows that need them: d1 and d2's clusters merge;
        // new-a (never seen) is identified as u3; new-b stays unknown.
        run(
            r#"INSERT INTO bulk_ev (n, distinct_id, event, properties) VALUES
             (100001, 'd1', 'Page', NULL), (100002, 'd2', 'Page', NULL), (100003, 'new-a', 'Page', NULL),
             (100004, 'u1', '$merge', '{"$distinct_ids": ["d1", "d2"]}'),
             (100005, 'u3', '$identify', '{"$identified_id": "u3", "$anon_id": "new-a"}'),
             (100006, 'd1', 'Page', NULL), (100007, 'd2', 'Page', NULL), (100008, 'u2', 'Page', NULL),
             (100009, 'new-a', 'Page', NULL), (100010, 'new-b', 'Page', NULL)"#,
        );
        let before = one(
            "SELECT string_agg(canonical_id, ',' ORDER BY n) FROM bulk_ev WHERE n BETWEEN 100001 AND 100003",
        );
        assert_eq!(
            before.as_deref(),
            Some("u1,u2,new-a"),
            "rows before the joins"
        );
        let after =
            one("SELECT string_agg(canonical_id, ',' ORDER BY n) FROM bulk_ev WHERE n > 100005");
        let merged = resolve_in("d2", "bulk");
        assert_eq!(merged, resolve_in("d1", "bulk"));
        assert_eq!(
            after,
            Some(format!("{merged},{merged},{merged},u3,new-b")),
            "rows after the joins"
        );
    }

    /// A stream mixing page views with `$identify`, `$create_alias`, `$merge` rows (valid,
    /// malformed, refused by the rules, over the cluster size limit), inserted in one statement,
    /// gives the same stamps, clusters, merge log and rejections as the same rows inserted one
    /// statement per row: whatever the trigger does within a statement (its cache, its own joins'
    /// redirects, the exclusive project lock after many joins), a row sees what the rows before
    /// it did.
    #[pg_test]
    fn a_mixed_stream_in_one_statement_equals_row_by_row() {
        // The default: the first identity events one by one, the rest in the statement's batch.
        mixed_stream_equals_row_by_row(None);
    }

    #[pg_test]
    fn a_mixed_stream_applied_in_memory_from_its_first_event_equals_row_by_row() {
        mixed_stream_equals_row_by_row(Some(1));
    }

    #[pg_test]
    fn a_mixed_stream_applied_one_event_at_a_time_equals_row_by_row() {
        mixed_stream_equals_row_by_row(Some(0));
    }

    /// A Simplified project's stream (device and user columns: links, a device met by a second
    /// user refused, NULL and blocked ids) applied in one statement's batch gives what the same
    /// rows give one statement each, one event at a time.
    #[pg_test]
    fn a_simplified_stream_in_one_batch_equals_row_by_row() {
        run("SELECT mp_create_project(t, 'simplified') FROM (VALUES ('simp-bulk'), ('simp-rows')) v(t); \
             CREATE TABLE simp_src (n int, device text, usr text); \
             INSERT INTO simp_src \
             SELECT g, CASE WHEN g % 97 = 0 THEN 'undefined' ELSE 'D' || (hashint4(g) & 2147483647) % 300 END, \
                    CASE WHEN g % 3 = 0 THEN NULL ELSE 'U' || (hashint4(g * 7) & 2147483647) % 120 END \
               FROM generate_series(1, 3000) g; \
             CREATE TABLE simp_bulk (n int, \"$device_id\" text, \"$user_id\" text, distinct_id text, event text, properties jsonb, canonical_id text); \
             CREATE TABLE simp_rows (LIKE simp_bulk); \
             SELECT mp_attach('simp_bulk', 'simp-bulk'), mp_attach('simp_rows', 'simp-rows')");
        run("SET LOCAL identity_merge.batch_threshold = 1");
        run(
            "INSERT INTO simp_bulk (n, \"$device_id\", \"$user_id\", event, properties) \
             SELECT n, device, usr, 'Page View', '{}' FROM simp_src ORDER BY n",
        );
        assert!(
            project_lock("simp-bulk").is_some_and(|m| m.contains("ExclusiveLock")),
            "the bulk statement ran as a batch"
        );
        run("SET LOCAL identity_merge.batch_threshold = 0");
        run("DO $$ DECLARE r record; BEGIN \
               FOR r IN SELECT * FROM simp_src ORDER BY n LOOP \
                 INSERT INTO simp_rows (n, \"$device_id\", \"$user_id\", event, properties) \
                 VALUES (r.n, r.device, r.usr, 'Page View', '{}'); \
               END LOOP; END $$");
        same_outcome(
            ("simp_bulk", "simp-bulk"),
            ("simp_rows", "simp-rows"),
            "SELECT string_agg(coalesce(distinct_id, '-') || '>' || coalesce(canonical_id, '-'), ',' ORDER BY n) FROM TABLE",
            "concat_ws(':', reason_code, operation, id_a, id_b)",
        );
    }

    /// The project's lock mode held by this transaction ('ExclusiveLock' once a batch took it).
    fn project_lock(token: &str) -> Option<String> {
        one(&format!(
            "SELECT string_agg(l.mode, ',') FROM pg_locks l, identity_merge.projects p \
              WHERE p.token = '{token}' AND l.locktype = 'advisory' AND l.pid = pg_backend_pid() \
                AND l.classid = x'49444d47'::int::oid AND l.objid = p.project_id AND l.objsubid = 3"
        ))
    }

    /// Asserts that the stream loaded into `bulk` (table, project) in one statement left what
    /// the same rows loaded into `rows` one statement each left: stamps (`stamps`, with TABLE for
    /// the table), clusters, merge log and rejections (`rejection`, an expression over a row of
    /// identity_merge.rejections), each non-empty; and mp_check finds nothing in either.
    fn same_outcome(bulk: (&str, &str), rows: (&str, &str), stamps: &str, rejection: &str) {
        let of = |sql: &str, (table, token): (&str, &str)| -> Option<String> {
            one(&sql.replace("TABLE", table).replace("TOKEN", token))
        };
        let rejections = format!(
            "SELECT string_agg({rejection}, ',' ORDER BY rejection_id) \
             FROM identity_merge.rejections WHERE project_id = (SELECT project_id FROM identity_merge.projects WHERE token = 'TOKEN')"
        );
        let checks = [
            ("stamps", stamps),
            ("clusters", "SELECT string_agg(canonical_id || ':' || size || ':' || identified, ',' ORDER BY canonical_id) \
                          FROM identity_merge.clusters WHERE project_id = (SELECT project_id FROM identity_merge.projects WHERE token = 'TOKEN')"),
            ("merge log", "SELECT string_agg(concat_ws(':', operation, id_a, id_b, kept_canonical, absorbed_canonical, moved_ids), ',' ORDER BY seq) \
                           FROM identity_merge.merge_log WHERE project_id = (SELECT project_id FROM identity_merge.projects WHERE token = 'TOKEN')"),
            ("rejections", &rejections),
        ];
        for (what, sql) in checks {
            let loaded = of(sql, bulk);
            assert!(loaded.is_some(), "{what}: the stream produced none");
            assert_eq!(loaded, of(sql, rows), "{what}: one statement vs row by row");
        }
        for (_, token) in [bulk, rows] {
            assert_eq!(
                one(&format!("SELECT count(*)::text FROM mp_check('{token}')")).as_deref(),
                Some("0"),
                "mp_check({token})"
            );
        }
    }

    fn mixed_stream_equals_row_by_row(threshold: Option<i32>) {
        if let Some(t) = threshold {
            run(&format!("SET LOCAL identity_merge.batch_threshold = {t}"));
        }
        run("SELECT mp_create_project(t), mp_set_project_setting(t, 'anon_id_format', 'any'), \
                    mp_set_project_setting(t, 'max_cluster_size', '6') \
               FROM (VALUES ('mix-bulk'), ('mix-rows')) v(t); \
             CREATE TABLE mix_src (n int, distinct_id text, event text, properties jsonb); \
             INSERT INTO mix_src \
             SELECT g, CASE WHEN g % 50 IN (1, 2) THEN 'u' || (k % 30) ELSE 'd' || k END, \
                    CASE g % 50 WHEN 0 THEN '$identify' WHEN 1 THEN '$create_alias' WHEN 2 THEN '$merge' \
                                WHEN 3 THEN '$merge' WHEN 4 THEN '$identify' WHEN 5 THEN '$identify' ELSE 'Page View' END, \
                    CASE g % 50 \
                      WHEN 0 THEN jsonb_build_object('$identified_id', 'u' || (k % 30), '$anon_id', 'd' || k) \
                      WHEN 1 THEN jsonb_build_object('alias', 'a' || k, 'distinct_id', 'u' || (k * 3 % 30)) \
                      WHEN 2 THEN jsonb_build_object('$distinct_ids', jsonb_build_array('d' || k, 'd' || (k * 13 % 100))) \
                      WHEN 3 THEN jsonb_build_object('$distinct_ids', jsonb_build_array('d' || k)) \
                      WHEN 4 THEN jsonb_build_object('$identified_id', 'd' || k, '$anon_id', 'd' || k) \
                      WHEN 5 THEN jsonb_build_object('$identified_id', 'u' || (k % 30)) \
                      ELSE '{}' END \
               FROM generate_series(1, 4000) g, LATERAL (SELECT (hashint4(g) & 2147483647) % 100 AS k) x; \
             CREATE TABLE mix_bulk (n int, distinct_id text, event text, properties jsonb, canonical_id text); \
             CREATE TABLE mix_rows (LIKE mix_bulk); \
             SELECT mp_attach('mix_bulk', 'mix-bulk'), mp_attach('mix_rows', 'mix-rows')");
        run("INSERT INTO mix_bulk SELECT * FROM mix_src ORDER BY n");
        // The statement took the batch path (its project held exclusively, which one event at a
        // time would only do after identity_merge.cluster_locks_per_transaction cluster locks).
        let batched = threshold != Some(0);
        assert_eq!(
            project_lock("mix-bulk").is_some_and(|m| m.contains("ExclusiveLock")),
            batched,
            "lock of the bulk project: {:?}",
            project_lock("mix-bulk")
        );
        run("DO $$ DECLARE r record; BEGIN \
               FOR r IN SELECT * FROM mix_src ORDER BY n LOOP \
                 INSERT INTO mix_rows VALUES (r.n, r.distinct_id, r.event, r.properties); \
               END LOOP; END $$");
        same_outcome(
            ("mix_bulk", "mix-bulk"),
            ("mix_rows", "mix-rows"),
            "SELECT string_agg(coalesce(canonical_id, '-'), ',' ORDER BY n) FROM TABLE",
            "concat_ws(':', reason_code, operation, id_a, id_b, source_row->>'distinct_id')",
        );
        // The stream exercised what it is meant to: joins, every kind of refusal, the limit.
        let counts = one(
            "SELECT (SELECT count(*) FROM identity_merge.merge_log l JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'mix-bulk') || '/' || \
                    (SELECT count(DISTINCT reason_code) FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'mix-bulk')",
        )
        .unwrap();
        let (joins, reasons) = counts.split_once('/').unwrap();
        assert!(joins.parse::<i64>().unwrap() >= 50, "joins: {counts}");
        assert!(
            reasons.parse::<i64>().unwrap() >= 4,
            "kinds of refusal: {counts}"
        );
    }

    /// The statement's AFTER triggers run after its batch was written: they see its joins in
    /// the state tables (as they would one event at a time).
    #[pg_test]
    fn after_triggers_of_a_statement_see_its_batch_written() {
        run("SET LOCAL identity_merge.batch_threshold = 1");
        run("SELECT mp_create_project('aft'), mp_set_project_setting('aft', 'anon_id_format', 'any')");
        run("CREATE TABLE aft_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text); \
             SELECT mp_attach('aft_ev', 'aft'); \
             CREATE TABLE aft_seen (level text, joins bigint); \
             CREATE FUNCTION aft_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               INSERT INTO aft_seen SELECT TG_LEVEL, count(*) FROM identity_merge.merge_log l \
                 JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'aft'; \
               RETURN NULL; END $$; \
             CREATE TRIGGER aft_statement AFTER INSERT ON aft_ev FOR EACH STATEMENT EXECUTE FUNCTION aft_count(); \
             CREATE TRIGGER aft_row AFTER INSERT ON aft_ev FOR EACH ROW WHEN (NEW.n = 30) EXECUTE FUNCTION aft_count()");
        run("INSERT INTO aft_ev SELECT g, 'u' || g, '$identify', \
                    jsonb_build_object('$identified_id', 'u' || g, '$anon_id', 'd' || g) \
               FROM generate_series(1, 30) g");
        assert_eq!(
            one("SELECT string_agg(level || ':' || joins, ',' ORDER BY level) FROM aft_seen")
                .as_deref(),
            Some("ROW:30,STATEMENT:30")
        );
    }

    #[pg_test]
    fn smoke() {
        assert_eq!(
            one("SELECT mp_resolve('never-seen')").as_deref(),
            Some("never-seen")
        );
    }

    #[pg_test]
    fn trigger_applies_identity_rows_in_row_order_in_one_statement() {
        make_events();
        // one INSERT ... SELECT: page views, the identify, then more page views of the device
        run("INSERT INTO ev SELECT * FROM (VALUES \
             (1, '$device:D1', 'Page View', '{}'::jsonb), \
             (2, 'U1', '$identify', '{\"$identified_id\": \"U1\", \"$anon_id\": \"$device:D1\"}'), \
             (3, '$device:D1', 'Page View', '{}'), \
             (4, 'X', '$create_alias', '{\"alias\": \"X\", \"distinct_id\": \"U1\"}'), \
             (5, 'X', 'Page View', '{}'), \
             (6, 'M', '$merge', '{\"$distinct_ids\": [\"M\", \"U1\"]}'), \
             (7, 'U1', 'Page View', '{}')) v ORDER BY 1");
        assert_eq!(stamps(), ["$device:D1", "U1", "U1", "U1", "U1", "M", "M"]);
        run("SELECT mp_restamp('ev')");
        assert_eq!(stamps(), ["M"; 7]);
    }

    #[pg_test]
    fn trigger_copy_stamps_rows() {
        make_events();
        run("SELECT mp_identify('U1', '$device:D1')");
        run("COPY (SELECT n, '$device:D' || (n % 2 + 1), 'Page View', '{}'::jsonb, NULL::text FROM generate_series(1, 10) n) \
             TO '/tmp/identity_merge_copy_test.csv' CSV");
        run("COPY ev FROM '/tmp/identity_merge_copy_test.csv' CSV");
        assert_eq!(
            one("SELECT string_agg(canonical_id, ',' ORDER BY n) FROM ev WHERE n <= 4").as_deref(),
            Some("$device:D2,U1,$device:D2,U1")
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM ev").unwrap(),
            Some(10)
        );
    }

    #[pg_test]
    fn trigger_records_refusals_and_keeps_the_row() {
        run("CREATE TABLE ev (n int, distinct_id text, event text, properties jsonb, canonical_id text)");
        run("SELECT mp_attach('ev')");
        // anon id not a UUID (default format), equal ids, missing field, wrong type, blocked id
        run("INSERT INTO ev VALUES \
             (1, 'U1', '$identify', '{\"$identified_id\": \"U1\", \"$anon_id\": \"D1\"}'), \
             (2, 'U1', '$identify', '{\"$identified_id\": \"U1\", \"$anon_id\": \"U1\"}'), \
             (3, 'U1', '$identify', '{\"$identified_id\": \"U1\"}'), \
             (4, 'U1', '$merge', '{\"$distinct_ids\": [\"U1\", true]}'), \
             (5, 'U1', '$create_alias', '{\"alias\": \"undefined\", \"distinct_id\": \"U1\"}'), \
             (6, 'U1', '$merge', '{\"$distinct_ids\": [\"U1\"]}')");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM ev").unwrap(),
            Some(6),
            "no row lost"
        );
        assert_eq!(
            one("SELECT string_agg(reason_code, ',' ORDER BY rejection_id) FROM identity_merge.rejections WHERE project_id = 1").as_deref(),
            Some("errAnonDistinctIdNonGUIDForm,errSameIDs,errMalformedEvent,errMalformedEvent,errInvalidID,errMalformedEvent")
        );
        assert_eq!(
            one("SELECT format('%s|%s|%s|%s', source_table, id_a, id_b, source_row->>'distinct_id') FROM identity_merge.rejections WHERE project_id = 1 ORDER BY rejection_id LIMIT 1").as_deref(),
            Some("ev|U1|D1|U1")
        );
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM identity_merge.identities WHERE project_id = 1"
            )
            .unwrap(),
            Some(0)
        );
        assert_eq!(
            one("SELECT string_agg(DISTINCT canonical_id, ',') FROM ev").as_deref(),
            Some("U1")
        );
    }

    /// The trigger forms the stamped row from the columns it deformed once (trigger.rs's
    /// `Columns`): every other column, dropped ones, one added with a default after rows were
    /// written, NULLs and a TOASTed value must come out as they went in, on INSERT and UPDATE.
    #[pg_test]
    fn stamped_rows_keep_every_other_column() {
        run("CREATE TABLE wide (a int, gone text, distinct_id text, b text, event text, properties jsonb, canonical_id text)");
        run("INSERT INTO wide (a, gone, distinct_id, b) VALUES (0, 'x', 'before', 'old')");
        run("SELECT mp_attach('wide')");
        run("ALTER TABLE wide DROP COLUMN gone");
        run("ALTER TABLE wide ADD COLUMN c int DEFAULT 7, ADD COLUMN d text");
        run("SELECT mp_set_project_setting('default', 'anon_id_format', 'any')");
        run("SELECT mp_identify('U1', '$device:D1')");
        run(
            "INSERT INTO wide (a, distinct_id, b, event, properties, d) VALUES \
             (1, '$device:D1', NULL, 'Page View', '{\"k\": 1}', repeat('long', 5000)), \
             (2, 'nobody', 'b2', NULL, NULL, NULL)",
        );
        assert_eq!(
            one("SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s', a, distinct_id, b, event, properties, c, length(d), canonical_id), ' ' ORDER BY a) FROM wide WHERE a > 0").as_deref(),
            Some("1|$device:D1||Page View|{\"k\": 1}|7|20000|U1 2|nobody|b2|||7||nobody")
        );
        // An UPDATE of the distinct_id of a row written before the columns changed.
        run("UPDATE wide SET distinct_id = '$device:D1' WHERE a = 0");
        assert_eq!(
            one("SELECT format('%s|%s|%s|%s|%s|%s', a, distinct_id, b, c, d, canonical_id) FROM wide WHERE a = 0").as_deref(),
            Some("0|$device:D1|old|7||U1")
        );
    }

    #[pg_test]
    fn trigger_without_event_columns_only_stamps() {
        run("CREATE TABLE plain_ev (user_key text, person text, payload int)");
        run("SELECT mp_attach('plain_ev', 'default', 'user_key', 'person')");
        run(&format!("SELECT mp_identify('U9', '{A1}')"));
        run(&format!(
            "INSERT INTO plain_ev VALUES ('{A1}', NULL, 1), (NULL, 'junk', 2), ('other', NULL, 3)"
        ));
        assert_eq!(
            one(
                "SELECT string_agg(coalesce(person, '<null>'), ',' ORDER BY payload) FROM plain_ev"
            )
            .as_deref(),
            Some("U9,<null>,other")
        );
        run("SELECT mp_detach('plain_ev')");
        run("INSERT INTO plain_ev VALUES ('x', NULL, 4)");
        assert_eq!(
            one("SELECT coalesce(person, '<null>') FROM plain_ev WHERE payload = 4").as_deref(),
            Some("<null>")
        );
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM identity_merge.attachments WHERE project_id = 1"
            )
            .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn attach_checks_its_arguments() {
        run("CREATE TABLE t1 (distinct_id text, canonical_id int)");
        assert!(
            err("SELECT mp_attach('t1')").starts_with("42804"),
            "canonical column must be text"
        );
        assert!(err("SELECT mp_attach('t1', 'default', 'nope')").starts_with("42703"));
        assert!(err("SELECT mp_attach('t1', 'no-such-project')").starts_with("42704"));
        assert!(err("SELECT mp_restamp('t1')").starts_with("55000"));
    }

    #[pg_test]
    fn restamp_changes_only_stale_rows() {
        make_events();
        run("INSERT INTO ev SELECT n, 'd' || (n % 50), 'Page View', '{}' FROM generate_series(1, 1000) n");
        run("SELECT mp_merge('d1', 'd2'), mp_merge('d1', 'd3'), mp_alias('d4', 'd1')");
        // 20 rows each of d2, d3, d4 are stale; d1's 20 rows already say d1
        assert_eq!(
            Spi::get_one::<i64>("SELECT mp_restamp('ev')").unwrap(),
            Some(60)
        );
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id)").unwrap(), Some(0));
        // a chain: the d1 cluster is absorbed later
        run("SELECT mp_merge('d5', 'd1')");
        assert_eq!(
            Spi::get_one::<i64>("SELECT mp_restamp('ev')").unwrap(),
            Some(80)
        );
        assert_eq!(Spi::get_one::<i64>("SELECT count(*) FROM ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id)").unwrap(), Some(0));
        assert!(
            one("SELECT indexdef FROM pg_indexes WHERE tablename = 'ev'")
                .unwrap()
                .contains("canonical_id")
        );
    }
}
