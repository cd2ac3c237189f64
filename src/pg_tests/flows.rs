//! The doc flows (Mixpanel's "Identifying Users" page), Original ID Merge through the functions
//! and as event rows, and Simplified ID Merge as event rows. The same flows, readable as the
//! doc's tables, are golden SQL files in tests/pg_regress.

#[pgrx::pg_schema]
mod tests {
    #[allow(unused_imports)]
    use crate::pg_tests::support::*;
    use pgrx::prelude::*;

    // ---- The doc flows of Mixpanel's "Identifying Users" page (Original ID Merge), through the functions ----

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

    // ---- Simplified ID Merge ----

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
            one("SELECT string_agg(x, ',' ORDER BY x) FROM mp_cluster('U1', 'orig') x").as_deref(),
            Some("$device:D1,U1")
        );
        assert_eq!(
            one("SELECT string_agg(x, ',' ORDER BY x) FROM mp_cluster('U2', 'simp') x").as_deref(),
            Some("$device:D1,U2")
        );
    }
}
