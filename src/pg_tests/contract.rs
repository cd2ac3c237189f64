//! The contract's functions: every refusal and bad input with its SQLSTATE and reason code (and
//! nothing changed), projects and modes, facts shared with the SQL, chains, identified merges,
//! the size limit and replays.

#[pgrx::pg_schema]
mod tests {
    #[allow(unused_imports)]
    use crate::pg_tests::support::*;
    use pgrx::prelude::*;

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

    /// Facts stated in both languages agree: the SQL defaults and CHECKs of projects, the
    /// modes and formats the SQL functions and the setting accept, and the Rust constants.
    #[pg_test]
    fn sql_defaults_and_checks_equal_the_rust_constants() {
        use crate::core::rules::{DEFAULT_BLOCKED_IDS, DEFAULT_MAX_CLUSTER_SIZE};
        use crate::core::{AnonIdFormat, Mode};
        run("SELECT mp_create_project('facts')");
        let col = |c: &str| {
            one(&format!(
                "SELECT {c}::text FROM identity_merge.projects WHERE token = 'facts'"
            ))
            .unwrap()
        };
        assert_eq!(
            col("max_cluster_size"),
            DEFAULT_MAX_CLUSTER_SIZE.to_string()
        );
        assert_eq!(col("mode"), Mode::Original.as_str());
        assert_eq!(col("anon_id_format"), AnonIdFormat::UuidV4.as_str());
        let blocked: Vec<String> =
            serde_json::from_str(&col("array_to_json(blocked_ids)")).unwrap();
        assert_eq!(blocked, DEFAULT_BLOCKED_IDS);
        for mode in Mode::ALL {
            let token = format!("facts-{}", mode.as_str());
            assert_eq!(
                err(&format!(
                    "SELECT mp_create_project('{token}', '{}')",
                    mode.as_str()
                )),
                "ok"
            );
            // The table's CHECK accepts it too (the function is not the only gate).
            assert_eq!(
                err(&format!(
                    "UPDATE identity_merge.projects SET mode = '{}' WHERE token = 'facts'",
                    mode.as_str()
                )),
                "ok"
            );
        }
        assert!(err("SELECT mp_create_project('facts-x', 'nonesuch')").starts_with("22023"));
        assert!(
            err("UPDATE identity_merge.projects SET mode = 'nonesuch' WHERE token = 'facts'")
                .starts_with("23514")
        );
        for format in AnonIdFormat::ALL {
            assert_eq!(
                err(&format!(
                    "SELECT mp_set_project_setting('facts', 'anon_id_format', '{}')",
                    format.as_str()
                )),
                "ok"
            );
            assert_eq!(
                err(&format!(
                    "SET LOCAL identity_merge.anon_id_format = '{}'",
                    format.as_str()
                )),
                "ok"
            );
        }
        assert!(
            err("SELECT mp_set_project_setting('facts', 'anon_id_format', 'nonesuch')")
                .starts_with("22023")
        );
        assert!(err(
            "UPDATE identity_merge.projects SET anon_id_format = 'nonesuch' WHERE token = 'facts'"
        )
        .starts_with("23514"));
        // Settings of the extension's prefix are reserved: a misspelt one is an error.
        assert!(err("SET identity_merge.anon_id_fromat = 'any'").starts_with("42602"));
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
