//! Helpers shared by the `#[pg_test]`s (which run inside the test server, in a transaction
//! rolled back at the end).

use pgrx::prelude::*;

pub const A1: &str = "3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b";
pub const A2: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

pub fn one(sql: &str) -> Option<String> {
    Spi::get_one::<String>(sql).expect(sql)
}

pub fn run(sql: &str) {
    Spi::run(sql).expect(sql)
}

/// The first column of every row, as text.
pub fn rows(sql: &str) -> Vec<String> {
    Spi::connect(|c| {
        c.select(sql, None, &[])
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
            .collect()
    })
}

/// Runs `sql`, returning "ok" or "SQLSTATE message" of the error it raised.
pub fn err(sql: &str) -> String {
    run(
        "CREATE OR REPLACE FUNCTION pg_temp.im_try(q text) RETURNS text LANGUAGE plpgsql AS $$ \
         BEGIN EXECUTE q; RETURN 'ok'; \
         EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ' ' || SQLERRM; END $$",
    );
    Spi::get_one_with_args::<String>("SELECT pg_temp.im_try($1)", &[sql.into()])
        .unwrap()
        .unwrap()
}

/// A fingerprint of one project's identity state (settings, ids, clusters, merge log), to
/// prove that a refusal changed nothing. Keyed on the project: other tests' committed data
/// (the session tests use projects of their own) never enters it.
pub fn state_of(token: &str) -> String {
    Spi::get_one_with_args::<String>(
        "WITH p AS (SELECT * FROM identity_merge.projects WHERE token = $1) \
         SELECT (SELECT md5(coalesce(string_agg(format('%s|%s|%s|%s', p.mode, p.max_cluster_size, p.anon_id_format, p.blocked_ids), ','), '')) FROM p) || \
                (SELECT md5(coalesce(string_agg(format('%s|%s', distinct_id, canonical_id), ',' ORDER BY distinct_id), '')) \
                   FROM identity_merge.identities WHERE project_id = (SELECT project_id FROM p)) || \
                (SELECT md5(coalesce(string_agg(format('%s|%s|%s', canonical_id, size, identified), ',' ORDER BY canonical_id), '')) \
                   FROM identity_merge.clusters WHERE project_id = (SELECT project_id FROM p)) || \
                (SELECT count(*) FROM identity_merge.merge_log WHERE project_id = (SELECT project_id FROM p))::text",
        &[token.into()],
    )
    .unwrap()
    .unwrap()
}

/// `state_of` the default project, which these tests use.
pub fn state() -> String {
    state_of("default")
}

pub fn resolve(id: &str) -> String {
    Spi::get_one_with_args::<String>("SELECT mp_resolve($1)", &[id.into()])
        .unwrap()
        .unwrap()
}

pub fn resolve_in(id: &str, project: &str) -> String {
    Spi::get_one_with_args::<String>("SELECT mp_resolve($1, $2)", &[id.into(), project.into()])
        .unwrap()
        .unwrap()
}

/// Checks the structural invariants of the default project.
pub fn assert_consistent() {
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

// ---- An attached event table `ev` in the default project (doc flows as rows) ----

/// Creates `ev` and attaches it (anon ids of any form, as the doc's tables use).
pub fn make_events() {
    run("SET LOCAL identity_merge.anon_id_format = 'any'");
    run("CREATE TABLE ev (n int, distinct_id text, event text, properties jsonb, canonical_id text)");
    run("SELECT mp_attach('ev')");
}

pub fn stamps() -> Vec<String> {
    Spi::connect(|c| {
        c.select("SELECT canonical_id FROM ev ORDER BY n", None, &[])
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap_or_default())
            .collect()
    })
}

pub fn identify_row(n: i32, user: &str, device: &str) -> String {
    format!(
        "INSERT INTO ev VALUES ({n}, '{user}', '$identify', '{{\"$identified_id\": \"{user}\", \"$anon_id\": \"$device:{device}\"}}')"
    )
}

pub fn page(n: i32, device: &str) -> String {
    format!("INSERT INTO ev VALUES ({n}, '$device:{device}', 'Page View', '{{}}')")
}
