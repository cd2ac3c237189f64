//! A statement's identity events applied in memory and written when it ends (batch.rs), seen
//! from real sessions: when the write happens (end of an INSERT, end of a COPY, before another
//! reader), what an error takes back, what other writers see, and the one refused case (a
//! batch written early by a nested subtransaction that rolled back). Data is committed, so
//! each test uses projects of its own.

fn connect() -> postgres::Client {
    pgrx_tests::run_test("smoke", None, crate::pg_test::postgresql_conf_options()).unwrap();
    pgrx_tests::client().unwrap().0
}

fn scalar<T: for<'a> postgres::types::FromSql<'a>>(c: &mut postgres::Client, sql: &str) -> T {
    c.query_one(sql, &[]).unwrap().get(0)
}

/// A project with anon_id_format 'any' and an attached table `<name>_ev`.
fn project(c: &mut postgres::Client, name: &str) {
    c.batch_execute(&format!(
        "SELECT mp_create_project('{name}'); \
         SELECT mp_set_project_setting('{name}', 'anon_id_format', 'any'); \
         CREATE TABLE {name}_ev (n int CHECK (n < 1000000), distinct_id text, event text, properties jsonb, canonical_id text); \
         SELECT mp_attach('{name}_ev', '{name}')"
    ))
    .unwrap();
}

/// Rows `from..=to` of a stream: device `d<n>` views a page, then `$identify`s as `u<n % 7>`,
/// then views again (as the device).
fn stream(table: &str, from: i32, to: i32) -> String {
    format!(
        "INSERT INTO {table} (n, distinct_id, event, properties) {}",
        stream_rows(from, to)
    )
}

fn stream_rows(from: i32, to: i32) -> String {
    format!(
        "SELECT 3 * g + k, CASE k WHEN 1 THEN 'u' || (g % 7) ELSE 'd' || g END, \
                CASE k WHEN 1 THEN '$identify' ELSE 'Page View' END, \
                CASE k WHEN 1 THEN jsonb_build_object('$identified_id', 'u' || (g % 7), '$anon_id', 'd' || g) ELSE '{{}}' END \
           FROM generate_series({from}, {to}) g, generate_series(0, 2) k ORDER BY 1"
    )
}

fn joins(c: &mut postgres::Client, token: &str) -> i64 {
    scalar(
        c,
        &format!(
            "SELECT count(*) FROM identity_merge.merge_log l JOIN identity_merge.projects p USING (project_id) \
              WHERE p.token = '{token}'"
        ),
    )
}

/// Rows whose stamp differs from what resolving their distinct_id at their place in the
/// stream gives: a device's second view (after its $identify) is stamped with the user.
fn wrong_stamps(c: &mut postgres::Client, table: &str) -> i64 {
    scalar(
        c,
        &format!(
            "SELECT count(*) FROM {table} WHERE canonical_id IS DISTINCT FROM \
               CASE WHEN n % 3 = 0 THEN distinct_id ELSE 'u' || ((n / 3) % 7) END"
        ),
    )
}

#[test]
fn a_batch_is_written_when_its_insert_or_copy_ends() {
    let mut a = connect();
    let mut b = pgrx_tests::client().unwrap().0;
    project(&mut a, "batch_end");
    a.batch_execute("SET identity_merge.batch_threshold = 1; BEGIN")
        .unwrap();
    a.batch_execute(&stream("batch_end_ev", 1, 40)).unwrap();
    // The same transaction reads the stored graph right after the statement: written.
    assert_eq!(joins(&mut a, "batch_end"), 40);
    let mut copy = a
        .copy_in("COPY batch_end_ev (n, distinct_id, event, properties) FROM STDIN (FORMAT csv)")
        .unwrap();
    use std::io::Write;
    for g in 41..=60 {
        let user = format!("u{}", g % 7);
        writeln!(copy, "{},d{g},Page View,{{}}", 3 * g).unwrap();
        writeln!(
            copy,
            "{},{user},$identify,\"{{\"\"$identified_id\"\": \"\"{user}\"\", \"\"$anon_id\"\": \"\"d{g}\"\"}}\"",
            3 * g + 1
        )
        .unwrap();
        writeln!(copy, "{},d{g},Page View,{{}}", 3 * g + 2).unwrap();
    }
    copy.finish().unwrap();
    assert_eq!(
        joins(&mut a, "batch_end"),
        60,
        "the COPY's joins, written when it ended"
    );
    assert_eq!(wrong_stamps(&mut a, "batch_end_ev"), 0);
    // Until commit the project is held exclusively: another writer of it waits.
    b.batch_execute("SET lock_timeout = '300ms'").unwrap();
    let err = b
        .batch_execute("SELECT mp_identify('someone', 'anon-x', 'batch_end')")
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55P03", "{err}");
    // Stamping alone does not wait.
    b.batch_execute("INSERT INTO batch_end_ev VALUES (999999, 'd5', 'Page View', '{}')")
        .unwrap();
    a.batch_execute("COMMIT").unwrap();
    b.batch_execute("SELECT mp_identify('someone', 'anon-x', 'batch_end')")
        .unwrap();
    let resolved: i64 = scalar(
        &mut b,
        "SELECT count(*) FROM generate_series(1, 60) g WHERE mp_resolve('d' || g, 'batch_end') = 'u' || (g % 7)",
    );
    assert_eq!(resolved, 60);
    let violations: i64 = scalar(&mut b, "SELECT count(*) FROM mp_check('batch_end')");
    assert_eq!(violations, 0);
}

#[test]
fn a_failed_statement_takes_its_batch_with_it() {
    let mut a = connect();
    project(&mut a, "batch_fail");
    a.batch_execute("SET identity_merge.batch_threshold = 1; BEGIN; SAVEPOINT s")
        .unwrap();
    // Forty $identify rows, then a row the table's CHECK refuses: the statement fails.
    let failing = stream("batch_fail_ev", 1, 40).replace(
        "ORDER BY 1",
        "UNION ALL SELECT 1000000, 'x', 'Page View', '{}' ORDER BY 1",
    );
    let err = a.batch_execute(&failing).unwrap_err();
    assert_eq!(err.code().unwrap().code(), "23514", "{err}");
    a.batch_execute("ROLLBACK TO SAVEPOINT s").unwrap();
    a.batch_execute(&stream("batch_fail_ev", 101, 120)).unwrap();
    a.batch_execute("COMMIT").unwrap();
    assert_eq!(
        joins(&mut a, "batch_fail"),
        20,
        "only the second statement's joins"
    );
    assert_eq!(
        scalar::<i64>(
            &mut a,
            "SELECT count(*) FROM identity_merge.identities i JOIN identity_merge.projects p USING (project_id) \
              WHERE p.token = 'batch_fail' AND i.distinct_id IN ('d1', 'd40')"
        ),
        0
    );
    assert_eq!(wrong_stamps(&mut a, "batch_fail_ev"), 0);
    let violations: i64 = scalar(&mut a, "SELECT count(*) FROM mp_check('batch_fail')");
    assert_eq!(violations, 0);
}

/// A function the statement calls per row reads the graph (mp_resolve writes the batch
/// first) inside an EXCEPTION block, whose subtransaction then fails or not.
#[test]
fn a_batch_written_by_a_subtransaction_that_rolled_back_refuses_the_commit() {
    let mut a = connect();
    a.batch_execute(
        "CREATE FUNCTION batch_nested_reader(g int, token text, fail boolean) RETURNS boolean LANGUAGE plpgsql AS $$ \
         BEGIN \
           BEGIN \
             PERFORM mp_resolve('d' || g, token); \
             IF fail AND g = 20 THEN RAISE EXCEPTION 'boom'; END IF; \
           EXCEPTION WHEN raise_exception THEN NULL; \
           END; \
           RETURN true; \
         END $$; \
         SET identity_merge.batch_threshold = 1",
    )
    .unwrap();
    // The reader runs as the rows are inserted (a volatile filter above the ordered rows).
    let with_reader = |token: &str, fail: bool| {
        format!(
            "INSERT INTO {token}_ev (n, distinct_id, event, properties) \
             SELECT s.* FROM ({} OFFSET 0) s(n, d, e, p) WHERE batch_nested_reader(s.n / 3, '{token}', {fail})",
            stream_rows(1, 40)
        )
    };
    // The nested subtransactions commit: every join stays, the commit goes through.
    project(&mut a, "batch_nested_ok");
    a.batch_execute(&with_reader("batch_nested_ok", false))
        .unwrap();
    assert_eq!(joins(&mut a, "batch_nested_ok"), 40);
    assert_eq!(wrong_stamps(&mut a, "batch_nested_ok_ev"), 0);
    // One of them rolls back after writing the batch: the commit is refused (retryable), and
    // nothing of the statement stays.
    project(&mut a, "batch_nested_lost");
    let err = a
        .batch_execute(&with_reader("batch_nested_lost", true))
        .unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "40001", "{db:?}");
    assert!(db.message().contains("rolled back"), "{db:?}");
    assert_eq!(
        scalar::<i64>(&mut a, "SELECT count(*) FROM batch_nested_lost_ev"),
        0
    );
    assert_eq!(joins(&mut a, "batch_nested_lost"), 0);
    // The same inside a savepoint: released, the loss still refuses the commit; rolled back,
    // the statement's rows went with it and the commit goes through.
    project(&mut a, "batch_nested_saved");
    a.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    a.batch_execute(&with_reader("batch_nested_saved", true))
        .unwrap();
    a.batch_execute("RELEASE SAVEPOINT s").unwrap();
    let err = a.batch_execute("COMMIT").unwrap_err();
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "40001", "{db:?}");
    a.batch_execute("BEGIN; SAVEPOINT s").unwrap();
    a.batch_execute(&with_reader("batch_nested_saved", true))
        .unwrap();
    a.batch_execute("ROLLBACK TO SAVEPOINT s; COMMIT").unwrap();
    assert_eq!(
        scalar::<i64>(&mut a, "SELECT count(*) FROM batch_nested_saved_ev"),
        0
    );
    for token in ["batch_nested_ok", "batch_nested_lost", "batch_nested_saved"] {
        let violations: i64 = scalar(&mut a, &format!("SELECT count(*) FROM mp_check('{token}')"));
        assert_eq!(violations, 0, "{token}");
    }
}

/// `mp_ingest` (engine/staged.rs) beside other writers of its project: it waits for a writer
/// holding the project, holds it until commit (another identity writer waits, stamping alone
/// does not), and a writer of the same target inserting meanwhile is stamped by the trigger.
/// Afterwards every row is right and mp_check is clean.
#[test]
fn mp_ingest_runs_beside_the_trigger_and_other_writers() {
    let mut a = connect();
    let mut b = pgrx_tests::client().unwrap().0;
    project(&mut a, "ingest_conc");
    a.batch_execute(&format!(
        "CREATE TABLE ingest_conc_stage (n int, distinct_id text, event text, properties jsonb); \
         INSERT INTO ingest_conc_stage {}",
        stream_rows(1, 300)
    ))
    .unwrap();
    // b holds the project (an identity event in an open transaction): a waits for it.
    b.batch_execute("BEGIN; SELECT mp_identify('u0', 'd0', 'ingest_conc')")
        .unwrap();
    a.batch_execute("SET lock_timeout = '300ms'").unwrap();
    let err = a
        .batch_execute("SELECT mp_ingest('ingest_conc_stage', 'ingest_conc_ev')")
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55P03", "{err}");
    b.batch_execute("COMMIT").unwrap();
    a.batch_execute("SET lock_timeout = 0; BEGIN").unwrap();
    let inserted: i64 = scalar(
        &mut a,
        "SELECT rows_inserted FROM mp_ingest('ingest_conc_stage', 'ingest_conc_ev')",
    );
    assert_eq!(inserted, 900);
    // Until a commits: another identity writer of the project waits; stamping does not, and a
    // row b inserts into the same table is stamped by the trigger (as the graph stood before).
    b.batch_execute("SET lock_timeout = '300ms'").unwrap();
    let err = b
        .batch_execute("SELECT mp_identify('someone', 'anon-x', 'ingest_conc')")
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55P03", "{err}");
    b.batch_execute("INSERT INTO ingest_conc_ev VALUES (999999, 'd0', 'Page View', '{}')")
        .unwrap();
    let stamp: String = scalar(
        &mut b,
        "SELECT canonical_id FROM ingest_conc_ev WHERE n = 999999",
    );
    assert_eq!(stamp, "u0");
    a.batch_execute("COMMIT").unwrap();
    b.batch_execute("SELECT mp_identify('someone', 'anon-x', 'ingest_conc')")
        .unwrap();
    assert_eq!(joins(&mut b, "ingest_conc"), 302);
    let wrong: i64 = scalar(
        &mut b,
        "SELECT count(*) FROM ingest_conc_ev WHERE n < 999999 AND canonical_id IS DISTINCT FROM \
           CASE WHEN n % 3 = 1 THEN distinct_id ELSE 'u' || ((n / 3) % 7) END",
    );
    assert_eq!(wrong, 0, "every row has its final stamp");
    let violations: i64 = scalar(&mut b, "SELECT count(*) FROM mp_check('ingest_conc')");
    assert_eq!(violations, 0);
}
