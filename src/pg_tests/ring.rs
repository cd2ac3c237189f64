//! Other sessions' committed joins reaching a warm stamp cache through the shared ring
//! (ring.rs): what they poison is asked again, the rest stays; what is not a join (a split),
//! a transaction of too many joins, a reader too far behind, or a writer with
//! `identity_merge.publish_joins` off empty the cache as before; a
//! rolled-back join changes nothing. Seen from real sessions, each test in a database of its own.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// This backend's stamp cache, for the session tests (cache::describe).
    #[pg_extern]
    fn stamp_cache_state() -> String {
        crate::sync::cache::describe()
    }
}

#[cfg(test)]
mod sessions {
    /// Two sessions on a database of their own, so that no other test's change (whose
    /// signal would empty every cache of its database) reaches their caches.
    fn sessions(db: &str) -> (postgres::Client, postgres::Client) {
        pgrx_tests::run_test("smoke", None, crate::pg_test::postgresql_conf_options()).unwrap();
        let mut admin = pgrx_tests::client().unwrap().0;
        let port: String = scalar(&mut admin, "SELECT current_setting('port')");
        let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {db}"));
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
        let open = || {
            postgres::Config::new()
                .host("localhost")
                .port(port.parse().unwrap())
                .user(&pgrx_tests::get_pg_user())
                .dbname(db)
                .connect(postgres::NoTls)
                .unwrap()
        };
        let mut first = open();
        first
            .batch_execute("CREATE EXTENSION identity_merge")
            .unwrap();
        (first, open())
    }

    fn scalar<T: for<'a> postgres::types::FromSql<'a>>(c: &mut postgres::Client, sql: &str) -> T {
        c.query_one(sql, &[]).unwrap().get(0)
    }

    /// (caches started, poisoned answers) of the session's stamp cache.
    fn cache(c: &mut postgres::Client) -> (u64, u64) {
        let s: String = scalar(c, "SELECT tests.stamp_cache_state()");
        let field = |name: &str| -> u64 {
            s.split(' ')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} in {s}"))
                .parse()
                .unwrap()
        };
        (field("started"), field("poisoned"))
    }

    /// A project with anon_id_format 'any', an attached table `<name>_ev`, and clusters
    /// {a<k>, b<k>} for k in 1..=3 made by `other`; `loader`'s cache then holds them and
    /// 2,000 ids never seen.
    fn setup(loader: &mut postgres::Client, other: &mut postgres::Client, name: &str) {
        loader
            .batch_execute(&format!(
                "SELECT mp_create_project('{name}'); \
                 SELECT mp_set_project_setting('{name}', 'anon_id_format', 'any'); \
                 SELECT mp_set_project_setting('{name}', 'max_cluster_size', '100000'); \
                 CREATE TABLE {name}_ev (n serial, distinct_id text, canonical_id text); \
                 SELECT mp_attach('{name}_ev', '{name}')"
            ))
            .unwrap();
        other
            .batch_execute(&format!(
                "SELECT mp_merge('a' || k, 'b' || k, '{name}') FROM generate_series(1, 3) k"
            ))
            .unwrap();
        loader
            .batch_execute(&format!(
                "INSERT INTO {name}_ev (distinct_id) \
                 SELECT unnest(ARRAY['a1', 'b1', 'a2', 'b2', 'a3', 'b3', 'n1', 'n2']); \
                 INSERT INTO {name}_ev (distinct_id) SELECT 'seen' || g FROM generate_series(1, 2000) g"
            ))
            .unwrap();
    }

    /// Inserts rows of `ids` and asserts each is stamped as mp_resolve says now.
    fn stamps_right(loader: &mut postgres::Client, name: &str, ids: &[&str]) {
        let list = ids
            .iter()
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(", ");
        loader
            .batch_execute(&format!(
                "INSERT INTO {name}_ev (distinct_id) SELECT unnest(ARRAY[{list}])"
            ))
            .unwrap();
        let wrong: Vec<String> = loader
            .query(
                &format!(
                    "SELECT distinct_id || ' stamped ' || canonical_id || ', resolves to ' || mp_resolve(distinct_id, '{name}') \
                     FROM {name}_ev WHERE n > (SELECT max(n) - {} FROM {name}_ev) \
                       AND canonical_id IS DISTINCT FROM mp_resolve(distinct_id, '{name}')",
                    ids.len()
                ),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(wrong.is_empty(), "{wrong:?}");
    }

    #[test]
    fn joins_committed_elsewhere_poison_what_they_absorbed_and_keep_the_rest() {
        let (mut loader, mut other) = sessions("ring_poison");
        setup(&mut loader, &mut other, "ringa");
        let (started, _) = cache(&mut loader);
        // Two clusters become one; a new id joins a cluster; both committed elsewhere.
        other
            .batch_execute(
                "SELECT mp_merge('a1', 'a2', 'ringa'); SELECT mp_merge('a3', 'n1', 'ringa')",
            )
            .unwrap();
        stamps_right(
            &mut loader,
            "ringa",
            &["a1", "b1", "a2", "b2", "a3", "b3", "n1", "n2", "seen7"],
        );
        let (started_after, poisoned) = cache(&mut loader);
        assert_eq!(started_after, started, "the cache was kept");
        assert!(
            poisoned >= 2,
            "the absorbed canonicals are poisoned ({poisoned})"
        );
        // The loader's own joins, committed, keep its cache too (it no longer reads its own
        // signal back).
        loader
            .batch_execute("SELECT mp_merge('a1', 'n2', 'ringa')")
            .unwrap();
        stamps_right(&mut loader, "ringa", &["n2", "a1", "b3", "seen8"]);
        assert_eq!(cache(&mut loader).0, started, "own joins keep the cache");
        // A join rolled back elsewhere publishes nothing.
        let poisoned = cache(&mut loader).1;
        other
            .batch_execute("BEGIN; SELECT mp_merge('a3', 'seen9', 'ringa'); ROLLBACK")
            .unwrap();
        stamps_right(&mut loader, "ringa", &["seen9", "a3"]);
        assert_eq!(
            cache(&mut loader),
            (started, poisoned),
            "nothing reached the cache"
        );
        // What is not a join (a split) empties it, as before.
        other
            .batch_execute("SELECT mp_split('n1', 'ringa')")
            .unwrap();
        stamps_right(&mut loader, "ringa", &["n1", "a3", "b3", "a1"]);
        assert!(cache(&mut loader).0 > started, "a split empties the cache");
    }

    #[test]
    fn too_many_joins_or_a_reader_too_far_behind_empty_the_cache() {
        let (mut loader, mut other) = sessions("ring_behind");
        setup(&mut loader, &mut other, "ringb");
        let (started, _) = cache(&mut loader);
        // One transaction of more joins than the ring takes from one: it signals instead.
        let many = crate::sync::ring::MAX_PER_TRANSACTION + 10;
        other
            .batch_execute(&format!(
                "SELECT mp_merge('a1', 'x' || g, 'ringb') FROM generate_series(1, {many}) g"
            ))
            .unwrap();
        stamps_right(&mut loader, "ringb", &["x1", "a1", "b1", "b2", "seen3"]);
        let (restarted, _) = cache(&mut loader);
        assert!(
            restarted > started,
            "too many joins in one transaction empty the cache"
        );
        // Transactions of fewer joins each, more than the ring holds together, between two
        // statements of the reader: it starts over.
        for t in 0..5 {
            other
                .batch_execute(&format!(
                    "SELECT mp_merge('a2', 'y{t}_' || g, 'ringb') FROM generate_series(1, {}) g",
                    crate::sync::ring::MAX_PER_TRANSACTION
                ))
                .unwrap();
        }
        stamps_right(&mut loader, "ringb", &["y0_1", "y4_7", "a2", "b2", "seen4"]);
        assert!(
            cache(&mut loader).0 > restarted,
            "a reader behind the ring starts over"
        );
        // A few joins again: kept.
        let (now, _) = cache(&mut loader);
        other
            .batch_execute("SELECT mp_merge('a3', 'z' || g, 'ringb') FROM generate_series(1, 5) g")
            .unwrap();
        stamps_right(&mut loader, "ringb", &["z1", "z5", "a3", "b3"]);
        assert_eq!(cache(&mut loader).0, now, "back on the ring");
        // A session with identity_merge.publish_joins off signals instead.
        other
            .batch_execute(
                "SET identity_merge.publish_joins = off; SELECT mp_merge('a3', 'w1', 'ringb')",
            )
            .unwrap();
        stamps_right(&mut loader, "ringb", &["w1", "z1", "a3"]);
        assert!(
            cache(&mut loader).0 > now,
            "publish_joins = off empties the other sessions' caches"
        );
    }
}
