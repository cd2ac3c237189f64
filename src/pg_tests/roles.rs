//! Least privilege (reader, writer, no grant) and search_path safety.

#[pgrx::pg_schema]
mod tests {
    #[allow(unused_imports)]
    use crate::pg_tests::support::*;
    use pgrx::prelude::*;

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
        assert!(as_role("im_none", "SELECT identity_merge._track('{}')").starts_with("42501"));
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
        assert!(as_role_stmt(
            "im_writer",
            "INSERT INTO identity_merge.merge_log (project_id, operation, id_a, id_b, kept_canonical, absorbed_canonical, moved_ids) VALUES (1, 'merge', 'a', 'b', 'a', 'b', 1)"
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
}
