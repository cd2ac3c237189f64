//! Tests against a real PostgreSQL started by pgrx-tests: the doc flows, every refusal and bad
//! input of the contract, the trigger (VALUES, INSERT ... SELECT, COPY), mp_restamp, and
//! (plain #[test]s driving several connections) concurrency.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    const A1: &str = "3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b";
    const A2: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

    fn one(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).expect(sql)
    }

    fn run(sql: &str) {
        Spi::run(sql).expect(sql)
    }

    /// Runs `sql`, returning "ok" or "SQLSTATE message" of the error it raised.
    fn err(sql: &str) -> String {
        run("CREATE OR REPLACE FUNCTION pg_temp.im_try(q text) RETURNS text LANGUAGE plpgsql AS $$ \
             BEGIN EXECUTE q; RETURN 'ok'; \
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ' ' || SQLERRM; END $$");
        Spi::get_one_with_args::<String>("SELECT pg_temp.im_try($1)", &[sql.into()])
            .unwrap()
            .unwrap()
    }

    /// A fingerprint of all identity state, to prove that a refusal changed nothing.
    fn state() -> String {
        one("SELECT (SELECT md5(coalesce(string_agg(format('%s|%s|%s', project_id, distinct_id, canonical_id), ',' \
                ORDER BY project_id, distinct_id), '')) FROM identity_merge.identities WHERE project_id <> ALL (SELECT project_id FROM identity_merge.projects WHERE token IN ('conc2', 'cross', 'stale', 'snap', 'late', 'stress', 'own', 'own_ref'))) || \
                (SELECT md5(coalesce(string_agg(format('%s|%s|%s|%s', project_id, canonical_id, size, identified), ',' \
                ORDER BY project_id, canonical_id), '')) FROM identity_merge.clusters WHERE project_id <> ALL (SELECT project_id FROM identity_merge.projects WHERE token IN ('conc2', 'cross', 'stale', 'snap', 'late', 'stress', 'own', 'own_ref'))) || \
                (SELECT count(*) FROM identity_merge.merge_log WHERE project_id <> ALL (SELECT project_id FROM identity_merge.projects WHERE token IN ('conc2', 'cross', 'stale', 'snap', 'late', 'stress', 'own', 'own_ref')))::text")
        .unwrap()
    }

    fn resolve(id: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT mp_resolve($1)", &[id.into()])
            .unwrap()
            .unwrap()
    }

    /// Checks the structural invariants of the default project.
    fn assert_consistent() {
        let bad = Spi::get_one::<i64>(
            "SELECT count(*) FROM identity_merge.clusters c WHERE c.project_id = 1 AND c.size <> \
               (SELECT count(*) FROM identity_merge.identities i WHERE i.project_id = c.project_id AND i.canonical_id = c.canonical_id) \
               OR NOT EXISTS (SELECT 1 FROM identity_merge.identities i WHERE i.project_id = c.project_id \
                              AND i.distinct_id = c.canonical_id AND i.canonical_id = c.canonical_id)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(bad, 0, "cluster sizes or canonical membership disagree");
        let orphans = Spi::get_one::<i64>(
            "SELECT count(*) FROM identity_merge.identities i WHERE NOT EXISTS \
             (SELECT 1 FROM identity_merge.clusters c WHERE c.project_id = i.project_id AND c.canonical_id = i.canonical_id)",
        )
        .unwrap()
        .unwrap();
        assert_eq!(orphans, 0, "ids pointing at no cluster");
    }

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
        let loads = crate::cache::loads_completed();
        run("INSERT INTO bulk_ev (n, distinct_id, event) \
             SELECT g, CASE g % 4 WHEN 0 THEN 'd' || (g % 3000 + 1) WHEN 1 THEN 'u' || (g % 3000 + 1) \
                               ELSE 'new' || g END, 'Page' \
               FROM generate_series(1, 40000) g");
        assert!(
            crate::cache::loads_completed() > loads,
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

    fn resolve_in(id: &str, project: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT mp_resolve($1, $2)", &[id.into(), project.into()])
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn smoke() {
        assert_eq!(
            one("SELECT mp_resolve('never-seen')").as_deref(),
            Some("never-seen")
        );
    }

    // ---- The doc flows of 002_f06f188177ad2724.txt, through the functions ----

    #[pg_test]
    fn flow_new_user_signup_functions() {
        assert_eq!(resolve(A1), A1, "anonymous events carry the device id");
        assert_eq!(
            one(&format!("SELECT mp_identify('U1', '{A1}')")).as_deref(),
            Some("U1")
        );
        assert_eq!(
            resolve(A1),
            "U1",
            "earlier anonymous id now resolves to the user"
        );
        assert_eq!(resolve("U1"), "U1");
        let members: Vec<String> = Spi::connect(|c| {
            c.select("SELECT mp_cluster('U1')", None, &[])
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap())
                .collect()
        });
        assert_eq!(members, vec![A1.to_string(), "U1".to_string()]);
        assert_consistent();
    }

    #[pg_test]
    fn flow_returning_user_functions() {
        run(&format!("SELECT mp_identify('U1', '{A1}')"));
        assert_eq!(resolve(A2), A2, "new device, not logged in");
        assert_eq!(
            one(&format!("SELECT mp_identify('U1', '{A2}')")).as_deref(),
            Some("U1")
        );
        assert_eq!(resolve(A1), "U1");
        assert_eq!(resolve(A2), "U1");
        assert_eq!(
            Spi::get_one::<i32>(
                "SELECT size FROM identity_merge.clusters WHERE canonical_id = 'U1'"
            )
            .unwrap(),
            Some(3)
        );
        assert_consistent();
    }

    #[pg_test]
    fn flow_multiple_users_one_device_functions() {
        run(&format!("SELECT mp_identify('U1', '{A1}')"));
        run(&format!("SELECT mp_identify('U2', '{A2}')"));
        assert_eq!(resolve(A1), "U1");
        assert_eq!(resolve(A2), "U2");
        // the first device cannot be taken over by the second user
        let before = state();
        let e = err(&format!("SELECT mp_identify('U2', '{A1}')"));
        assert!(
            e.starts_with("55000 errAnonDistinctIdAssignedAlready"),
            "{e}"
        );
        assert_eq!(state(), before);
    }

    // ---- The same flows as event rows in an attached table ----

    fn make_events() {
        run("SET LOCAL identity_merge.anon_id_format = 'any'");
        run("CREATE TABLE ev (n int, distinct_id text, event text, properties jsonb, canonical_id text)");
        run("SELECT mp_attach('ev')");
    }

    fn stamps() -> Vec<String> {
        Spi::connect(|c| {
            c.select("SELECT canonical_id FROM ev ORDER BY n", None, &[])
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
                .collect()
        })
    }

    fn identify_row(n: i32, user: &str, device: &str) -> String {
        format!(
            "INSERT INTO ev VALUES ({n}, '{user}', '$identify', '{{\"$identified_id\": \"{user}\", \"$anon_id\": \"$device:{device}\"}}')"
        )
    }

    fn page(n: i32, device: &str) -> String {
        format!("INSERT INTO ev VALUES ({n}, '$device:{device}', 'Page View', '{{}}')")
    }

    #[pg_test]
    fn flow_new_user_signup_rows() {
        make_events();
        run(&page(1, "D1"));
        run(&page(2, "D1"));
        assert_eq!(stamps(), ["$device:D1", "$device:D1"]);
        run(&identify_row(3, "U1", "D1"));
        assert_eq!(stamps(), ["$device:D1", "$device:D1", "U1"]);
        assert_eq!(
            Spi::get_one::<i64>("SELECT mp_restamp('ev')").unwrap(),
            Some(2)
        );
        assert_eq!(stamps(), ["U1", "U1", "U1"]);
        assert_eq!(
            Spi::get_one::<i64>("SELECT mp_restamp('ev')").unwrap(),
            Some(0),
            "second restamp finds nothing"
        );
        // the distinct_id as sent is kept
        assert_eq!(
            one("SELECT string_agg(distinct_id, ',' ORDER BY n) FROM ev").as_deref(),
            Some("$device:D1,$device:D1,U1")
        );
    }

    #[pg_test]
    fn flow_returning_user_rows() {
        make_events();
        run(&page(1, "D1"));
        run(&page(2, "D1"));
        run(&identify_row(3, "U1", "D1"));
        run(&page(4, "D2"));
        run(&page(5, "D2"));
        assert_eq!(stamps()[3..], ["$device:D2", "$device:D2"]);
        run(&identify_row(6, "U1", "D2"));
        assert_eq!(
            Spi::get_one::<i64>("SELECT mp_restamp('ev')").unwrap(),
            Some(4)
        );
        assert_eq!(stamps(), ["U1"; 6]);
    }

    #[pg_test]
    fn flow_multiple_users_one_device_rows() {
        make_events();
        run(&page(1, "D1"));
        run(&identify_row(2, "U1", "D1"));
        run(&page(3, "D2"));
        run(&page(4, "D2"));
        assert_eq!(stamps(), ["$device:D1", "U1", "$device:D2", "$device:D2"]);
        run(&identify_row(5, "U2", "D2"));
        run("SELECT mp_restamp('ev')");
        assert_eq!(stamps(), ["U1", "U1", "U2", "U2", "U2"]);
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM identity_merge.rejections WHERE project_id = 1"
            )
            .unwrap(),
            Some(0)
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

    // ---- Refusals and bad input: SQLSTATE, reason code, nothing changed ----

    #[pg_test]
    fn refusals_have_their_codes_and_change_nothing() {
        run(&format!("SELECT mp_identify('U1', '{A1}')"));
        run("SELECT mp_alias('AL', 'U1')");
        let cases: Vec<(String, &str)> = vec![
            ("SELECT mp_identify('U1', 'U1')".into(), "55000 errSameIDs"),
            ("SELECT mp_alias('Q', 'Q')".into(), "55000 errSameIDs"),
            (
                "SELECT mp_identify('U2', 'not-a-uuid')".into(),
                "55000 errAnonDistinctIdNonGUIDForm",
            ),
            // a version-1 uuid is not a v4
            (
                "SELECT mp_identify('U2', '3f1b2b8e-6f5c-1a7e-9d2b-1c2d3e4f5a6b')".into(),
                "55000 errAnonDistinctIdNonGUIDForm",
            ),
            (
                format!("SELECT mp_identify('U2', '{A1}')"),
                "55000 errAnonDistinctIdAssignedAlready",
            ),
            (
                format!("SELECT mp_identify('U2', '$device:{A1}')"),
                "ok-new",
            ), // a different id, not refused
            (
                "SELECT mp_alias('AL', 'Other')".into(),
                "55000 errAliasAlreadyExists",
            ),
            (
                "SELECT mp_alias('U1', 'Other')".into(),
                "55000 errAliasAlreadyExists",
            ),
        ];
        for (sql, want) in cases {
            if want == "ok-new" {
                continue;
            }
            let before = state();
            let got = err(&sql);
            assert!(got.starts_with(want), "{sql}: got {got}, want {want}");
            assert_eq!(state(), before, "{sql} changed state");
        }
        // the message names the values
        let got = err(&format!("SELECT mp_identify('U2', '{A1}')"));
        assert!(got.contains("\"U2\"") && got.contains(A1), "{got}");
    }

    #[pg_test]
    fn bad_inputs_raise_their_sqlstate_and_change_nothing() {
        run("SELECT mp_merge('seed-a', 'seed-b')");
        let long = "x".repeat(256);
        let ok255 = "y".repeat(255);
        let cases: Vec<(String, &str)> = vec![
            ("SELECT mp_identify(NULL, 'a')".into(), "22004 errNullID: identified_id"),
            ("SELECT mp_identify('u', NULL)".into(), "22004 errNullID: anon_id"),
            ("SELECT mp_alias(NULL, 'x')".into(), "22004"),
            ("SELECT mp_merge('x', NULL)".into(), "22004"),
            ("SELECT mp_merge(NULL::text[])".into(), "22004"),
            ("SELECT mp_merge(ARRAY['a', NULL])".into(), "22004"),
            ("SELECT mp_identify('', 'a')".into(), "22023 errInvalidID: identified_id \"\" is empty"),
            ("SELECT mp_alias('   ', 'x')".into(), "22023 errInvalidID: alias \"   \" is only whitespace"),
            (format!("SELECT mp_merge('{long}', 'b')"), "22023 errInvalidID: distinct_id_a"),
            ("SELECT mp_merge('a', 'undefined')".into(), "22023 errInvalidID: distinct_id_b \"undefined\" is on the project's list of blocked ids"),
            ("SELECT mp_merge('a', ' NULL ')".into(), "22023"),
            ("SELECT mp_merge('a', 'Anonymous')".into(), "22023"),
            ("SELECT mp_merge('a', '[object Object]')".into(), "22023"),
            ("SELECT mp_merge('a', '00000000-0000-0000-0000-000000000000')".into(), "22023"),
            ("SELECT mp_merge('a', '-1')".into(), "22023"),
            ("SELECT mp_merge(ARRAY['a'])".into(), "22023 invalid distinct_ids"),
            ("SELECT mp_merge(ARRAY['a', 'b', 'c'])".into(), "22023"),
            ("SELECT mp_merge('a', 'b', 'no-such-project')".into(), "42704 unknown project token \"no-such-project\""),
            ("SELECT mp_resolve('a', 'no-such-project')".into(), "42704"),
            ("SELECT mp_cluster('a', 'no-such-project')".into(), "42704"),
            ("SELECT mp_create_project('default')".into(), "42710"),
            ("SELECT mp_create_project('p2', 'sideways')".into(), "22023"),
            ("SELECT mp_set_project_mode('default', 'simplified')".into(), "55000"),
            ("SELECT mp_set_project_setting('default', 'max_cluster_size', '1')".into(), "22023"),
            ("SELECT mp_set_project_setting('default', 'colour', 'blue')".into(), "22023"),
        ];
        for (sql, want) in cases {
            let before = state();
            let got = err(&sql);
            assert!(got.starts_with(want), "{sql}: got {got}, want {want}");
            assert_eq!(state(), before, "{sql} changed state");
        }
        // 255 characters is accepted
        assert_eq!(
            one(&format!("SELECT mp_merge('{ok255}', 'seed-a')")).as_deref(),
            Some(ok255.as_str())
        );
        assert_eq!(
            one("SELECT mp_resolve(NULL)"),
            None,
            "NULL resolves to NULL"
        );
    }

    #[pg_test]
    fn projects_and_modes() {
        run("SELECT mp_create_project('tok-s', 'simplified')");
        assert!(err("SELECT mp_identify('u', 'v', 'tok-s')").starts_with("0A000"));
        assert!(err("SELECT mp_alias('u', 'v', 'tok-s')").starts_with("0A000"));
        assert!(err("SELECT mp_merge('u', 'v', 'tok-s')").starts_with("0A000"));
        run("SELECT mp_create_project('tok-o')");
        run("SELECT mp_set_project_mode('tok-o', 'simplified')");
        run("SELECT mp_set_project_mode('tok-o', 'original')");
        run("SELECT mp_merge('a', 'b', 'tok-o')");
        assert!(err("SELECT mp_set_project_mode('tok-o', 'simplified')").starts_with("55000"));
        // ids of two projects never meet
        assert_eq!(one("SELECT mp_resolve('b', 'tok-o')").as_deref(), Some("a"));
        assert_eq!(one("SELECT mp_resolve('b')").as_deref(), Some("b"));
        // per-project settings
        run("SELECT mp_set_project_setting('tok-o', 'anon_id_format', 'any')");
        assert_eq!(
            one("SELECT mp_identify('U', 'D1', 'tok-o')").as_deref(),
            Some("U")
        );
        assert!(err("SELECT mp_identify('U', 'D1')").contains("errAnonDistinctIdNonGUIDForm"));
        run("SELECT mp_set_project_setting('tok-o', 'blocked_ids', '{Bob}')");
        assert!(err("SELECT mp_merge('x', ' bob', 'tok-o')").starts_with("22023"));
        assert_eq!(
            one("SELECT mp_merge('x', 'undefined', 'tok-o')").as_deref(),
            Some("x"),
            "list replaced"
        );
        assert_eq!(
            one("SELECT value FROM mp_project_settings('tok-o') WHERE setting = 'blocked_ids'")
                .as_deref(),
            Some("{bob}")
        );
    }

    #[pg_test]
    fn errors_carry_a_hint() {
        run("CREATE OR REPLACE FUNCTION pg_temp.im_hint(q text) RETURNS text LANGUAGE plpgsql AS $$ \
             DECLARE h text; BEGIN EXECUTE q; RETURN ''; \
             EXCEPTION WHEN OTHERS THEN GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT; RETURN h; END $$");
        for sql in [
            "SELECT mp_identify('u', 'not-a-uuid')",
            "SELECT mp_merge('a', 'null')",
            "SELECT mp_merge('a', NULL)",
            "SELECT mp_resolve('a', 'nope')",
        ] {
            let hint =
                Spi::get_one_with_args::<String>("SELECT pg_temp.im_hint($1)", &[sql.into()])
                    .unwrap()
                    .unwrap();
            assert!(hint.len() > 10, "{sql}: hint {hint:?}");
        }
    }

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
        run("CREATE FUNCTION pg_temp.replay(p text) RETURNS void LANGUAGE plpgsql AS $$ \
             DECLARE r record; BEGIN \
               FOR r IN SELECT * FROM hist ORDER BY n LOOP \
                 BEGIN \
                   CASE r.op WHEN 'identify' THEN PERFORM mp_identify(r.a, r.b, p); \
                             WHEN 'alias' THEN PERFORM mp_alias(r.a, r.b, p); \
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
                let op = ["identify", "alias", "merge", "identify", "merge"][next(5)];
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
            let log_q = "SELECT string_agg(format('%s:%s>%s', operation, absorbed_canonical, kept_canonical), ',' ORDER BY seq) FROM identity_merge.merge_log \
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
            Ok(match op {
                "identify" => {
                    self.identified.insert(a.to_string());
                    self.join(a, b)
                }
                "alias" => self.join(b, a),
                _ => self.join(a, b),
            })
        }
    }

    #[pg_test]
    fn extension_agrees_with_the_reference_model() {
        run("SELECT mp_create_project('model'), mp_set_project_setting('model', 'max_cluster_size', '6')");
        run("CREATE FUNCTION pg_temp.op(o text, a text, b text) RETURNS text LANGUAGE plpgsql AS $$ \
             BEGIN RETURN 'ok:' || CASE o WHEN 'identify' THEN mp_identify(a, b, 'model') \
                                        WHEN 'alias' THEN mp_alias(a, b, 'model') ELSE mp_merge(a, b, 'model') END; \
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
        };
        let mut x: u64 = 0x2545F4914F6CDD1D;
        let mut next = |m: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % m as u64) as usize
        };
        let (mut oks, mut refusals) = (0, 0);
        for step in 0..600 {
            let op = ["identify", "alias", "merge"][next(3)];
            let a = pool[next(pool.len())].clone();
            let b = pool[next(pool.len())].clone();
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
            oks > 50 && refusals > 100,
            "the sequence exercises both ({oks} ok, {refusals} refused)"
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

    // ---- Least privilege and search_path safety ----

    #[pg_test]
    fn roles_reader_writer_and_none() {
        run("CREATE ROLE im_reader NOLOGIN; CREATE ROLE im_writer NOLOGIN; CREATE ROLE im_none NOLOGIN");
        run("SELECT mp_grant_reader('im_reader'), mp_grant_writer('im_writer')");
        run("GRANT USAGE, CREATE ON SCHEMA public TO im_writer, im_none");
        run("SELECT mp_merge('r1', 'r2')");
        // SET LOCAL lasts to the end of the transaction; an error's rollback undoes it, RESET the rest.
        let as_role = |role: &str, sql: &str| {
            err(&format!(
                "DO $b$ BEGIN SET LOCAL ROLE {role}; PERFORM ({sql}); RESET ROLE; END $b$"
            ))
        };
        let as_role_stmt = |role: &str, sql: &str| {
            err(&format!(
                "DO $b$ BEGIN SET LOCAL ROLE {role}; {sql}; RESET ROLE; END $b$"
            ))
        };
        // reader: resolve yes, change no (neither through functions nor directly)
        assert_eq!(as_role("im_reader", "SELECT mp_resolve('r2')"), "ok");
        assert_eq!(
            as_role("im_reader", "SELECT count(*) FROM mp_cluster('r2')"),
            "ok"
        );
        assert!(as_role("im_reader", "SELECT mp_merge('r3', 'r4')").starts_with("42501"));
        assert!(as_role("im_reader", "SELECT mp_track('{}')").starts_with("42501"));
        assert!(as_role_stmt(
            "im_reader",
            "UPDATE identity_merge.identities SET canonical_id = 'x'"
        )
        .starts_with("42501"));
        assert!(as_role_stmt(
            "im_reader",
            "INSERT INTO identity_merge.identities VALUES (1, 'a', 'a')"
        )
        .starts_with("42501"));
        // no grant: nothing at all
        assert!(as_role("im_none", "SELECT mp_resolve('r2')").starts_with("42501"));
        assert!(as_role(
            "im_none",
            "SELECT identity_merge._join(1, 'merge', 'a', 'b', 'a', false, 'b', false, 2, false)"
        )
        .starts_with("42501"));
        assert!(
            as_role_stmt("im_none", "DELETE FROM identity_merge.clusters").starts_with("42501")
        );
        // writer: through the functions only
        assert_eq!(as_role("im_writer", "SELECT mp_merge('w1', 'w2')"), "ok");
        assert!(as_role_stmt(
            "im_writer",
            "UPDATE identity_merge.identities SET canonical_id = 'x'"
        )
        .starts_with("42501"));
        assert!(as_role(
            "im_writer",
            "SELECT identity_merge._join(1, 'merge', 'a', 'b', 'a', false, 'b', false, 2, false)"
        )
        .starts_with("42501"));
        assert!(
            as_role("im_writer", "SELECT mp_create_project('mine')").starts_with("42501"),
            "projects are the administrator's"
        );
        assert!(as_role("im_writer", "SELECT mp_backfill('SELECT 1, 2, 3')").starts_with("42501"));
        // an event table owned by an ordinary role: attach, insert (also by a role that may only
        // insert into that table), identity events applied, refusals recorded
        assert_eq!(
            as_role_stmt(
                "im_writer",
                "CREATE TABLE public.owned_ev (distinct_id text, event text, properties jsonb, canonical_id text); \
                 PERFORM mp_attach('public.owned_ev'); \
                 GRANT INSERT ON public.owned_ev TO im_none"
            ),
            "ok"
        );
        assert_eq!(
            one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'owned_ev'").as_deref(),
            Some("im_writer")
        );
        let anon = "3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b";
        assert_eq!(
            as_role_stmt(
                "im_none",
                &format!(
                    "INSERT INTO public.owned_ev VALUES ('{anon}', 'Page View', '{{}}'), \
                     ('U7', '$identify', '{{\"$identified_id\": \"U7\", \"$anon_id\": \"{anon}\"}}'), \
                     ('U7', '$identify', '{{\"$identified_id\": \"U7\", \"$anon_id\": \"bad\"}}')"
                )
            ),
            "ok"
        );
        assert_eq!(
            one(&format!("SELECT mp_resolve('{anon}')")).as_deref(),
            Some("U7")
        );
        assert_eq!(one("SELECT reason_code FROM identity_merge.rejections WHERE source_table = 'public.owned_ev'::regclass").as_deref(), Some("errAnonDistinctIdNonGUIDForm"));
        // a role may not attach a table it does not own
        run("CREATE TABLE public.not_theirs (distinct_id text, canonical_id text)");
        assert!(
            as_role_stmt("im_writer", "PERFORM mp_attach('public.not_theirs')")
                .starts_with("42501")
        );
        // nor register it (the registration checks ownership before the trigger: 42501)
        assert!(as_role("im_writer", "SELECT identity_merge._register_attachment('public.not_theirs', 1, 'distinct_id', 'canonical_id')").starts_with("42501"));
    }

    #[pg_test]
    fn objects_in_a_users_schema_cannot_hijack_the_functions() {
        // An "=" for text that is always true, and look-alike tables, first on the search_path.
        run("CREATE SCHEMA mallory");
        run("CREATE FUNCTION mallory.always(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true'");
        run("CREATE OPERATOR mallory.= (LEFTARG = text, RIGHTARG = text, FUNCTION = mallory.always)");
        run("CREATE OPERATOR mallory.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = mallory.always)");
        run(
            "CREATE TABLE mallory.identities (project_id int, distinct_id text, canonical_id text)",
        );
        run(
            "CREATE FUNCTION mallory.pg_advisory_xact_lock(bigint) RETURNS void LANGUAGE sql AS ''",
        );
        run("CREATE TABLE ev (n int, distinct_id text, event text, properties jsonb, canonical_id text)");
        run("SELECT mp_attach('ev')");
        run("SET LOCAL search_path = mallory, pg_catalog, public");
        assert_eq!(
            Spi::get_one::<bool>("SELECT 'a'::text = 'b'::text").unwrap(),
            Some(true),
            "the evil operator is live"
        );
        run("SELECT mp_merge('h1', 'h2')");
        assert_eq!(one("SELECT mp_resolve('h3')").as_deref(), Some("h3"));
        assert_eq!(one("SELECT mp_resolve('h2')").as_deref(), Some("h1"));
        run("INSERT INTO ev VALUES (1, 'h2', 'x', '{}'), (2, 'zz', 'x', '{}')");
        run("SELECT mp_merge('h0', 'h1')");
        assert_eq!(
            Spi::get_one::<i64>("SELECT mp_restamp('ev')").unwrap(),
            Some(1)
        );
        assert_eq!(
            one("SELECT string_agg(canonical_id, ',' ORDER BY n) FROM public.ev").as_deref(),
            Some("h0,zz")
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM mp_cluster('h1')").unwrap(),
            Some(3)
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM mp_check()").unwrap(),
            Some(0)
        );
        assert_eq!(one(r#"SELECT mp_track('{"event": "$merge", "properties": {"token": "default", "$distinct_ids": ["h0", "h9"]}}')::text"#).as_deref(), Some(r#"{"status": 1}"#));
        run("RESET search_path");
        assert_eq!(one("SELECT mp_resolve('h9')").as_deref(), Some("h0"));
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM mallory.identities").unwrap(),
            Some(0)
        );
    }

    // ---- Chains, identified merges, the size limit, replays ----

    #[pg_test]
    fn alias_chains_join_one_cluster() {
        assert_eq!(
            one("SELECT mp_alias('a1', 'root')").as_deref(),
            Some("root")
        );
        assert_eq!(one("SELECT mp_alias('a2', 'a1')").as_deref(), Some("root"));
        assert_eq!(one("SELECT mp_alias('a3', 'a2')").as_deref(), Some("root"));
        assert_eq!(resolve("a3"), "root");
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM mp_cluster('a1')").unwrap(),
            Some(4)
        );
        assert_consistent();
    }

    #[pg_test]
    fn merge_of_two_identified_clusters() {
        run(&format!("SELECT mp_identify('U1', '{A1}')"));
        run(&format!("SELECT mp_identify('U2', '{A2}')"));
        assert_eq!(
            one("SELECT mp_merge(ARRAY['U2', 'U1'])").as_deref(),
            Some("U2"),
            "first id's canonical survives"
        );
        for id in ["U1", "U2", A1, A2] {
            assert_eq!(resolve(id), "U2");
        }
        assert_eq!(
            Spi::get_one::<i32>(
                "SELECT size FROM identity_merge.clusters WHERE canonical_id = 'U2'"
            )
            .unwrap(),
            Some(4)
        );
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM identity_merge.clusters WHERE project_id = 1"
            )
            .unwrap(),
            Some(1)
        );
        // a third identify on the merged cluster's anon id, by another user, is refused
        assert!(err(&format!("SELECT mp_identify('U3', '{A1}')"))
            .contains("errAnonDistinctIdAssignedAlready"));
        assert_consistent();
    }

    #[pg_test]
    fn canonical_is_deterministic_when_the_identified_side_is_smaller() {
        // an anonymous cluster of 3 joins a new identified id: the identified id becomes canonical
        run("SET LOCAL identity_merge.anon_id_format = 'any'");
        run("SELECT mp_merge('anon1', 'anon2'), mp_merge('anon1', 'anon3')");
        assert_eq!(
            one("SELECT mp_identify('user', 'anon2')").as_deref(),
            Some("user")
        );
        for id in ["anon1", "anon2", "anon3", "user"] {
            assert_eq!(resolve(id), "user");
        }
        let log = one("SELECT string_agg(format('%s:%s>%s', operation, absorbed_canonical, kept_canonical), ' ' ORDER BY seq) FROM identity_merge.merge_log WHERE project_id = 1");
        assert_eq!(
            log.as_deref(),
            Some("merge:anon2>anon1 merge:anon3>anon1 identify:anon1>user")
        );
        assert_consistent();
    }

    #[pg_test]
    fn size_limit_allows_500_refuses_501() {
        run("SELECT mp_merge('big', 'm' || g) FROM generate_series(1, 498) g");
        assert_eq!(
            Spi::get_one::<i32>(
                "SELECT size FROM identity_merge.clusters WHERE canonical_id = 'big'"
            )
            .unwrap(),
            Some(499)
        );
        assert_eq!(
            one("SELECT mp_alias('the500th', 'big')").as_deref(),
            Some("big")
        );
        assert_eq!(
            Spi::get_one::<i32>(
                "SELECT size FROM identity_merge.clusters WHERE canonical_id = 'big'"
            )
            .unwrap(),
            Some(500)
        );
        let before = state();
        let got = err("SELECT mp_alias('the501st', 'big')");
        assert!(
            got.starts_with("54000 errManyIDs") && got.contains("501") && got.contains("500"),
            "{got}"
        );
        let got = err("SELECT mp_merge('small', 'm7')");
        assert!(got.starts_with("54000 errManyIDs"), "{got}");
        assert_eq!(state(), before);
        // a lower per-project limit
        run("SELECT mp_create_project('tiny'), mp_set_project_setting('tiny', 'max_cluster_size', '3')");
        run("SELECT mp_merge('a', 'b', 'tiny'), mp_merge('a', 'c', 'tiny')");
        assert!(err("SELECT mp_merge('a', 'd', 'tiny')").starts_with("54000"));
    }

    #[pg_test]
    fn replays_succeed_and_change_nothing() {
        run(&format!("SELECT mp_identify('U1', '{A1}')"));
        run("SELECT mp_alias('al', 'U1'), mp_merge('U1', 'other')");
        let before = state();
        assert_eq!(
            one(&format!("SELECT mp_identify('U1', '{A1}')")).as_deref(),
            Some("U1")
        );
        assert_eq!(one("SELECT mp_alias('al', 'U1')").as_deref(), Some("U1"));
        assert_eq!(
            one("SELECT mp_alias('al', 'other')").as_deref(),
            Some("U1"),
            "alias already in the same cluster"
        );
        assert_eq!(one("SELECT mp_merge('other', 'U1')").as_deref(), Some("U1"));
        assert_eq!(one("SELECT mp_merge('al', 'al')").as_deref(), Some("U1"));
        assert_eq!(
            one("SELECT mp_merge('lonely', 'lonely')").as_deref(),
            Some("lonely")
        );
        assert_eq!(state(), before);
    }
}

/// Simplified ID Merge, projects and the JSON API (same `tests` schema, which the runner calls).
mod simplified {
    #[pgrx::pg_schema]
    mod tests {
        use pgrx::prelude::*;

        fn one(sql: &str) -> Option<String> {
            Spi::get_one::<String>(sql).expect(sql)
        }

        fn run(sql: &str) {
            Spi::run(sql).expect(sql)
        }

        fn rows(sql: &str) -> Vec<String> {
            Spi::connect(|c| {
                c.select(sql, None, &[])
                    .unwrap()
                    .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
                    .collect()
            })
        }

        /// A simplified project and an event table with $device_id / $user_id columns, as the doc's tables.
        fn setup(token: &str) {
            run(&format!(
                "SELECT mp_create_project('{token}', 'simplified')"
            ));
            run("CREATE TABLE sev (n int, \"$device_id\" text, \"$user_id\" text, distinct_id text, event text, properties jsonb, canonical_id text)");
            run(&format!("SELECT mp_attach('sev', '{token}')"));
        }

        fn ev(n: i32, device: &str, user: Option<&str>) -> String {
            let user = user.map(|u| format!("'{u}'")).unwrap_or("NULL".into());
            format!("INSERT INTO sev (n, \"$device_id\", \"$user_id\", event, properties) VALUES ({n}, '{device}', {user}, 'Page View', '{{}}')")
        }

        #[pg_test]
        fn simplified_new_user_signup() {
            setup("s1");
            run(&ev(1, "D1", None));
            run(&ev(2, "D1", None));
            assert_eq!(
                rows("SELECT distinct_id FROM sev ORDER BY n"),
                ["$device:D1", "$device:D1"],
                "distinct_id filled"
            );
            assert_eq!(
                rows("SELECT canonical_id FROM sev ORDER BY n"),
                ["$device:D1", "$device:D1"]
            );
            run(&ev(3, "D1", Some("U1")));
            assert_eq!(
                one("SELECT mp_resolve('$device:D1', 's1')").as_deref(),
                Some("U1")
            );
            run("SELECT mp_restamp('sev')");
            assert_eq!(
                rows("SELECT canonical_id FROM sev ORDER BY n"),
                ["U1", "U1", "U1"]
            );
            assert_eq!(
                rows("SELECT distinct_id FROM sev ORDER BY n"),
                ["$device:D1", "$device:D1", "U1"]
            );
        }

        #[pg_test]
        fn simplified_returning_user() {
            setup("s2");
            for (n, d, u) in [
                (1, "D1", Some("U1")),
                (2, "D1", Some("U1")),
                (3, "D1", Some("U1")),
                (4, "D2", None),
                (5, "D2", None),
            ] {
                run(&ev(n, d, u));
            }
            assert_eq!(
                rows("SELECT canonical_id FROM sev ORDER BY n"),
                ["U1", "U1", "U1", "$device:D2", "$device:D2"]
            );
            run(&ev(6, "D2", Some("U1")));
            run("SELECT mp_restamp('sev')");
            assert_eq!(rows("SELECT canonical_id FROM sev ORDER BY n"), ["U1"; 6]);
        }

        #[pg_test]
        fn simplified_multiple_users_one_device() {
            setup("s3");
            run(&ev(1, "D1", None));
            run(&ev(2, "D1", Some("U1")));
            run(&ev(3, "D2", None));
            run(&ev(4, "D2", None));
            run(&ev(5, "D2", Some("U2")));
            run("SELECT mp_restamp('sev')");
            assert_eq!(
                rows("SELECT canonical_id FROM sev ORDER BY n"),
                ["U1", "U1", "U2", "U2", "U2"]
            );
            // first link wins: U2 on D1 is recorded and the event stays U2's
            run(&ev(6, "D1", Some("U2")));
            assert_eq!(
                one("SELECT canonical_id FROM sev WHERE n = 6").as_deref(),
                Some("U2")
            );
            assert_eq!(
                one("SELECT mp_resolve('$device:D1', 's3')").as_deref(),
                Some("U1")
            );
            assert_eq!(one("SELECT r.reason_code FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 's3' ORDER BY rejection_id DESC LIMIT 1").as_deref(), Some("errDeviceLinkedToOtherUser"));
            // two user ids never merge, and there is no size limit
            assert_eq!(one("SELECT mp_resolve('U2', 's3')").as_deref(), Some("U2"));
        }

        #[pg_test]
        fn simplified_properties_distinct_only_and_refusals() {
            run("SELECT mp_create_project('s4', 'simplified')");
            run("CREATE TABLE pev (n int, distinct_id text, event text, properties jsonb, canonical_id text)");
            run("SELECT mp_attach('pev', 's4')");
            run(
                "INSERT INTO pev (n, distinct_id, event, properties) VALUES \
             (1, NULL, 'Page View', '{\"$device_id\": \"D7\"}'), \
             (2, NULL, 'Login', '{\"$device_id\": \"D7\", \"$user_id\": 42}'), \
             (3, '$device:D7', 'Page View', '{}'), \
             (4, 'U9', 'Page View', '{}'), \
             (5, NULL, '$identify', '{\"$identified_id\": \"U9\", \"$anon_id\": \"$device:D7\"}'), \
             (6, NULL, 'x', '{\"$device_id\": \"D8\", \"$user_id\": \"$device:D8\"}'), \
             (7, NULL, 'x', '{\"$device_id\": \"D9\", \"$user_id\": [1]}')",
            );
            assert_eq!(
            rows("SELECT coalesce(distinct_id, '<null>') || '>' || coalesce(canonical_id, '<null>') FROM pev ORDER BY n"),
            ["$device:D7>$device:D7", "42>42", "$device:D7>42", "U9>U9", "<null>><null>", "$device:D8>$device:D8", "$device:D9>$device:D9"]
        );
            assert_eq!(
            one("SELECT string_agg(reason_code, ',' ORDER BY rejection_id) FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 's4'").as_deref(),
            Some("errIgnoredInSimplified,errUserIdIsDevice,errMalformedEvent")
        );
            assert_eq!(
                Spi::get_one::<i64>("SELECT count(*) FROM pev").unwrap(),
                Some(7),
                "no row lost"
            );
        }

        #[pg_test]
        fn two_projects_same_ids_stay_apart() {
            run("SELECT mp_create_project('orig'), mp_create_project('simp', 'simplified')");
            run("SET LOCAL identity_merge.anon_id_format = 'any'");
            run("SELECT mp_identify('U1', '$device:D1', 'orig')");
            run("CREATE TABLE t_s (distinct_id text, \"$device_id\" text, \"$user_id\" text, canonical_id text)");
            run("SELECT mp_attach('t_s', 'simp')");
            run("INSERT INTO t_s (\"$device_id\", \"$user_id\") VALUES ('D1', 'U2')");
            assert_eq!(
                one("SELECT mp_resolve('$device:D1', 'orig')").as_deref(),
                Some("U1")
            );
            assert_eq!(
                one("SELECT mp_resolve('$device:D1', 'simp')").as_deref(),
                Some("U2")
            );
            assert_eq!(
                one("SELECT mp_resolve('$device:D1')").as_deref(),
                Some("$device:D1"),
                "default project untouched"
            );
            assert_eq!(
                one("SELECT string_agg(x, ',' ORDER BY x) FROM mp_cluster('U1', 'orig') x")
                    .as_deref(),
                Some("$device:D1,U1")
            );
            assert_eq!(
                one("SELECT string_agg(x, ',' ORDER BY x) FROM mp_cluster('U2', 'simp') x")
                    .as_deref(),
                Some("$device:D1,U2")
            );
        }

        // ---- The JSON API ----

        fn state() -> String {
            one("SELECT md5(coalesce(string_agg(format('%s|%s|%s', project_id, distinct_id, canonical_id), ',' ORDER BY 1), '')) \
             || (SELECT count(*) FROM identity_merge.merge_log WHERE project_id = 1) FROM identity_merge.identities WHERE project_id = 1")
        .unwrap()
        }

        fn call(f: &str, body: &str) -> serde_json::Value {
            Spi::get_one_with_args::<pgrx::JsonB>(&format!("SELECT {f}($1::jsonb)"), &[body.into()])
                .unwrap()
                .unwrap()
                .0
        }

        const ANON: &str = "3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b";

        #[pg_test]
        fn identity_api_success_and_replay() {
            let body =
                format!(r#"{{"$identified_id": "U1", "$anon_id": "{ANON}", "$token": "default"}}"#);
            assert_eq!(
                call("mp_identity_create", &body),
                serde_json::json!({"status": 1})
            );
            assert_eq!(
                call("mp_identity_create", &body),
                serde_json::json!({"status": 1}),
                "replay"
            );
            assert_eq!(
                call(
                    "mp_identity_create_alias",
                    r#"{"alias": "A1", "distinct_id": "U1", "$token": "default"}"#
                )["status"],
                1
            );
            assert_eq!(
                call(
                    "mp_identity_merge",
                    r#"{"$distinct_ids": ["U1", 777], "$token": "default"}"#
                )["status"],
                1
            );
            assert_eq!(
                one("SELECT mp_resolve('777')").as_deref(),
                Some("U1"),
                "numbers are ids as text"
            );
            assert_eq!(
                one(&format!("SELECT mp_resolve('{ANON}')")).as_deref(),
                Some("U1")
            );
        }

        #[pg_test]
        fn identity_api_bad_bodies_answer_status_0_and_change_nothing() {
            run(&format!("SELECT mp_identify('U1', '{ANON}')"));
            let taken =
                format!(r#"{{"$identified_id": "U2", "$anon_id": "{ANON}", "$token": "default"}}"#);
            let cases: Vec<(&str, &str, &str)> = vec![
            ("mp_identity_create", r#"{"$anon_id": "x", "$token": "default"}"#, "errMalformedEvent: $identified_id is missing"),
            ("mp_identity_create", r#"{"$identified_id": "U", "$anon_id": "x"}"#, "errMalformedEvent: $token is missing"),
            ("mp_identity_create", r#"{"$identified_id": true, "$anon_id": "x", "$token": "default"}"#, "errMalformedEvent: $identified_id must be a string, not a boolean"),
            ("mp_identity_create", r#"{"$identified_id": "U", "$anon_id": {"a": 1}, "$token": "default"}"#, "errMalformedEvent: $anon_id must be a string, not an object"),
            ("mp_identity_create", r#"{"$identified_id": "U", "$anon_id": "x", "$token": 12}"#, "errMalformedEvent: $token must be a string, not a number"),
            ("mp_identity_create", r#"{"$identified_id": "U", "$anon_id": "x", "$token": "nope"}"#, "unknown project token \"nope\""),
            ("mp_identity_create", r#"{"$identified_id": null, "$anon_id": "x", "$token": "default"}"#, "errNullID: identified_id is NULL"),
            ("mp_identity_create", r#"{"$identified_id": "U", "$anon_id": "not-uuid", "$token": "default"}"#, "errAnonDistinctIdNonGUIDForm"),
            ("mp_identity_create", &taken, "errAnonDistinctIdAssignedAlready"),
            ("mp_identity_create", r#"["not", "an", "object"]"#, "errMalformedEvent: body must be an object, not an array"),
            ("mp_identity_create", r#""just a string""#, "errMalformedEvent: body must be an object"),
            ("mp_identity_create_alias", r#"{"alias": "U1", "distinct_id": "U1", "$token": "default"}"#, "errSameIDs"),
            ("mp_identity_create_alias", r#"{"alias": "   ", "distinct_id": "U1", "$token": "default"}"#, "errInvalidID"),
            ("mp_identity_create_alias", r#"{"alias": "undefined", "distinct_id": "U1", "$token": "default"}"#, "errInvalidID"),
            ("mp_identity_merge", r#"{"$distinct_ids": ["a"], "$token": "default"}"#, "errMalformedEvent: $distinct_ids must hold exactly 2 ids, not 1"),
            ("mp_identity_merge", r#"{"$distinct_ids": ["a", "b", "c"], "$token": "default"}"#, "errMalformedEvent: $distinct_ids must hold exactly 2 ids, not 3"),
            ("mp_identity_merge", r#"{"$distinct_ids": "a,b", "$token": "default"}"#, "errMalformedEvent: $distinct_ids must be an array"),
            ("mp_identity_merge", r#"{"$distinct_ids": ["a", false], "$token": "default"}"#, "errMalformedEvent: $distinct_ids[1] must be a string"),
            ("mp_track", r#"{"event": "$identify", "properties": {"$identified_id": "U"}}"#, "errMalformedEvent: properties.token is missing"),
            ("mp_track", r#"{"properties": {"token": "default"}}"#, "errMalformedEvent: event is missing"),
            ("mp_track", r#"{"event": "$identify", "properties": {"token": "default", "$identified_id": "U"}}"#, "errMalformedEvent: properties.$anon_id is missing"),
            ("mp_track", r#"{"event": "$merge", "properties": {"token": "default", "$distinct_ids": [1, 2, 3]}}"#, "exactly 2"),
            ("mp_track", r#"{"event": "x", "properties": {"token": "zzz"}}"#, "unknown project token"),
            ("mp_track", r#"42"#, "errMalformedEvent: payload must be an event object or an array of them, not a number"),
        ];
            for (f, body, want) in cases {
                let before = state();
                let got = call(f, body);
                assert_eq!(got["status"], 0, "{f}({body}) -> {got}");
                let error = got["error"].as_str().unwrap_or_default();
                assert!(
                    error.starts_with(want) || error.contains(want),
                    "{f}({body}): got {error:?}, want {want:?}"
                );
                assert_eq!(state(), before, "{f}({body}) changed state");
            }
            // a simplified project refuses the identity endpoints
            run("SELECT mp_create_project('simple', 'simplified')");
            let got = call(
                "mp_identity_merge",
                r#"{"$distinct_ids": ["a", "b"], "$token": "simple"}"#,
            );
            assert_eq!(got["status"], 0);
            assert!(got["error"].as_str().unwrap().contains("Simplified"));
        }

        #[pg_test]
        fn track_arrays_give_per_event_results_and_record_refusals() {
            let payload = format!(
                r#"[{{"event": "$identify", "properties": {{"token": "default", "distinct_id": "U5", "$identified_id": "U5", "$anon_id": "{ANON}"}}}},
                {{"event": "Page View", "properties": {{"token": "default", "distinct_id": "U5"}}}},
                {{"event": "$create_alias", "properties": {{"token": "default", "alias": "U5", "distinct_id": "U5"}}}},
                {{"event": "$merge", "properties": {{"token": "default", "$distinct_ids": ["U5", "U6"]}}}}]"#
            );
            let got = call("mp_track", &payload);
            assert_eq!(got["status"], 0);
            let statuses: Vec<i64> = got["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["status"].as_i64().unwrap())
                .collect();
            assert_eq!(statuses, [1, 1, 0, 1]);
            assert!(got["results"][2]["error"]
                .as_str()
                .unwrap()
                .starts_with("errSameIDs"));
            assert_eq!(one("SELECT mp_resolve('U6')").as_deref(), Some("U5"));
            assert_eq!(one("SELECT reason_code || '|' || (source_row->>'event') FROM identity_merge.rejections WHERE project_id = 1").as_deref(), Some("errSameIDs|$create_alias"));
            // too many events in one call
            let huge = format!(
                "[{}]",
                vec![r#"{"event": "x", "properties": {"token": "default"}}"#; 2001].join(",")
            );
            let got = call("mp_track", &huge);
            assert_eq!(got["status"], 0);
            assert!(got["error"].as_str().unwrap().contains("2001 events"));
            // deeply nested JSON is answered, not raised
            let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
            let got = call("mp_track", &deep);
            assert_eq!(got["status"], 0, "{got}");
        }

        #[pg_test]
        fn track_simplified_events() {
            run("SELECT mp_create_project('tok', 'simplified')");
            let got = call(
                "mp_track",
                r#"[{"event": "a", "properties": {"token": "tok", "$device_id": "D1"}},
                                       {"event": "b", "properties": {"token": "tok", "$device_id": "D1", "$user_id": "U1"}},
                                       {"event": "c", "properties": {"token": "tok", "$device_id": "D1", "$user_id": "U2"}},
                                       {"event": "$identify", "properties": {"token": "tok", "$identified_id": "U2", "$anon_id": "$device:D1"}}]"#,
            );
            let statuses: Vec<i64> = got["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["status"].as_i64().unwrap())
                .collect();
            assert_eq!(statuses, [1, 1, 0, 1], "{got}");
            assert!(got["results"][2]["error"]
                .as_str()
                .unwrap()
                .starts_with("errDeviceLinkedToOtherUser"));
            assert_eq!(
                one("SELECT mp_resolve('$device:D1', 'tok')").as_deref(),
                Some("U1")
            );
            assert_eq!(
            one("SELECT string_agg(reason_code, ',' ORDER BY rejection_id) FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'tok'").as_deref(),
            Some("errDeviceLinkedToOtherUser,errIgnoredInSimplified")
        );
            // an identity event is ignored as such but stays an ordinary event: its device and
            // user link, as in the trigger
            let got = call(
                "mp_track",
                r#"{"event": "$identify", "properties": {"token": "tok", "$device_id": "D5", "$user_id": "U5"}}"#,
            );
            assert_eq!(got, serde_json::json!({"status": 1}));
            assert_eq!(
                one("SELECT mp_resolve('$device:D5', 'tok')").as_deref(),
                Some("U5")
            );
        }
    }
}

/// Tests that need several real sessions at once. They start the pgrx-tests PostgreSQL through
/// `run_test` and then open their own connections to it; their data is committed, so each
/// uses a project of its own.
#[cfg(test)]
mod sessions {
    use std::collections::HashMap;
    use std::sync::{Arc, Barrier};

    fn connect() -> postgres::Client {
        pgrx_tests::run_test("smoke", None, crate::pg_test::postgresql_conf_options()).unwrap();
        pgrx_tests::client().unwrap().0
    }

    /// The first column of the one row `sql` returns.
    fn scalar<T: for<'a> postgres::types::FromSql<'a>>(c: &mut postgres::Client, sql: &str) -> T {
        c.query_one(sql, &[]).unwrap().get(0)
    }

    fn find(parent: &mut HashMap<String, String>, x: &str) -> String {
        let p = parent.get(x).cloned().unwrap_or_else(|| x.to_string());
        if p == x {
            return p;
        }
        let r = find(parent, &p);
        parent.insert(x.to_string(), r.clone());
        r
    }

    /// Asserts the project's clusters equal the partition implied by `joins`, and that no id
    /// is in two clusters and every cluster's size and canonical agree with its members.
    fn check_partition(c: &mut postgres::Client, project: &str, joins: &[(String, String)]) {
        let mut parent = HashMap::new();
        for (a, b) in joins {
            let (ra, rb) = (find(&mut parent, a), find(&mut parent, b));
            if ra != rb {
                parent.insert(ra, rb);
            }
        }
        let rows = c
            .query(
                "SELECT i.distinct_id, i.canonical_id FROM identity_merge.identities i \
                 JOIN identity_merge.projects p USING (project_id) WHERE p.token = $1",
                &[&project],
            )
            .unwrap();
        let db: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let ids: Vec<String> = parent
            .keys()
            .cloned()
            .chain(parent.values().cloned())
            .collect();
        for x in &ids {
            for y in &ids {
                let same_model = find(&mut parent, x) == find(&mut parent, y);
                let same_db = db.get(x) == db.get(y) && db.contains_key(x);
                assert_eq!(
                    same_model, same_db,
                    "{x} and {y}: model says together={same_model}"
                );
            }
        }
        let bad: i64 = c
            .query_one(
                "SELECT count(*) FROM identity_merge.clusters c JOIN identity_merge.projects p USING (project_id) \
                 WHERE p.token = $1 AND (c.size <> (SELECT count(*) FROM identity_merge.identities i \
                    WHERE i.project_id = c.project_id AND i.canonical_id = c.canonical_id) \
                 OR NOT EXISTS (SELECT 1 FROM identity_merge.identities i WHERE i.project_id = c.project_id \
                    AND i.distinct_id = c.canonical_id AND i.canonical_id = c.canonical_id))",
                &[&project],
            )
            .unwrap()
            .get(0);
        assert_eq!(bad, 0);
    }

    #[test]
    fn two_sessions_merging_overlapping_clusters() {
        let mut setup = connect();
        setup
            .batch_execute("SELECT mp_create_project('conc2')")
            .unwrap();
        let rounds = 300;
        let barrier = Arc::new(Barrier::new(2));
        let workers: Vec<_> = (0..2)
            .map(|w| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut c = pgrx_tests::client().unwrap().0;
                    let mut done = Vec::new();
                    let mut seed: u64 = 0x9e3779b97f4a7c15 ^ w as u64;
                    let mut next = || {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed
                    };
                    barrier.wait();
                    for _ in 0..rounds {
                        // small pool so both sessions keep touching the same clusters, with the
                        // arguments in both orders
                        let a = format!("id{}", next() % 30);
                        let b = format!("id{}", next() % 30);
                        match c.query_one("SELECT mp_merge($1, $2, 'conc2')", &[&a, &b]) {
                            Ok(_) => done.push((a, b)),
                            Err(e) => panic!("session {w}: merge({a}, {b}) failed: {e}"),
                        }
                    }
                    done
                })
            })
            .collect();
        let mut joins = Vec::new();
        for w in workers {
            joins.extend(w.join().unwrap());
        }
        assert_eq!(joins.len(), 2 * rounds);
        check_partition(&mut setup, "conc2", &joins);
    }

    #[test]
    fn crossing_transactions_get_a_clear_refusal_never_a_deadlock_error() {
        let mut setup = connect();
        setup
            .batch_execute("SELECT mp_create_project('cross')")
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let plans = [(("p", "q"), ("s", "p")), (("r", "s"), ("q", "r"))];
        let workers: Vec<_> = plans
            .into_iter()
            .map(|(first, second)| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let mut c = pgrx_tests::client().unwrap().0;
                    c.batch_execute("BEGIN").unwrap();
                    c.query_one("SELECT mp_merge($1, $2, 'cross')", &[&first.0, &first.1])
                        .unwrap();
                    barrier.wait();
                    let r =
                        c.query_one("SELECT mp_merge($1, $2, 'cross')", &[&second.0, &second.1]);
                    let outcome = match r {
                        Ok(_) => {
                            c.batch_execute("COMMIT").unwrap();
                            Ok(vec![first, second])
                        }
                        Err(e) => {
                            let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                            let msg = e
                                .as_db_error()
                                .map(|d| d.message().to_string())
                                .unwrap_or_default();
                            c.batch_execute("ROLLBACK").unwrap();
                            Err((code, msg))
                        }
                    };
                    outcome
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        let mut joins = Vec::new();
        for r in &results {
            match r {
                Ok(pairs) => {
                    joins.extend(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())))
                }
                Err((code, msg)) => {
                    assert_eq!(code, "40001", "a refusal, not a deadlock error: {msg}");
                    assert!(msg.contains("concurrent merges"), "{msg}");
                }
            }
        }
        assert!(
            results.iter().any(|r| r.is_ok()),
            "at least one transaction commits"
        );
        check_partition(&mut setup, "cross", &joins);
    }

    /// One bulk INSERT whose rows join clusters ($merge, $identify) between ordinary rows: the
    /// stamp cache keeps its entries across the backend's own joins (redirecting absorbed
    /// canonicals), so every row must still get exactly what mp_resolve said at its turn, which
    /// a second project replays one call at a time. A rolled-back savepoint takes its joins
    /// (and the redirects) away.
    #[test]
    fn own_joins_in_a_bulk_insert_stamp_like_resolve_at_each_row() {
        let mut c = connect();
        c.batch_execute(
            "SELECT mp_create_project(p) FROM unnest(ARRAY['own', 'own_ref']) p; \
             SELECT mp_set_project_setting(p, 'anon_id_format', 'any') FROM unnest(ARRAY['own', 'own_ref']) p; \
             SELECT mp_merge(a, b, p) FROM unnest(ARRAY['own', 'own_ref']) p, \
                 (VALUES ('u1', 'd1'), ('u2', 'd2'), ('u3', 'd3')) v(a, b); \
             CREATE TABLE own_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text); \
             SELECT mp_attach('own_ev', 'own')",
        )
        .unwrap();
        let merge = |a: &str, b: &str| serde_json::json!({"$distinct_ids": [a, b]});
        let identify =
            |user: &str, anon: &str| serde_json::json!({"$identified_id": user, "$anon_id": anon});
        let page = serde_json::json!({});
        // (distinct_id, event, properties)
        let rows: Vec<(&str, &str, serde_json::Value)> = vec![
            ("d1", "Page", page.clone()),
            ("d2", "Page", page.clone()),
            ("x", "Page", page.clone()),
            ("u3", "Page", page.clone()),
            ("u1", "$merge", merge("d1", "d2")),
            ("d1", "Page", page.clone()),
            ("d2", "Page", page.clone()),
            ("u2", "Page", page.clone()),
            ("u1", "$identify", identify("u1", "x")),
            ("x", "Page", page.clone()),
            ("u3", "$merge", merge("d3", "x")),
            ("d2", "Page", page.clone()),
            ("x", "Page", page.clone()),
            ("d3", "Page", page.clone()),
            ("z", "Page", page.clone()),
            ("z", "$merge", merge("z", "zz")),
            ("zz", "Page", page.clone()),
            ("z", "Page", page.clone()),
        ];
        // The reference: each identity event as its own call, each row's answer from mp_resolve.
        let mut expected = Vec::new();
        for (id, event, props) in &rows {
            match *event {
                "$merge" => {
                    let ids = props["$distinct_ids"].as_array().unwrap();
                    let (a, b) = (ids[0].as_str().unwrap(), ids[1].as_str().unwrap());
                    c.query_one("SELECT mp_merge($1, $2, 'own_ref')", &[&a, &b])
                        .unwrap();
                }
                "$identify" => {
                    let (user, anon) = (
                        props["$identified_id"].as_str().unwrap(),
                        props["$anon_id"].as_str().unwrap(),
                    );
                    c.query_one("SELECT mp_identify($1, $2, 'own_ref')", &[&user, &anon])
                        .unwrap();
                }
                _ => {}
            }
            let r: String = c
                .query_one("SELECT mp_resolve($1, 'own_ref')", &[id])
                .unwrap()
                .get(0);
            expected.push(r);
        }
        // The same rows in one statement, in order, through the trigger.
        let values: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(i, (id, event, props))| {
                format!(
                    "({}, '{}', '{}', '{}'::jsonb)",
                    i + 1,
                    id,
                    event,
                    props.to_string().replace('\'', "''")
                )
            })
            .collect();
        c.batch_execute(&format!(
            "INSERT INTO own_ev (n, distinct_id, event, properties) VALUES {}",
            values.join(", ")
        ))
        .unwrap();
        let got: Vec<String> = c
            .query("SELECT canonical_id FROM own_ev ORDER BY n", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            got, expected,
            "row by row, as mp_resolve answered at each turn"
        );
        let refused: i64 = scalar(&mut c, "SELECT count(*) FROM identity_merge.rejections r JOIN identity_merge.projects p USING (project_id) WHERE p.token = 'own'");
        assert_eq!(refused, 0);
        // Both projects ended with the same clusters.
        let clusters = |c: &mut postgres::Client, p: &str| -> Vec<(String, String)> {
            c.query(
                "SELECT distinct_id, canonical_id FROM identity_merge.identities i \
                 JOIN identity_merge.projects p USING (project_id) WHERE p.token = $1 ORDER BY 1",
                &[&p],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
        };
        assert_eq!(clusters(&mut c, "own"), clusters(&mut c, "own_ref"));

        // A savepoint rolled back takes its join away, and the cache forgets it.
        let x = expected[12].clone();
        c.batch_execute(
            "BEGIN; INSERT INTO own_ev (n, distinct_id, event) VALUES (101, 'y', 'Page'); \
             SAVEPOINT s; \
             INSERT INTO own_ev (n, distinct_id, event, properties) VALUES \
                 (102, 'u1', '$identify', '{\"$identified_id\": \"x\", \"$anon_id\": \"y\"}'), \
                 (103, 'y', 'Page', '{}'); \
             ROLLBACK TO s; \
             INSERT INTO own_ev (n, distinct_id, event) VALUES (104, 'y', 'Page'), (105, 'x', 'Page'); \
             COMMIT",
        )
        .unwrap();
        let got: Vec<(i32, String)> = c
            .query(
                "SELECT n, canonical_id FROM own_ev WHERE n > 100 ORDER BY n",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            got,
            vec![(101, "y".to_string()), (104, "y".to_string()), (105, x)],
            "the rolled-back join left no trace in the stamps"
        );
    }

    /// A transaction that applies many identity operations stops taking cluster locks (which
    /// stay in the shared lock table until commit) and locks its project instead; the
    /// project's other writers wait for it, other projects do not.
    #[test]
    fn many_operations_in_one_transaction_lock_the_project_not_every_cluster() {
        let mut a = connect();
        let mut b = pgrx_tests::client().unwrap().0;
        a.batch_execute(
            "SELECT mp_create_project('many'); SELECT mp_create_project('many_other'); \
             SELECT mp_set_project_setting('many', 'anon_id_format', 'any'); \
             CREATE TABLE many_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text); \
             SELECT mp_attach('many_ev', 'many')",
        )
        .unwrap();
        a.batch_execute(
            "SET identity_merge.cluster_locks_per_transaction = 10; BEGIN; \
             INSERT INTO many_ev (n, distinct_id, event, properties) \
             SELECT g, 'user' || g, '$identify', \
                    jsonb_build_object('$identified_id', 'user' || g, '$anon_id', 'anon' || g) \
               FROM generate_series(1, 200) g",
        )
        .unwrap();
        let locks: Vec<(i32, String)> = a
            .query(
                "SELECT objsubid::int, mode FROM pg_locks \
                  WHERE locktype = 'advisory' AND pid = pg_backend_pid() ORDER BY 1, 2",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let clusters = locks.iter().filter(|(sub, _)| *sub == 1).count();
        assert!(clusters <= 10, "cluster locks stop at the limit: {locks:?}");
        assert!(
            locks.contains(&(3, "ExclusiveLock".to_string())),
            "the project is locked: {locks:?}"
        );
        // Another writer of the project waits; one of another project does not.
        b.batch_execute("SET lock_timeout = '300ms'").unwrap();
        let err = b
            .batch_execute("SELECT mp_identify('someone', 'anon-x', 'many')")
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "55P03", "{err}");
        b.batch_execute("SELECT mp_merge('p', 'q', 'many_other')")
            .unwrap();
        a.batch_execute("COMMIT").unwrap();
        b.batch_execute("SELECT mp_identify('someone', 'anon-x', 'many')")
            .unwrap();
        let joined: i64 = scalar(
            &mut b,
            "SELECT count(*) FROM many_ev WHERE mp_resolve('anon' || n, 'many') = 'user' || n",
        );
        assert_eq!(joined, 200, "every operation of the transaction applied");
        let violations: i64 = scalar(&mut b, "SELECT count(*) FROM mp_check('many')");
        assert_eq!(violations, 0);
    }

    /// The trigger keeps what it worked out about a table from one statement to the next; a
    /// change of the table, of the project or of the session setting must still be seen by the
    /// very next statement.
    #[test]
    fn single_row_statements_see_table_project_and_setting_changes() {
        let mut c = connect();
        c.batch_execute(
            "SELECT mp_create_project('reuse'); \
             SELECT mp_merge('ru', 'rd', 'reuse'); \
             CREATE TABLE reuse_ev (n int, distinct_id text, event text, properties jsonb, canonical_id text); \
             SELECT mp_attach('reuse_ev', 'reuse', create_index => false); \
             INSERT INTO reuse_ev (n, distinct_id) VALUES (1, 'rd'); \
             INSERT INTO reuse_ev (n, distinct_id) VALUES (2, 'rd')",
        )
        .unwrap();
        // The canonical column moves to another attribute number.
        c.batch_execute(
            "ALTER TABLE reuse_ev DROP COLUMN canonical_id; \
             ALTER TABLE reuse_ev ADD COLUMN canonical_id text; \
             INSERT INTO reuse_ev (n, distinct_id) VALUES (3, 'rd')",
        )
        .unwrap();
        let stamp: Option<String> = scalar(&mut c, "SELECT canonical_id FROM reuse_ev WHERE n = 3");
        assert_eq!(stamp.as_deref(), Some("ru"), "stamped into the new column");
        // The session setting: a non-UUID anon id is refused, then accepted.
        let identify = |c: &mut postgres::Client, n: i32, anon: &str| {
            c.execute(
                "INSERT INTO reuse_ev (n, distinct_id, event, properties) \
                 VALUES ($1, 'ru', '$identify', jsonb_build_object('$identified_id', 'ru', '$anon_id', $2::text))",
                &[&n, &anon],
            )
            .unwrap();
        };
        identify(&mut c, 4, "not-a-uuid-1");
        c.batch_execute("SET identity_merge.anon_id_format = 'any'")
            .unwrap();
        identify(&mut c, 5, "not-a-uuid-2");
        let resolved: Vec<String> = c
            .query(
                "SELECT mp_resolve(a, 'reuse') FROM unnest(ARRAY['not-a-uuid-1', 'not-a-uuid-2']) a",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(resolved, vec!["not-a-uuid-1", "ru"]);
        // A project setting changed by this session applies to the next statement.
        c.batch_execute("SELECT mp_set_project_setting('reuse', 'max_cluster_size', '3')")
            .unwrap();
        identify(&mut c, 6, "not-a-uuid-3");
        let refused: String = scalar(
            &mut c,
            "SELECT reason_code FROM identity_merge.rejections WHERE id_b = 'not-a-uuid-3'",
        );
        assert_eq!(refused, "errManyIDs", "the new limit (3) applies at once");
    }

    #[test]
    fn a_merge_committed_elsewhere_reaches_the_next_statement_of_a_stamping_session() {
        let mut loader = connect();
        loader
            .batch_execute(
                "SELECT mp_create_project('stale'); \
                 CREATE TABLE stale_ev (n int, distinct_id text, canonical_id text); \
                 SELECT mp_attach('stale_ev', 'stale'); \
                 INSERT INTO stale_ev VALUES (1, 'x', NULL), (2, 'y', NULL)",
            )
            .unwrap();
        // the loader's backend now has x and y in its stamp cache
        let mut other = pgrx_tests::client().unwrap().0;
        other
            .batch_execute("SELECT mp_merge('y', 'x', 'stale')")
            .unwrap();
        loader
            .batch_execute("INSERT INTO stale_ev VALUES (3, 'x', NULL)")
            .unwrap();
        let stamp: String = scalar(&mut loader, "SELECT canonical_id FROM stale_ev WHERE n = 3");
        assert_eq!(stamp, "y", "the next statement sees the committed merge");
        // a merge in an open transaction of the loader itself, then its rollback
        loader.batch_execute("BEGIN; SELECT mp_merge('z', 'x', 'stale'); INSERT INTO stale_ev VALUES (4, 'x', NULL)").unwrap();
        let stamp: String = scalar(&mut loader, "SELECT canonical_id FROM stale_ev WHERE n = 4");
        assert_eq!(stamp, "z", "own uncommitted merge is seen");
        loader
            .batch_execute("ROLLBACK; INSERT INTO stale_ev VALUES (5, 'x', NULL)")
            .unwrap();
        let stamp: String = scalar(&mut loader, "SELECT canonical_id FROM stale_ev WHERE n = 5");
        assert_eq!(stamp, "y", "a rolled-back merge leaves the cache");
        // earlier rows were stamped before the merge: mp_restamp fixes exactly those
        let changed: i64 = scalar(&mut loader, "SELECT mp_restamp('stale_ev')");
        assert_eq!(changed, 1, "row 1 (x) was stamped before the merge");
        let wrong: i64 = scalar(&mut loader, "SELECT count(*) FROM stale_ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id, 'stale')");
        assert_eq!(wrong, 0);
    }

    #[test]
    fn resolve_keeps_the_callers_snapshot_and_project_changes_are_seen() {
        let mut a = connect();
        let mut b = pgrx_tests::client().unwrap().0;
        a.batch_execute("SELECT mp_create_project('snap')").unwrap();
        let resolve = |c: &mut postgres::Client, id: &str| -> String {
            c.query_one("SELECT mp_resolve($1, 'snap')", &[&id])
                .unwrap()
                .get(0)
        };
        a.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .unwrap();
        assert_eq!(resolve(&mut a, "m2"), "m2");
        b.batch_execute("SELECT mp_merge('m1', 'm2', 'snap')")
            .unwrap();
        assert_eq!(
            resolve(&mut a, "m2"),
            "m2",
            "a repeatable-read transaction keeps its snapshot"
        );
        a.batch_execute("COMMIT").unwrap();
        assert_eq!(
            resolve(&mut a, "m2"),
            "m1",
            "the next transaction sees the merge"
        );
        // a project created, and a setting changed, by another session are seen at once
        b.batch_execute("SELECT mp_create_project('late')").unwrap();
        let r: String = scalar(&mut a, "SELECT mp_resolve('x', 'late')");
        assert_eq!(r, "x");
        a.batch_execute("SELECT mp_merge('p', 'q', 'late')")
            .unwrap();
        b.batch_execute("SELECT mp_set_project_setting('late', 'max_cluster_size', '2')")
            .unwrap();
        let err = a
            .batch_execute("SELECT mp_merge('p', 'r', 'late')")
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "54000", "the new limit applies");
        // the session setting is read at each call, even with the project cached
        let err = a
            .batch_execute("SELECT mp_identify('u', 'not-a-uuid', 'snap')")
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "55000");
        a.batch_execute("SET identity_merge.anon_id_format = 'any'; SELECT mp_identify('u', 'not-a-uuid', 'snap')").unwrap();
    }

    /// 8 sessions for a bounded time: random identify / alias / merge on overlapping ids, and
    /// event rows (with $merge rows) into an attached table. Afterwards mp_check is clean, no
    /// client saw a deadlock or serialization error, and the clusters equal what the committed
    /// operations imply.
    #[test]
    fn stress_eight_sessions() {
        let mut setup = connect();
        setup
            .batch_execute(
                "SELECT mp_create_project('stress'), mp_set_project_setting('stress', 'anon_id_format', 'any'), \
                 mp_set_project_setting('stress', 'max_cluster_size', '40'); \
                 CREATE TABLE stress_ev (n bigserial, distinct_id text, event text, properties jsonb, canonical_id text); \
                 SELECT mp_attach('stress_ev', 'stress')",
            )
            .unwrap();
        let seconds: u64 = std::env::var("IDENTITY_MERGE_STRESS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(8);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let workers: Vec<_> = (0..8u64)
            .map(|w| {
                std::thread::spawn(move || {
                    let mut c = pgrx_tests::client().unwrap().0;
                    let mut seed: u64 = 0x9E3779B97F4A7C15 ^ (w + 1).wrapping_mul(0xBF58476D1CE4E5B9);
                    let mut next = |m: u64| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed % m
                    };
                    let (mut joins, mut ops, mut refused, mut rows) = (Vec::new(), 0u64, 0u64, 0u64);
                    let mut unexpected = Vec::new();
                    while std::time::Instant::now() < deadline {
                        let a = format!("s{}", next(300));
                        let b = format!("s{}", next(300));
                        if next(5) == 0 {
                            // events: a page view and a $merge row, one INSERT
                            let sql = format!(
                                "INSERT INTO stress_ev (distinct_id, event, properties) VALUES \
                                 ('{a}', 'Page View', '{{}}'), ('{a}', '$merge', '{{\"$distinct_ids\": [\"{a}\", \"{b}\"]}}')"
                            );
                            match c.batch_execute(&sql) {
                                Ok(()) => rows += 2,
                                Err(e) => unexpected.push(format!("{sql}: {e}")),
                            }
                            continue;
                        }
                        let op = ["mp_identify", "mp_alias", "mp_merge"][next(3) as usize];
                        ops += 1;
                        match c.query_one(&format!("SELECT {op}($1, $2, 'stress')"), &[&a, &b]) {
                            Ok(_) => joins.push((a, b)),
                            Err(e) => {
                                let code = e.code().map(|c| c.code().to_string()).unwrap_or_default();
                                if code == "55000" || code == "54000" {
                                    refused += 1;
                                } else {
                                    let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
                                    unexpected.push(format!("{op}({a}, {b}): {code} {msg}"));
                                }
                            }
                        }
                    }
                    (joins, ops, refused, rows, unexpected)
                })
            })
            .collect();
        let (mut joins, mut ops, mut refused, mut rows, mut unexpected) =
            (Vec::new(), 0, 0, 0, Vec::new());
        for w in workers {
            let (j, o, r, n, u) = w.join().unwrap();
            joins.extend(j);
            ops += o;
            refused += r;
            rows += n;
            unexpected.extend(u);
        }
        assert!(
            unexpected.is_empty(),
            "errors a client had to handle: {unexpected:?}"
        );
        // $merge rows the trigger applied are joins too; the refused ones are in rejections
        let applied: Vec<(String, String)> = setup
            .query(
                "SELECT e.properties->'$distinct_ids'->>0, e.properties->'$distinct_ids'->>1 FROM stress_ev e \
                 WHERE e.event = '$merge' AND NOT EXISTS (SELECT 1 FROM identity_merge.rejections r \
                   WHERE r.source_table = 'stress_ev'::regclass AND r.source_row->'properties' = e.properties)",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        joins.extend(applied);
        check_partition(&mut setup, "stress", &joins);
        let violations: i64 = scalar(&mut setup, "SELECT count(*) FROM mp_check('stress')");
        assert_eq!(violations, 0);
        setup
            .batch_execute("SELECT mp_restamp('stress_ev')")
            .unwrap();
        let stale: i64 = scalar(&mut setup, "SELECT count(*) FROM stress_ev WHERE canonical_id IS DISTINCT FROM mp_resolve(distinct_id, 'stress')");
        assert_eq!(stale, 0);
        let summary =
            format!("stress: 8 sessions, {seconds}s: {ops} operations ({refused} refused), {rows} event rows, {violations} violations");
        println!("{summary}");
        // tools/test.sh prints it (cargo test keeps a passing test's output to itself)
        let _ = std::fs::write("target/stress-summary.txt", summary + "\n");
    }

    #[test]
    fn resolve_in_parallel_workers() {
        let mut c = connect();
        c.batch_execute(
            "SELECT mp_create_project('par'); \
             SELECT mp_merge('pu' || g, 'pd' || g, 'par') FROM generate_series(1, 200) g; \
             CREATE TABLE par_ev AS SELECT 'pd' || (1 + n % 200) AS distinct_id FROM generate_series(1, 200000) n; \
             ANALYZE par_ev; \
             SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; \
             SET max_parallel_workers_per_gather = 2",
        )
        .unwrap();
        let plan: Vec<String> = c
            .query("EXPLAIN SELECT count(*) FROM par_ev WHERE mp_resolve(distinct_id, 'par') LIKE 'pu%'", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            plan.iter().any(|l| l.contains("Gather")),
            "a parallel plan: {plan:?}"
        );
        let n: i64 = scalar(
            &mut c,
            "SELECT count(*) FROM par_ev WHERE mp_resolve(distinct_id, 'par') LIKE 'pu%'",
        );
        assert_eq!(n, 200000);
    }
}
