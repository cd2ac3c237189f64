//! The seed's HTTP API shapes: the Identity API bodies and mp_track payloads.

#[pgrx::pg_schema]
mod tests {
    #[allow(unused_imports)]
    use crate::pg_tests::support::*;
    use pgrx::prelude::*;

    // ---- The JSON API ----

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
