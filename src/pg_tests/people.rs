//! People profiles and identity records (mp_engage, mp_profile, mp_identity_record_create):
//! refusals answered per update, ids checked as the identity path checks them, numbers that
//! cannot be represented refused at ingest, and a large `$union` folded quickly.

#[pgrx::pg_schema]
mod tests {
    #[allow(unused_imports)]
    use crate::pg_tests::support::*;
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    /// `f(body)`, `cast` the type it takes.
    fn call_as(f: &str, cast: &str, body: &str) -> Value {
        Spi::get_one_with_args::<pgrx::JsonB>(&format!("SELECT {f}($1::{cast})"), &[body.into()])
            .unwrap()
            .unwrap()
            .0
    }

    fn call(f: &str, body: &str) -> Value {
        call_as(f, "jsonb", body)
    }

    fn engage(body: &str) -> Value {
        call("mp_engage", body)
    }

    fn profile(id: &str) -> Value {
        Spi::get_one_with_args::<pgrx::JsonB>("SELECT mp_profile($1)", &[id.into()])
            .unwrap()
            .unwrap()
            .0
    }

    fn updates_of(id: &str) -> i64 {
        Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM identity_merge.profile_updates WHERE distinct_id = $1",
            &[id.into()],
        )
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn engage_time_out_of_range_is_a_refusal_of_that_update() {
        let answer = engage(
            r#"[{"$token": "default", "$distinct_id": "T1", "$set": {"a": 1}},
                {"$token": "default", "$distinct_id": "T1", "$time": 1e20, "$set": {"b": 2}},
                {"$token": "default", "$distinct_id": "T1", "$time": -1e20, "$set": {"b": 3}},
                {"$token": "default", "$distinct_id": "T1", "$time": 1700000000000, "$set": {"c": 3}}]"#,
        );
        assert_eq!(answer["status"], 0, "{answer}");
        let results = answer["results"].as_array().unwrap();
        assert_eq!(
            results
                .iter()
                .map(|r| r["status"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            [1, 0, 0, 1]
        );
        let error = results[1]["error"].as_str().unwrap();
        assert!(
            error.starts_with("errMalformedEvent: $time ") && error.contains("out of range"),
            "{error}"
        );
        assert_eq!(profile("T1"), json!({"a": 1, "c": 3}));
        // 1e400 is not "now".
        let one = engage(
            r#"{"$token": "default", "$distinct_id": "T2", "$time": 1e400, "$set": {"a": 1}}"#,
        );
        assert_eq!(one["status"], 0, "{one}");
        assert_eq!(updates_of("T2"), 0);
    }

    #[pg_test]
    fn engage_nul_is_a_refusal_of_that_update() {
        let answer = call_as(
            "identity_merge._engage",
            "text",
            r#"[{"$token": "default", "$distinct_id": "Z1", "$set": {"x": "a\u0000b"}},
                {"$token": "default", "$distinct_id": "Z1\u0000", "$set": {"x": 2}},
                {"$token": "default", "$distinct_id": "Z1", "$set": {"y": 1}}]"#,
        );
        let statuses: Vec<_> = answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].clone())
            .collect();
        assert_eq!(statuses, [json!(0), json!(0), json!(1)], "{answer}");
        assert_eq!(profile("Z1"), json!({"y": 1}));
    }

    #[pg_test]
    fn engage_refuses_the_ids_the_identity_path_refuses() {
        let long = "x".repeat(3200);
        for id in [
            "",
            "   ",
            "null",
            "undefined",
            "NULL",
            "[object Object]",
            long.as_str(),
        ] {
            let body = json!({"$token": "default", "$distinct_id": id, "$set": {"a": 1}});
            let answer = engage(&body.to_string());
            assert_eq!(answer["status"], 0, "{id:?}: {answer}");
            let error = answer["error"].as_str().unwrap();
            assert!(
                error.starts_with("errInvalidID: $distinct_id "),
                "{id:?}: {error}"
            );
            assert!(error.len() < 300, "the message cuts a long id");
            assert_eq!(updates_of(id), 0, "{id:?} stored");
        }
        // In a batch, the one bad id is refused and the others stored.
        let body = json!([{"$token": "default", "$distinct_id": long, "$set": {"a": 1}},
                          {"$token": "default", "$distinct_id": "fine", "$set": {"a": 1}}]);
        let answer = engage(&body.to_string());
        assert_eq!(answer["results"][0]["status"], 0);
        assert_eq!(answer["results"][1]["status"], 1);
        assert_eq!(updates_of("fine"), 1);
        // A project's own blocked ids count too.
        run("SELECT mp_set_project_setting('default', 'blocked_ids', '{guest-1}')");
        let answer =
            engage(r#"{"$token": "default", "$distinct_id": "Guest-1", "$set": {"a": 1}}"#);
        assert!(
            answer["error"].as_str().unwrap().contains("blocked"),
            "{answer}"
        );
    }

    #[pg_test]
    fn engage_numbers_are_exact_or_refused_never_null() {
        let add_to = |id: &str, n: &str| {
            engage(&format!(
                r#"{{"$token": "default", "$distinct_id": "{id}", "$add": {{"n": {n}}}}}"#
            ))
        };
        let add = |n: &str| add_to("N1", n);
        // Integers add exactly, beyond f64's 53 bits and beyond i64.
        assert_eq!(add("9223372036854775807")["status"], 1);
        assert_eq!(add("9223372036854775807")["status"], 1);
        assert_eq!(add("3")["status"], 1);
        assert_eq!(
            profile("N1")["n"],
            serde_json::from_str::<Value>("18446744073709551617").unwrap()
        );
        // What cannot be counted is refused, naming the property; the counter is untouched.
        for n in [
            "1e308",
            "1e400",
            "-1e400",
            "170141183460469231731687303715884105728",
        ] {
            let answer = add(n);
            assert_eq!(answer["status"], 0, "{n}: {answer}");
            assert!(
                answer["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("errMalformedEvent: $add.n "),
                "{answer}"
            );
        }
        assert_eq!(add("1")["status"], 1);
        assert_eq!(
            profile("N1")["n"],
            serde_json::from_str::<Value>("18446744073709551618").unwrap()
        );
        // The text form keeps exponents (jsonb turns 1e308 into 309 digits): refused as well.
        let text_add = |n: &str| {
            call_as(
                "identity_merge._engage",
                "text",
                &format!(r#"{{"$token": "default", "$distinct_id": "N2", "$add": {{"n": {n}}}}}"#),
            )
        };
        assert_eq!(text_add("1e308")["status"], 0);
        assert_eq!(text_add("1.5e38")["status"], 1);
        // A sum beyond what can be represented keeps the counter at its last value, and the
        // next $add goes on from it.
        assert_eq!(
            add_to("N3", "170141183460469231731687303715884105727")["status"],
            1
        );
        assert_eq!(add_to("N3", "1")["status"], 1);
        assert_eq!(
            profile("N3")["n"],
            serde_json::from_str::<Value>("170141183460469231731687303715884105727").unwrap()
        );
        assert_eq!(add_to("N3", "-7")["status"], 1);
        assert_eq!(
            profile("N3")["n"],
            serde_json::from_str::<Value>("170141183460469231731687303715884105720").unwrap()
        );
    }

    #[pg_test]
    fn a_large_union_gives_its_profile_quickly() {
        let items: Vec<String> = (0..100_000).map(|i| format!("i{i}")).collect();
        let body = json!({"$token": "default", "$distinct_id": "U100k", "$union": {"tags": items}});
        assert_eq!(engage(&body.to_string())["status"], 1);
        assert_eq!(
            engage(
                r#"{"$token": "default", "$distinct_id": "U100k", "$union": {"tags": ["i5", "new"]}}"#
            )["status"],
            1
        );
        let started = std::time::Instant::now();
        let tags = profile("U100k")["tags"].as_array().unwrap().len();
        let took = started.elapsed();
        assert_eq!(tags, 100_001);
        assert!(
            took < std::time::Duration::from_secs(5),
            "mp_profile took {took:?}"
        );
    }

    const ADDR: &str = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";

    fn record(extra: &str) -> Value {
        call(
            "mp_identity_record_create",
            &format!(r#"{{"display_name": "JP", "creator": "{ADDR}"{extra}}}"#),
        )
    }

    #[pg_test]
    fn record_ids_are_checked_as_the_identity_path_checks_them() {
        let long = "y".repeat(3200);
        for id in ["", "  ", "null", "undefined", long.as_str()] {
            let answer = record(&format!(
                r#", "distinct_id": {}, "$token": "default""#,
                json!(id)
            ));
            assert_eq!(
                (answer["status"].clone(), answer["field"].clone()),
                (json!(400), json!("distinct_id")),
                "{id:?}: {answer}"
            );
            assert!(
                answer["message"].as_str().unwrap().contains("errInvalidID"),
                "{answer}"
            );
        }
        assert_eq!(
            one("SELECT count(*)::text FROM identity_merge.identity_records").as_deref(),
            Some("0")
        );
    }

    #[pg_test]
    fn record_content_describing_another_person_is_a_conflict() {
        let first = record(r#", "distinct_id": "U1", "$token": "default""#);
        assert_eq!(first["created"], true, "{first}");
        // The same person again, or no person: the existing record.
        assert_eq!(
            record(r#", "distinct_id": "U1", "$token": "default""#)["created"],
            false
        );
        assert_eq!(record("")["created"], false);
        // Another person: a 409 naming the id that holds the content; nothing changes.
        let answer = record(r#", "distinct_id": "U2", "$token": "default""#);
        assert_eq!(answer["status"], 409, "{answer}");
        assert_eq!(answer["error"], "Conflict");
        assert_eq!(answer["field"], "distinct_id");
        assert_eq!(answer["identity_id"], first["identity_id"]);
        assert_eq!(
            answer["held_by"],
            json!({"distinct_id": "U1", "$token": "default"})
        );
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains("\"U1\"") && message.contains("\"U2\""),
            "{message}"
        );
        // Another id of the same person is the same person.
        run("SELECT mp_merge('U1', 'D1')");
        assert_eq!(
            record(r#", "distinct_id": "D1", "$token": "default""#)["created"],
            false
        );
        // The same id in another project is another person.
        run("SELECT mp_create_project('rec2')");
        assert_eq!(
            record(r#", "distinct_id": "U1", "$token": "rec2""#)["status"],
            409
        );
        assert_eq!(
            one("SELECT string_agg(distinct_id, ',') FROM identity_merge.identity_records")
                .as_deref(),
            Some("U1")
        );
        assert!(profile("U2").get("$identity_records").is_none());
        // A record with no person yet gains the first one named.
        let other = ", \"description\": \"other\"";
        assert_eq!(record(other)["created"], true);
        assert_eq!(
            record(&format!(
                r#"{other}, "distinct_id": "U3", "$token": "default""#
            ))["created"],
            false
        );
        assert_eq!(
            record(&format!(
                r#"{other}, "distinct_id": "U4", "$token": "default""#
            ))["status"],
            409
        );
    }
}
