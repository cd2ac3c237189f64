-- identity_merge 0.1.13 -> 0.1.14 (see CHANGELOG.md): mp_ingest, a staged batch moved into an
-- attached table set-wise, with the stamping trigger's WHEN that skips its rows; the
-- maintenance worker (keep_fresh tables, Citus queues) and identity_merge.stats. Tables attached
-- before keep their trigger until mp_attach runs on them again (mp_ingest works meanwhile: the
-- trigger passes its rows through).
-- Released upgrade scripts are never edited afterwards.

-- keep_fresh (since 0.1.14): per attached table, and per project for the joins to read.
ALTER TABLE identity_merge.projects ADD COLUMN keep_fresh boolean NOT NULL DEFAULT false;
ALTER TABLE identity_merge.attachments ADD COLUMN keep_fresh boolean NOT NULL DEFAULT false;

-- Canonical ids that stopped being one (absorbed by a join, or of a split cluster) in projects
-- whose tables keep their stamps fresh (since 0.1.14), queued in the transaction that made
-- them stale and taken by the maintenance worker, which restamps the rows stamped with them.
CREATE TABLE identity_merge.stale_stamps (
    project_id integer NOT NULL,
    canonical  text COLLATE "C" NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE identity_merge.stale_stamps IS 'Stale canonical ids waiting for the maintenance worker to restamp the keep_fresh tables';

SELECT pg_catalog.pg_extension_config_dump('identity_merge.stale_stamps', '');


-- The stamping trigger's WHEN and mp_ingest (src/api/ingest.rs, src/engine/staged.rs).

CREATE FUNCTION identity_merge._stamp_wanted(events regclass) RETURNS boolean
LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', '_stamp_wanted';

CREATE FUNCTION mp_ingest(staging regclass, target regclass, empty_staging boolean DEFAULT false)
RETURNS TABLE (rows_inserted bigint, identity_events bigint, refused bigint)
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'mp_ingest_wrapper';


-- One restamp of a table at a time; the worker's restamp of given stale canonicals; keep_fresh.

CREATE FUNCTION identity_merge._lock_restamp(p_events regclass) RETURNS void
LANGUAGE sql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('identity_merge restamp ' OPERATOR(pg_catalog.||) p_events::pg_catalog.oid::pg_catalog.text, 0))
$$;

CREATE FUNCTION identity_merge._restamp_canonicals(p_events regclass, stale text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a identity_merge.attachments;
    coll text;
BEGIN
    SELECT * INTO a FROM identity_merge.attachments x WHERE x.events = p_events;
    IF NOT FOUND OR EXISTS (SELECT 1 FROM identity_merge._column_problems(p_events, a.distinct_id_column, a.canonical_column) x
                             WHERE x.code IN ('42703', '42804')) THEN
        RETURN 0;
    END IF;
    PERFORM identity_merge._lock_restamp(p_events);
    SELECT format('%I.%I', cn.nspname, c.collname) INTO coll
      FROM pg_attribute t JOIN pg_collation c ON c.oid = t.attcollation
      JOIN pg_namespace cn ON cn.oid = c.collnamespace
     WHERE t.attrelid = p_events AND t.attname = a.canonical_column;
    RETURN identity_merge._exec_as_owner(p_events, format(
        'UPDATE %1$s e SET %2$I = coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
        '    WHERE i.project_id OPERATOR(pg_catalog.=) %5$s AND i.distinct_id OPERATOR(pg_catalog.=) (e.%4$I::text COLLATE "C")), e.%4$I::text) '
        'WHERE e.%2$I OPERATOR(pg_catalog.=) ANY (%6$L::text[] COLLATE %3$s) '
        '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.=) ANY (%6$L::text[]) '
        '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.<>) coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
        '    WHERE i.project_id OPERATOR(pg_catalog.=) %5$s AND i.distinct_id OPERATOR(pg_catalog.=) (e.%4$I::text COLLATE "C")), e.%4$I::text)',
        p_events, a.canonical_column, coll, a.distinct_id_column, a.project_id, stale));
END $$;

CREATE FUNCTION identity_merge._set_keep_fresh(p_events regclass, keep_fresh boolean) RETURNS void
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE AS 'MODULE_PATHNAME', '_set_keep_fresh_wrapper';

CREATE FUNCTION mp_keep_fresh(events regclass, keep_fresh boolean DEFAULT true) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a identity_merge.attachments;
BEGIN
    PERFORM identity_merge._no_nulls('mp_keep_fresh', '{events,keep_fresh}', ARRAY[events IS NULL, keep_fresh IS NULL]);
    SELECT * INTO a FROM identity_merge.attachments x WHERE x.events = mp_keep_fresh.events;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not attached to identity_merge', events USING ERRCODE = '55000',
            HINT = 'Attach it with mp_attach first.';
    END IF;
    -- The worker's restamps find stale rows through an index on the stamp column.
    IF keep_fresh AND NOT EXISTS (SELECT 1 FROM pg_index x JOIN pg_attribute t
                     ON t.attrelid = x.indrelid AND t.attnum = x.indkey[0]
                    WHERE x.indrelid = events AND t.attname = a.canonical_column) THEN
        EXECUTE format('CREATE INDEX ON %s (%I)', events, a.canonical_column);
        RAISE NOTICE 'created an index on %(%) for the restamps of keep_fresh', events, a.canonical_column;
    END IF;
    PERFORM identity_merge._set_keep_fresh(events, keep_fresh);
END $$;

CREATE FUNCTION identity_merge._restamp_all_attached() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                WHERE e.extname = 'identity_merge');
    a record;
BEGIN
    FOR a IN SELECT x.events FROM identity_merge.attachments x
               JOIN identity_merge.projects p USING (project_id) WHERE p.mode <> 'legacy' LOOP
        EXECUTE format('SELECT %I.mp_restamp($1)', s) USING a.events;
    END LOOP;
END $$;

CREATE FUNCTION identity_merge._restamp_attached(stale text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a record;
    n bigint := 0;
BEGIN
    FOR a IN SELECT x.events FROM identity_merge.attachments x
               JOIN identity_merge.projects p USING (project_id) WHERE p.mode <> 'legacy' LOOP
        n := n + identity_merge._restamp_canonicals(a.events, stale);
    END LOOP;
    RETURN n;
END $$;

CREATE FUNCTION identity_merge._keep_fresh_projects() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stale integer[];
BEGIN
    SELECT array_agg(p.project_id) INTO stale FROM identity_merge.projects p
     WHERE p.keep_fresh AND NOT EXISTS (SELECT 1 FROM identity_merge.attachments a WHERE a.project_id = p.project_id AND a.keep_fresh);
    IF stale IS NOT NULL THEN
        UPDATE identity_merge.projects p SET keep_fresh = false WHERE p.project_id = ANY (stale);
    END IF;
END $$;


-- Statistics and the maintenance worker (src/sync/stats.rs, src/api/worker.rs).

CREATE FUNCTION identity_merge._stats()
RETURNS TABLE (project_id integer, rows_stamped bigint, events_applied bigint, events_queued bigint,
               events_refused bigint, joins bigint, splits bigint, cache_hits bigint, cache_misses bigint)
LANGUAGE c VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', '_stats_wrapper';

CREATE FUNCTION identity_merge._worker()
RETURNS TABLE (pid integer, state text, started_at timestamptz, last_apply_at timestamptz,
               last_restamp_at timestamptz, events_applied bigint, rows_restamped bigint)
LANGUAGE c VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', '_worker_wrapper';

CREATE FUNCTION identity_merge._stats_by_project()
RETURNS TABLE (project text, rows_stamped bigint, events_applied bigint, events_queued bigint,
               events_refused bigint, joins bigint, splits bigint, cache_hits bigint, cache_misses bigint,
               queue_depth bigint, queue_oldest_age interval, stale_waiting bigint, stale_oldest_age interval,
               last_apply_at timestamptz, last_restamp_at timestamptz, worker_state text, worker_pid integer)
LANGUAGE sql VOLATILE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT p.token,
       coalesce(c.rows_stamped, 0), coalesce(c.events_applied, 0), coalesce(c.events_queued, 0),
       coalesce(c.events_refused, 0), coalesce(c.joins, 0), coalesce(c.splits, 0),
       coalesce(c.cache_hits, 0), coalesce(c.cache_misses, 0),
       q.depth, q.oldest, st.waiting, st.oldest,
       w.last_apply_at, w.last_restamp_at, w.state, w.pid
  FROM identity_merge.projects p
  LEFT JOIN identity_merge._stats() c ON c.project_id OPERATOR(pg_catalog.=) p.project_id
  CROSS JOIN LATERAL (SELECT count(*) AS depth, pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) min(e.queued_at) AS oldest
                        FROM identity_merge.pending_events e WHERE e.project_id OPERATOR(pg_catalog.=) p.project_id) q
  CROSS JOIN LATERAL (SELECT count(*) AS waiting, pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) min(x.queued_at) AS oldest
                        FROM identity_merge.stale_stamps x WHERE x.project_id OPERATOR(pg_catalog.=) p.project_id) st
  CROSS JOIN identity_merge._worker() w
$$;

CREATE VIEW identity_merge.stats AS
SELECT project, rows_stamped, events_applied, events_queued, events_refused, joins, splits,
       cache_hits, cache_misses, queue_depth, queue_oldest_age, stale_waiting, stale_oldest_age,
       last_apply_at, last_restamp_at, worker_state, worker_pid
  FROM identity_merge._stats_by_project();

COMMENT ON VIEW identity_merge.stats IS 'Per project: rows stamped, identity events applied, queued, refused, joins, splits, stamp cache hits and misses, queue and stale stamps waiting, the maintenance worker';

CREATE FUNCTION mp_stats_reset() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'mp_stats_reset_wrapper';

CREATE FUNCTION identity_merge._wake_launcher() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', '_wake_launcher_wrapper';


-- Replaced: the restamp lock in one place, keep_fresh kept when tables go, mp_check's worker row,
-- mp_apply_pending's restamp in one function, the writer's new rights.

CREATE OR REPLACE FUNCTION mp_restamp(events regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a identity_merge.attachments;
    n bigint;
    coll text;
    bad record;
BEGIN
    PERFORM identity_merge._no_nulls('mp_restamp', '{events}', ARRAY[events IS NULL]);
    SELECT * INTO a FROM identity_merge.attachments x WHERE x.events = mp_restamp.events;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not attached to identity_merge', events USING ERRCODE = '55000',
            HINT = 'Attach it with mp_attach first.';
    END IF;
    -- Legacy aliases are not retroactive (Mixpanel's pre-ID-Merge rule): a stamp is final.
    IF (SELECT p.mode FROM identity_merge.projects p WHERE p.project_id = a.project_id) = 'legacy' THEN
        RAISE NOTICE 'table % belongs to a legacy project: its stamps are final (aliases are not retroactive); nothing to restamp', events;
        RETURN 0;
    END IF;
    SELECT * INTO bad FROM identity_merge._column_problems(events, a.distinct_id_column, a.canonical_column) x
     WHERE x.code IN ('42703', '42804') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot restamp %: %', events, bad.problem USING ERRCODE = '55000',
            HINT = 'Re-attach the table with mp_attach naming its current columns, or mp_detach it.';
    END IF;
    -- One restamp of a table at a time (mp_restamp and mp_restamp_all's batches): two would
    -- update the same stale rows in different orders and deadlock.
    PERFORM identity_merge._lock_restamp(events);
    -- Compare in the canonical column's own collation so its index serves the lookups, and
    -- again bytewise ("C"): under a nondeterministic collation 'keep' would match 'KEEP'.
    SELECT format('%I.%I', cn.nspname, c.collname) INTO coll
      FROM pg_attribute t JOIN pg_collation c ON c.oid = t.attcollation
      JOIN pg_namespace cn ON cn.oid = c.collnamespace
     WHERE t.attrelid = events AND t.attname = a.canonical_column;
    -- On Citus, a plain table of the coordinator cannot be updated joined with the replicated
    -- state (Citus would send the join to a worker, which has no such table): the stale ids
    -- are read first, and each row's id resolved by mp_resolve (this node's copy, read directly).
    IF identity_merge._distributed() AND NOT identity_merge._is_citus_table(events) THEN
        -- Run as the table's owner (src/owner.rs): the values are literals of the statement.
        RETURN identity_merge._exec_as_owner(events, format(
            'UPDATE %1$s e SET %2$I = %5$I.mp_resolve(e.%4$I::text, %6$L) '
            'WHERE e.%2$I OPERATOR(pg_catalog.=) ANY (%7$L::text[] COLLATE %3$s) '
            '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.=) ANY (%7$L::text[]) '
            '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.<>) %5$I.mp_resolve(e.%4$I::text, %6$L)',
            events, a.canonical_column, coll, a.distinct_id_column,
            (SELECT n.nspname FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace WHERE x.extname = 'identity_merge'),
            (SELECT p.token FROM identity_merge.projects p WHERE p.project_id = a.project_id),
            (SELECT array_agg(DISTINCT x.stale) FROM (
                 SELECT l.absorbed_canonical AS stale FROM identity_merge.merge_log l WHERE l.project_id = a.project_id
                 UNION ALL
                 SELECT r.old_canonical FROM identity_merge.retractions r WHERE r.project_id = a.project_id) x)));
    END IF;
    -- A stale stamp is a canonical id that stopped being one: absorbed by a join
    -- (merge_log.absorbed_canonical), or the canonical of a cluster that was split
    -- (retractions.old_canonical), whose rows may now belong to other people. Each row stamped
    -- with one is set to what its own distinct_id resolves to now (one primary-key probe per
    -- row), found through the index on the canonical column: the cost follows the stale rows.
    RETURN identity_merge._exec_as_owner(events, format(
        'UPDATE %1$s e SET %2$I = coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
        '    WHERE i.project_id OPERATOR(pg_catalog.=) %5$s AND i.distinct_id OPERATOR(pg_catalog.=) (e.%4$I::text COLLATE "C")), e.%4$I::text) '
        'FROM (SELECT DISTINCT x.stale FROM ('
        '        SELECT l.absorbed_canonical AS stale FROM identity_merge.merge_log l WHERE l.project_id OPERATOR(pg_catalog.=) %5$s '
        '        UNION ALL '
        '        SELECT r.old_canonical FROM identity_merge.retractions r WHERE r.project_id OPERATOR(pg_catalog.=) %5$s) x) d '
        'WHERE e.%2$I OPERATOR(pg_catalog.=) (d.stale COLLATE %3$s) '
        '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.=) d.stale '
        '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.<>) coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
        '    WHERE i.project_id OPERATOR(pg_catalog.=) %5$s AND i.distinct_id OPERATOR(pg_catalog.=) (e.%4$I::text COLLATE "C")), e.%4$I::text)',
        events, a.canonical_column, coll, a.distinct_id_column, a.project_id));
END $$;

CREATE OR REPLACE PROCEDURE mp_restamp_all(events regclass, batch_blocks integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    a identity_merge.attachments;
    p identity_merge.projects;
    bad record;
    total bigint;
    b bigint;
    n bigint;
    done bigint;
    filenode oid;
    saved record;
    targs text[];
    device text;
    usr text;
    fill text := '';
    stamp text;
BEGIN
    IF events IS NULL THEN
        RAISE EXCEPTION 'mp_restamp_all: argument events is NULL' USING ERRCODE = '22004',
            HINT = 'Name an attached event table.';
    END IF;
    IF batch_blocks IS NULL OR batch_blocks < 1 THEN
        RAISE EXCEPTION 'invalid batch_blocks: %', coalesce(batch_blocks::pg_catalog.text, 'NULL') USING ERRCODE = '22023',
            HINT = 'A positive number of heap blocks per batch (1000 blocks are about 8 MB).';
    END IF;
    SELECT * INTO a FROM identity_merge.attachments x WHERE x.events = mp_restamp_all.events;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not attached to identity_merge', events USING ERRCODE = '55000',
            HINT = 'Attach it with mp_attach first.';
    END IF;
    SELECT * INTO p FROM identity_merge.projects x WHERE x.project_id = a.project_id;
    SELECT * INTO bad FROM identity_merge._column_problems(events, a.distinct_id_column, a.canonical_column) x
     WHERE x.code IN ('42703', '42804') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot restamp %: %', events, bad.problem USING ERRCODE = '55000',
            HINT = 'Re-attach the table with mp_attach naming its current columns, or mp_detach it.';
    END IF;
    -- Rows loaded before mp_attach into a Simplified project's table may have no distinct_id:
    -- each gets the one the trigger would have given it (identity_merge._row_distinct_id, the
    -- trigger's rule), and the trigger (UPDATE OF the distinct_id) stamps it.
    IF p.mode = 'simplified' THEN
        targs := identity_merge._trigger_args(events);
        device := coalesce(nullif(targs[4], ''), '$device_id');
        usr := coalesce(nullif(targs[5], ''), '$user_id');
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute t WHERE t.attrelid = events AND t.attname = device AND t.attnum > 0 AND NOT t.attisdropped) THEN
            device := NULL;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute t WHERE t.attrelid = events AND t.attname = usr AND t.attnum > 0 AND NOT t.attisdropped) THEN
            usr := NULL;
        END IF;
        IF device IS NOT NULL OR usr IS NOT NULL THEN
            fill := pg_catalog.format(
                'UPDATE %1$s e SET %2$I = identity_merge._row_distinct_id(%3$L, %4$s, %5$s) '
                'WHERE e.%2$I IS NULL AND identity_merge._row_distinct_id(%3$L, %4$s, %5$s) IS NOT NULL',
                events, a.distinct_id_column, p.token,
                CASE WHEN device IS NULL THEN 'NULL' ELSE pg_catalog.format('e.%I::pg_catalog.text', device) END,
                CASE WHEN usr IS NULL THEN 'NULL' ELSE pg_catalog.format('e.%I::pg_catalog.text', usr) END);
        END IF;
    END IF;
    -- Legacy aliases are not retroactive (Mixpanel's pre-ID-Merge rule): a stamp is final, but a
    -- row that has none yet (loaded before mp_attach) gets its first one.
    stamp := pg_catalog.format(
        'UPDATE %1$s e SET %2$I = coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
        '    WHERE i.project_id OPERATOR(pg_catalog.=) %4$s AND i.distinct_id OPERATOR(pg_catalog.=) (e.%3$I::pg_catalog.text COLLATE "C")), e.%3$I::pg_catalog.text) '
        'WHERE %5$s',
        events, a.canonical_column, a.distinct_id_column, a.project_id,
        CASE WHEN p.mode = 'legacy' THEN pg_catalog.format('e.%I IS NULL AND e.%I IS NOT NULL', a.canonical_column, a.distinct_id_column)
             ELSE pg_catalog.format('(e.%1$I)::pg_catalog.text COLLATE "C" IS DISTINCT FROM coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
                  '    WHERE i.project_id OPERATOR(pg_catalog.=) %3$s AND i.distinct_id OPERATOR(pg_catalog.=) (e.%2$I::pg_catalog.text COLLATE "C")), e.%2$I::pg_catalog.text)',
                  a.canonical_column, a.distinct_id_column, a.project_id) END);
    -- A Citus table is an empty shell whose rows are in its shards, where a TID range finds
    -- nothing (since 0.1.8): every row is stamped by one UPDATE, which Citus runs on each shard,
    -- beside that node's copy of the identity state.
    IF identity_merge._is_citus_table(events) THEN
        n := 0;
        IF fill <> '' THEN
            n := identity_merge._exec_as_owner(events, fill);
        END IF;
        n := n + identity_merge._exec_as_owner(events, stamp);
        RAISE NOTICE 'restamp of % (a Citus table, one UPDATE over its shards): % rows changed', events, n;
        RETURN;
    END IF;
    total := pg_catalog.pg_relation_size(events) / pg_catalog.current_setting('block_size')::pg_catalog.int8;
    filenode := pg_catalog.pg_relation_filenode(events);
    -- Saved progress is of one physical table and one attachment: after a TRUNCATE, a rewrite
    -- (VACUUM FULL, CLUSTER, ALTER TABLE ... TYPE) or a detach and attach it means nothing, and
    -- the run starts over.
    SELECT * INTO saved FROM identity_merge.restamp_progress r WHERE r.events = mp_restamp_all.events;
    IF FOUND AND (saved.filenode IS DISTINCT FROM filenode OR saved.attached_at IS DISTINCT FROM a.attached_at) THEN
        RAISE NOTICE 'the saved progress of % is of an earlier table (truncated, rewritten or attached again since): starting over', events;
        DELETE FROM identity_merge.restamp_progress r WHERE r.events = mp_restamp_all.events;
    END IF;
    INSERT INTO identity_merge.restamp_progress AS r (events, next_block, blocks, filenode, attached_at)
    VALUES (mp_restamp_all.events, 0, total, filenode, a.attached_at)
    ON CONFLICT ON CONSTRAINT restamp_progress_pkey
    DO UPDATE SET blocks = greatest(r.blocks, EXCLUDED.blocks), updated_at = pg_catalog.now();
    SELECT r.next_block, r.rows_done INTO b, done FROM identity_merge.restamp_progress r WHERE r.events = mp_restamp_all.events;
    IF b > 0 THEN
        RAISE NOTICE 'resuming the restamp of % at block % of %', events, b, total;
    END IF;
    COMMIT;
    WHILE b < total LOOP
        -- One restamp of the table at a time (see mp_restamp).
        PERFORM identity_merge._lock_restamp(events);
        n := 0;
        IF fill <> '' THEN
            n := identity_merge._exec_as_owner(events, pg_catalog.format(
                '%s AND e.ctid OPERATOR(pg_catalog.>=) ''(%s,0)''::pg_catalog.tid AND e.ctid OPERATOR(pg_catalog.<) ''(%s,0)''::pg_catalog.tid',
                fill, b, b + batch_blocks));
        END IF;
        n := n + identity_merge._exec_as_owner(events, pg_catalog.format(
            '%s AND e.ctid OPERATOR(pg_catalog.>=) ''(%s,0)''::pg_catalog.tid AND e.ctid OPERATOR(pg_catalog.<) ''(%s,0)''::pg_catalog.tid',
            stamp, b, b + batch_blocks));
        b := b + batch_blocks;
        done := done + n;
        UPDATE identity_merge.restamp_progress r SET next_block = b, rows_done = done, updated_at = pg_catalog.now()
         WHERE r.events = mp_restamp_all.events;
        RAISE NOTICE 'restamp of %: blocks % of % done, % rows changed', events, least(b, total), total, done;
        COMMIT;
    END LOOP;
    DELETE FROM identity_merge.restamp_progress r WHERE r.events = mp_restamp_all.events;
    COMMIT;
END $$;

CREATE OR REPLACE FUNCTION identity_merge._unregister_attachment(p_events regclass) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p_events AND t.tgname = 'identity_merge_stamp') THEN
        RAISE EXCEPTION 'table % still has its identity_merge_stamp trigger', p_events USING ERRCODE = '55000',
            HINT = 'Use mp_detach.';
    END IF;
    DELETE FROM identity_merge.attachments a WHERE a.events = p_events;
    PERFORM identity_merge._keep_fresh_projects();
END $$;

CREATE OR REPLACE FUNCTION identity_merge._forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    forgotten bigint;
BEGIN
    DELETE FROM identity_merge.attachments a
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0
       AND a.events::pg_catalog.oid = d.objid;
    GET DIAGNOSTICS forgotten = ROW_COUNT;
    DELETE FROM identity_merge.restamp_progress r
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0
       AND r.events::pg_catalog.oid = d.objid;
    -- Only when an attached table went (a DDL statement a Citus coordinator sends to a worker
    -- runs this too, where reading the replicated projects is not allowed).
    IF forgotten > 0 THEN
        PERFORM identity_merge._keep_fresh_projects();
    END IF;
END $$;

CREATE OR REPLACE FUNCTION mp_check(project text DEFAULT 'default') RETURNS TABLE (check_name text, detail text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := (identity_merge._project(project)).project_id;
    legacy boolean := (identity_merge._project(project)).mode = 'legacy';
    a identity_merge.attachments;
    bad record;
    broken boolean;
    targs text[];
    fillable text;
    token text := (identity_merge._project(project)).token;
BEGIN
    RETURN QUERY
    SELECT 'id_without_cluster', format('id %s points at canonical %s, which has no cluster', i.distinct_id, i.canonical_id)
      FROM identity_merge.identities i
     WHERE i.project_id = pid AND NOT EXISTS (SELECT 1 FROM identity_merge.clusters c
                                               WHERE c.project_id = pid AND c.canonical_id = i.canonical_id);
    RETURN QUERY
    SELECT CASE WHEN i.distinct_id IS NULL THEN 'canonical_not_member' ELSE 'id_in_two_clusters' END,
           format('cluster %s: its canonical id %s', c.canonical_id,
                  CASE WHEN i.distinct_id IS NULL THEN 'is not one of its ids'
                       ELSE 'belongs to the cluster of ' || i.canonical_id END)
      FROM identity_merge.clusters c
      LEFT JOIN identity_merge.identities i ON i.project_id = pid AND i.distinct_id = c.canonical_id
     WHERE c.project_id = pid AND (i.distinct_id IS NULL OR i.canonical_id <> c.canonical_id);
    RETURN QUERY
    SELECT 'size_mismatch', format('cluster %s says size %s, has %s ids', c.canonical_id, c.size, m.n)
      FROM identity_merge.clusters c
      JOIN (SELECT canonical_id, count(*) AS n FROM identity_merge.identities WHERE project_id = pid GROUP BY 1) m
        ON m.canonical_id = c.canonical_id
     WHERE c.project_id = pid AND c.size <> m.n;
    RETURN QUERY SELECT l.check_name, l.detail FROM identity_merge._check_log(pid) l;
    -- Stamped rows: stale ones are fine (mp_restamp fixes them: a stamp that is an absorbed
    -- canonical or a split cluster's old one); one mp_restamp would not fix is not.
    -- On Citus: identity events that rows brought to shards, not applied yet (every node's
    -- queue when asked on the coordinator, this node's on a worker).
    IF identity_merge._distributed() AND identity_merge._on_coordinator() THEN
        RETURN QUERY SELECT 'identity_events_pending'::text,
            CASE WHEN r.success THEN format('%s identity events queued on node %s: run SELECT mp_apply_pending()', r.result, r.nodeid)
                 ELSE format('the queue of node %s could not be read: %s', r.nodeid, r.result) END
          FROM pg_catalog.run_command_on_all_nodes(format(
                 'SELECT count(*) FROM identity_merge.pending_events WHERE project_id = %s', pid)) r
         WHERE NOT r.success OR r.result <> '0';
    ELSIF has_table_privilege('identity_merge.pending_events', 'SELECT') THEN
        RETURN QUERY SELECT 'identity_events_pending'::text,
            format('%s identity events queued on this node since %s: run SELECT mp_apply_pending()', count(*), min(q.queued_at))
          FROM identity_merge.pending_events q WHERE q.project_id = pid HAVING count(*) > 0;
    END IF;
    -- keep_fresh tables with no maintenance worker running here (since 0.1.14): their stale
    -- rows wait for mp_restamp.
    IF (SELECT p.keep_fresh FROM identity_merge.projects p WHERE p.project_id = pid)
       AND NOT EXISTS (SELECT 1 FROM identity_merge._worker() w WHERE w.pid IS NOT NULL) THEN
        RETURN QUERY SELECT 'maintenance_not_running'::text,
            'tables of this project keep their stamps fresh (mp_keep_fresh) and no maintenance worker runs in this database: add identity_merge to shared_preload_libraries (docs/settings.md), or run mp_restamp'::text;
    END IF;
    -- A table whose columns no longer fit is reported, as is one the caller may not read.
    FOR a IN SELECT * FROM identity_merge.attachments x WHERE x.project_id = pid LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = a.events) THEN
            check_name := 'attachment_broken';
            detail := format('table %s: no longer exists; mp_detach it', a.events::oid);
            RETURN NEXT;
            CONTINUE;
        END IF;
        broken := false;
        FOR bad IN SELECT * FROM identity_merge._column_problems(a.events, a.distinct_id_column, a.canonical_column) LOOP
            check_name := 'attachment_broken';
            detail := format('table %s: %s', a.events, bad.problem);
            broken := true;
            RETURN NEXT;
        END LOOP;
        IF broken THEN
            CONTINUE;
        END IF;
        IF NOT (has_column_privilege(a.events, a.distinct_id_column, 'SELECT')
                AND has_column_privilege(a.events, a.canonical_column, 'SELECT')) THEN
            check_name := 'stamps_not_checked';
            detail := format('table %s: its stamps were not checked, role %s may not read columns %I and %I',
                             a.events, current_user, a.distinct_id_column, a.canonical_column);
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- Row-level security policies are the table owner's code and run as whoever reads the
        -- table: only the owner (or a role that may act as it) has its stamps checked.
        IF EXISTS (SELECT 1 FROM pg_partition_tree(a.events) pt JOIN pg_class c ON c.oid = pt.relid
                    WHERE c.relrowsecurity)
           AND NOT pg_has_role((SELECT c.relowner FROM pg_class c WHERE c.oid = a.events), 'MEMBER') THEN
            check_name := 'stamps_not_checked';
            detail := format('table %s: its stamps were not checked, it has row-level security and role %s is not its owner %s',
                             a.events, current_user, (SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = a.events));
            RETURN NEXT;
            CONTINUE;
        END IF;
        -- Rows without a stamp that the trigger would have stamped (loaded before mp_attach, or
        -- with the trigger disabled): CALL mp_restamp_all stamps them.
        fillable := '';
        IF NOT legacy AND (SELECT x.mode FROM identity_merge.projects x WHERE x.project_id = pid) = 'simplified' THEN
            targs := identity_merge._trigger_args(a.events);
            SELECT format(' OR identity_merge._row_distinct_id(%L, %s, %s) IS NOT NULL', token,
                          coalesce(max(format('e.%I::text', t.attname)) FILTER (WHERE t.attname = coalesce(nullif(targs[4], ''), '$device_id')), 'NULL'),
                          coalesce(max(format('e.%I::text', t.attname)) FILTER (WHERE t.attname = coalesce(nullif(targs[5], ''), '$user_id')), 'NULL'))
              INTO fillable
              FROM pg_attribute t WHERE t.attrelid = a.events AND t.attnum > 0 AND NOT t.attisdropped;
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT ''unstamped_rows''::text, format(''table %%s: %%s rows have no stamp (loaded before mp_attach, or with its trigger disabled): CALL mp_restamp_all(%%L)'', %1$L, c.n, %1$L) '
            'FROM (SELECT count(*) AS n FROM %1$s e WHERE e.%3$I IS NULL AND (e.%2$I IS NOT NULL%4$s)) c WHERE c.n > 0',
            a.events, a.distinct_id_column, a.canonical_column, fillable);
        IF legacy THEN
            -- Legacy stamps are final: right when the row's own id (stored before its alias) or
            -- the person it maps to (an original never stops being canonical).
            RETURN QUERY EXECUTE format(
                'SELECT ''unfixable_stamp''::text, format(''%%s row distinct_id %%s stamped %%s, which is neither itself nor %%s'', %1$L, e.%2$I, e.%3$I, coalesce(i.canonical_id, e.%2$I::text)) '
                'FROM %1$s e LEFT JOIN identity_merge.identities i '
                '  ON i.project_id = $1 AND i.distinct_id = e.%2$I::text COLLATE "C" '
                'WHERE e.%3$I IS NOT NULL AND e.%3$I::text COLLATE "C" <> coalesce(i.canonical_id, e.%2$I::text) AND e.%3$I::text COLLATE "C" <> e.%2$I::text',
                a.events, a.distinct_id_column, a.canonical_column) USING pid;
            CONTINUE;
        END IF;
        IF identity_merge._distributed() AND NOT identity_merge._is_citus_table(a.events) THEN
            -- A plain table beside the replicated state (see mp_restamp): ids resolved one by one.
            RETURN QUERY EXECUTE format(
                'SELECT ''unfixable_stamp''::text, format(''%%s row distinct_id %%s stamped %%s, resolves to %%s'', %1$L, e.%2$I, e.%3$I, r.c) '
                'FROM %1$s e CROSS JOIN LATERAL (SELECT %4$I.mp_resolve(e.%2$I::text, $2) AS c) r '
                'WHERE e.%3$I IS NOT NULL AND e.%3$I::text COLLATE "C" <> r.c '
                '  AND NOT (e.%3$I::text COLLATE "C" = ANY ($3))',
                a.events, a.distinct_id_column, a.canonical_column,
                (SELECT n.nspname FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace WHERE x.extname = 'identity_merge'))
            USING pid, project,
                  (SELECT coalesce(array_agg(x.stale), '{}') FROM (
                       SELECT l.absorbed_canonical AS stale FROM identity_merge.merge_log l WHERE l.project_id = pid
                       UNION ALL
                       SELECT r.old_canonical FROM identity_merge.retractions r WHERE r.project_id = pid) x);
            CONTINUE;
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT ''unfixable_stamp''::text, format(''%%s row distinct_id %%s stamped %%s, resolves to %%s'', %1$L, e.%2$I, e.%3$I, coalesce(i.canonical_id, e.%2$I::text)) '
            'FROM %1$s e LEFT JOIN identity_merge.identities i '
            '  ON i.project_id = $1 AND i.distinct_id = e.%2$I::text COLLATE "C" '
            'WHERE e.%3$I IS NOT NULL AND e.%3$I::text COLLATE "C" <> coalesce(i.canonical_id, e.%2$I::text) '
            '  AND NOT EXISTS (SELECT 1 FROM identity_merge.merge_log l WHERE l.project_id = $1 '
            '                  AND l.absorbed_canonical = e.%3$I::text COLLATE "C") '
            '  AND NOT EXISTS (SELECT 1 FROM identity_merge.retractions x WHERE x.project_id = $1 '
            '                  AND x.old_canonical = e.%3$I::text COLLATE "C")',
            a.events, a.distinct_id_column, a.canonical_column) USING pid;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION mp_grant_writer(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'identity_merge');
        propagation text := identity_merge._grant_on_workers('mp_grant_writer', role);
BEGIN
    PERFORM identity_merge._no_nulls('mp_grant_writer', '{role}', ARRAY[role IS NULL]);
    EXECUTE format('SELECT %I.mp_grant_reader(%L::regrole)', s, role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_identify(text, text, text), %1$I.mp_alias(text, text, text), '
                   '%1$I.mp_merge(text, text, text), %1$I.mp_merge(text[], text), '
                   '%1$I.mp_identity_create(jsonb), %1$I.mp_identity_create_alias(jsonb), %1$I.mp_identity_merge(jsonb), '
                   '%1$I.mp_track(jsonb), %1$I.mp_segment(jsonb, text), identity_merge._segment(text, text), '
                   '%1$I.mp_engage(jsonb), identity_merge._engage(text), %1$I.mp_refresh_people(text), '
                   '%1$I.mp_identity_record_create(jsonb), identity_merge._identity_record_create(text), '
                   'identity_merge._identity_create(text), identity_merge._identity_create_alias(text), '
                   'identity_merge._identity_merge(text), identity_merge._track(text), '
                   '%1$I.mp_attach(regclass, text, name, name, boolean, name, name, boolean), %1$I.mp_detach(regclass), %1$I.mp_restamp(regclass), '
                   '%1$I.mp_ingest(regclass, regclass, boolean), %1$I.mp_keep_fresh(regclass, boolean), identity_merge._set_keep_fresh(regclass, boolean), '
                   '%1$I.mp_split(text, text), %1$I.mp_unjoin(bigint), '
                   'identity_merge.stamp_event(), identity_merge._register_attachment(regclass, integer, name, name), '
                   'identity_merge._unregister_attachment(regclass) TO %2$s', s, role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_schedule_restamp(regclass, interval), '
                   '%1$I.mp_unschedule_restamp(regclass) TO %2$s', s, role);
    -- Issue 29 (sql/mixpanel.sql): insert_id deduplication of the tables the role attached.
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_dedup_insert_id(regclass, boolean, name), '
                   'identity_merge.dedup_insert_id() TO %2$s', s, role);
    -- The restamp of every row commits per batch, so it runs as the caller, who keeps its
    -- progress (row-level security limits that to tables the caller owns).
    EXECUTE format('GRANT EXECUTE ON PROCEDURE %1$I.mp_restamp_all(regclass, integer) TO %2$s', s, role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON identity_merge.restamp_progress TO %s', role);
    IF propagation IS NOT NULL THEN
        PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', propagation, true);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION mp_apply_pending() RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint := 0;
    failed text;
BEGIN
    IF NOT identity_merge._distributed() THEN
        RETURN identity_merge._apply_queue();
    END IF;
    SELECT coalesce(sum(r.result::bigint) FILTER (WHERE r.success), 0),
           string_agg(format('node %s: %s', r.nodeid, r.result), '; ') FILTER (WHERE NOT r.success)
      INTO n, failed
      FROM pg_catalog.run_command_on_all_nodes('SELECT identity_merge._apply_queue()') r;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'mp_apply_pending: a node could not apply its queue: %', failed USING ERRCODE = '40001',
            HINT = 'What was applied is committed and the rest is still queued: run mp_apply_pending() again.';
    END IF;
    IF n > 0 THEN
        PERFORM identity_merge._restamp_all_attached();
    END IF;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION mp_distribute_events(events regclass, distribution_column text,
                                     colocate_with text DEFAULT 'default') RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    old text;
    has_trigger boolean;
    def text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'mp_distribute_events needs Citus, which is not installed in database %', current_database()
            USING ERRCODE = '0A000', HINT = 'On a single server an event table needs no distribution: mp_attach is enough.';
    END IF;
    IF NOT identity_merge._distributed() THEN
        RAISE EXCEPTION 'the identity state is not distributed yet' USING ERRCODE = '55000',
            HINT = 'Run SELECT mp_distribute() on the coordinator first: the shards'' triggers read the identity state on their own node.';
    END IF;
    -- This function's search_path is pinned: the table to co-locate with must be qualified.
    IF colocate_with NOT IN ('default', 'none') AND pg_catalog.to_regclass(colocate_with) IS NULL THEN
        RAISE EXCEPTION 'no table % to co-locate % with', colocate_with, events USING ERRCODE = '42P01',
            HINT = 'Name it with its schema (public.events_staging), or pass ''default'' or ''none''.';
    END IF;
    old := pg_catalog.current_setting('citus.enable_unsafe_triggers', true);
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- The rows already in the table were stamped, and their identity events applied, when they
    -- were inserted: Citus's copy of them into the shards must not fire the trigger again (it
    -- would apply them twice, and on a worker it runs before the shard's metadata is there).
    -- The trigger's WHEN (mp_ingest's, one server only) names this node's table: the shards
    -- get the trigger without it.
    SELECT pg_catalog.pg_get_triggerdef(t.oid) INTO def FROM pg_catalog.pg_trigger t
     WHERE t.tgrelid = events AND t.tgname = 'identity_merge_stamp' AND t.tgqual IS NOT NULL;
    IF def IS NOT NULL THEN
        EXECUTE pg_catalog.format('DROP TRIGGER identity_merge_stamp ON %s', events);
        EXECUTE pg_catalog.regexp_replace(def, ' WHEN \(identity_merge\._stamp_wanted\(.*\)\) EXECUTE ', ' EXECUTE ');
    END IF;
    has_trigger := EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = events
                             AND t.tgname = 'identity_merge_stamp' AND t.tgenabled <> 'D');
    IF has_trigger THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s DISABLE TRIGGER identity_merge_stamp', events);
    END IF;
    PERFORM pg_catalog.create_distributed_table(events, distribution_column, colocate_with => colocate_with);
    IF has_trigger THEN
        EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE TRIGGER identity_merge_stamp', events);
    END IF;
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', coalesce(old, 'off'), true);
END $$;


-- mp_attach takes keep_fresh and puts the trigger with its WHEN: a new signature, so the old
-- function goes, its grants carried over.
CREATE TEMP TABLE identity_merge_attach_grantees AS
    SELECT a.grantee::regrole AS grantee
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid = 'mp_attach(regclass, text, name, name, boolean, name, name)'::pg_catalog.regprocedure
       AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner;
DROP FUNCTION mp_attach(regclass, text, name, name, boolean, name, name);

CREATE FUNCTION mp_attach(events regclass, project text DEFAULT 'default',
                          distinct_id_column name DEFAULT 'distinct_id',
                          canonical_column name DEFAULT 'canonical_id',
                          create_index boolean DEFAULT true,
                          device_id_column name DEFAULT '',
                          user_id_column name DEFAULT '',
                          keep_fresh boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
    bad record;
    col name;
    typ regtype;
    unsafe_triggers text;
BEGIN
    PERFORM identity_merge._no_nulls('mp_attach', '{events,project,distinct_id_column,canonical_column,create_index,device_id_column,user_id_column,keep_fresh}',
        ARRAY[events IS NULL, project IS NULL, distinct_id_column IS NULL, canonical_column IS NULL, create_index IS NULL,
              device_id_column IS NULL, user_id_column IS NULL, keep_fresh IS NULL]);
    p := identity_merge._project(project);
    IF distinct_id_column = canonical_column THEN
        RAISE EXCEPTION 'the canonical column must differ from the distinct_id column (%)', quote_ident(distinct_id_column)
            USING ERRCODE = '22023', HINT = 'The trigger keeps the distinct_id as sent and writes the canonical id beside it.';
    END IF;
    -- Citus takes triggers on its tables only with citus.enable_unsafe_triggers on (for the DDL
    -- alone): the trigger is this function's, so is the setting (docs/scaling.md).
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        unsafe_triggers := current_setting('citus.enable_unsafe_triggers', true);
        PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    END IF;
    -- The previous trigger goes first: the columns are checked as this call names them (a
    -- refusal below rolls the drop back).
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = events AND t.tgname = 'identity_merge_stamp') THEN
        EXECUTE format('DROP TRIGGER identity_merge_stamp ON %s', events);
    END IF;
    SELECT * INTO bad FROM identity_merge._column_problems(events, distinct_id_column, canonical_column) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot attach %: %', events, bad.problem USING ERRCODE = bad.code, HINT = bad.hint;
    END IF;
    -- Columns holding the device and the user id under other names (a Segment / RudderStack
    -- table's anonymous_id and user_id): text, and present.
    FOR col IN SELECT c FROM unnest(ARRAY[device_id_column, user_id_column]) c WHERE c <> '' LOOP
        SELECT a.atttypid::regtype INTO typ FROM pg_attribute a
         WHERE a.attrelid = events AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'cannot attach %: column % does not exist', events, quote_ident(col) USING ERRCODE = '42703',
                HINT = 'device_id_column and user_id_column name the columns holding the device id and the user id.';
        END IF;
        IF NOT identity_merge._column_type_ok('id', typ) THEN
            RAISE EXCEPTION 'cannot attach %: column % is of type %, not text', events, quote_ident(col), typ
                USING ERRCODE = '42804', HINT = 'Ids are text; use a text or varchar column.';
        END IF;
    END LOOP;
    -- UPDATE OF the distinct_id too (also INSERT ... ON CONFLICT DO UPDATE): a changed
    -- distinct_id gets its stamp, so no row keeps a stamp mp_restamp could not fix.
    -- WHEN: mp_ingest's own rows are inserted stamped, without the trigger (since 0.1.14).
    -- (Not on Citus, where mp_ingest does not run: a shard's copy of the WHEN would name a
    -- table of another node.)
    EXECUTE format('CREATE TRIGGER identity_merge_stamp BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW '
                   '%sEXECUTE FUNCTION identity_merge.stamp_event(%L, %L, %L%s)',
                   distinct_id_column, events,
                   CASE WHEN identity_merge._distributed() THEN ''
                        ELSE format('WHEN (identity_merge._stamp_wanted(%L::regclass)) ', events::oid) END,
                   p.token, distinct_id_column, canonical_column,
                   CASE WHEN device_id_column = '' AND user_id_column = '' THEN ''
                        ELSE format(', %L, %L', device_id_column, user_id_column) END);
    -- keep_fresh's restamps need the index too (since 0.1.14).
    IF (create_index OR keep_fresh) AND NOT EXISTS (SELECT 1 FROM pg_index x JOIN pg_attribute a
                     ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
                    WHERE x.indrelid = events AND a.attname = canonical_column) THEN
        EXECUTE format('CREATE INDEX ON %s (%I)', events, canonical_column);
    END IF;
    IF unsafe_triggers IS NOT NULL THEN
        PERFORM set_config('citus.enable_unsafe_triggers', unsafe_triggers, true);
    END IF;
    PERFORM identity_merge._register_attachment(events, p.project_id, distinct_id_column, canonical_column);
    PERFORM identity_merge._set_keep_fresh(events, keep_fresh);
END $$;

DO $$
DECLARE
    r regrole;
BEGIN
    FOR r IN SELECT grantee FROM identity_merge_attach_grantees LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_attach(regclass, text, name, name, boolean, name, name, boolean), '
                                  'mp_ingest(regclass, regclass, boolean), mp_keep_fresh(regclass, boolean), '
                                  'identity_merge._set_keep_fresh(regclass, boolean) TO %s', r);
    END LOOP;
END $$;
DROP TABLE identity_merge_attach_grantees;

COMMENT ON FUNCTION mp_attach(regclass, text, name, name, boolean, name, name, boolean) IS 'Puts the stamping trigger on an event table';

COMMENT ON FUNCTION mp_keep_fresh(regclass, boolean) IS 'Turns on (or off) the maintenance worker''s restamps of an attached table after each join or split';

COMMENT ON FUNCTION mp_ingest(regclass, regclass, boolean) IS 'Moves a staged batch into an attached table: its identity events applied in order, then every row inserted with its final stamp in one statement';


REVOKE ALL ON FUNCTION mp_ingest(regclass, regclass, boolean), identity_merge._stamp_wanted(regclass),
    identity_merge._lock_restamp(regclass), identity_merge._restamp_canonicals(regclass, text[]),
    identity_merge._set_keep_fresh(regclass, boolean), mp_keep_fresh(regclass, boolean), identity_merge._restamp_all_attached(),
    identity_merge._stats(), identity_merge._worker(), mp_stats_reset(), identity_merge._wake_launcher(),
    identity_merge._keep_fresh_projects(), identity_merge._restamp_attached(text[]), identity_merge._stats_by_project(),
    mp_attach(regclass, text, name, name, boolean, name, name, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION identity_merge._stamp_wanted(regclass), identity_merge._lock_restamp(regclass) TO PUBLIC;
GRANT EXECUTE ON FUNCTION identity_merge._stats(), identity_merge._worker(), identity_merge._stats_by_project() TO PUBLIC;
-- Readers granted before this version read the new view and table too.
DO $$
DECLARE
    r regrole;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee::regrole
               FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
              WHERE c.oid = 'identity_merge.projects'::pg_catalog.regclass AND a.privilege_type = 'SELECT'
                AND a.grantee <> 0 AND a.grantee <> c.relowner LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON identity_merge.stats, identity_merge.stale_stamps TO %s', r);
    END LOOP;
END $$;
SELECT identity_merge._wake_launcher();


-- Issue 29, coming from Mixpanel: mp_import_mixpanel, mp_dedup_insert_id and the view
-- identity_merge.mixpanel_identity_mappings, with the text sql/mixpanel.sql gives a fresh install,
-- and the insert_id deduplication trigger (src/api/dedup.rs); mp_grant_writer (above) grants
-- mp_dedup_insert_id to roles it is run for.
-- The import itself (src/engine/mixpanel.rs): the mapping's rows checked and joined in memory
-- (src/core/mixpanel.rs), written in bulk; people rows stored as $set updates. Each table is
-- read as its owner (src/pg/owner.rs) through the query given, which mp_import_mixpanel builds
-- after checking the columns.
CREATE FUNCTION identity_merge._import_mixpanel(project text, p_mappings regclass, mapping_sql text,
                                                p_people regclass, people_sql text)
RETURNS TABLE (mappings bigint, joins bigint, unchanged bigint, invalid bigint, mapped_twice bigint,
               chains bigint, conflicts bigint, ids_written bigint, clusters_written bigint,
               people bigint, people_refused bigint)
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', '_import_mixpanel_wrapper';

-- The columns of an export table mp_import_mixpanel reads: each present, of a built-in type it
-- reads ('id': text or varchar; 'json': jsonb, json or text), else the error naming the column
-- and the documented shape.
CREATE FUNCTION identity_merge._mixpanel_columns(p_table regclass, what text, cols name[], kinds text[])
RETURNS void
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k integer;
    typ regtype;
BEGIN
    FOR k IN 1 .. cardinality(cols) LOOP
        SELECT a.atttypid::regtype INTO typ FROM pg_attribute a
         WHERE a.attrelid = p_table AND a.attname = cols[k] AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'cannot import % as Mixpanel %: column % does not exist', p_table, what, quote_ident(cols[k])
                USING ERRCODE = '42703',
                      HINT = format('A Mixpanel %s table has the columns %s (its data pipeline''s shape).', what, array_to_string(cols, ', '));
        END IF;
        IF NOT identity_merge._column_type_ok(CASE kinds[k] WHEN 'json' THEN 'properties' ELSE 'id' END, typ) THEN
            RAISE EXCEPTION 'cannot import % as Mixpanel %: column % is of type %, not %', p_table, what, quote_ident(cols[k]), typ,
                  CASE kinds[k] WHEN 'json' THEN 'jsonb, json or text' ELSE 'text' END
                USING ERRCODE = '42804',
                      HINT = CASE kinds[k] WHEN 'json' THEN 'Load the export''s JSON into a jsonb (or json, text) column.'
                                  ELSE 'Ids are text: load them into a text or varchar column.' END;
        END IF;
    END LOOP;
END $$;

-- An export's events table: attached to the project (when it is not yet) so that rows landing
-- later are stamped as they come, its device_id and user_id columns read as the device and user
-- id (Simplified), and the rows already there stamped as mp_restamp_all stamps them, as the
-- table's owner. Returns how many rows it stamped.
CREATE FUNCTION identity_merge._mixpanel_events(p_project text, p_events regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                WHERE e.extname = 'identity_merge');
    p identity_merge.projects := identity_merge._project(p_project);
    a identity_merge.attachments;
BEGIN
    PERFORM identity_merge._mixpanel_columns(p_events, 'events', '{distinct_id,device_id,user_id}', '{id,id,id}');
    SELECT * INTO a FROM identity_merge.attachments x WHERE x.events = p_events;
    IF NOT FOUND THEN
        IF NOT EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = p_events AND t.attname = 'canonical_id'
                          AND t.attnum > 0 AND NOT t.attisdropped) THEN
            RAISE EXCEPTION 'cannot stamp the events of %: it has no column canonical_id', p_events USING ERRCODE = '42703',
                HINT = format('Add the column the canonical id is written to (ALTER TABLE %s ADD COLUMN canonical_id text), or mp_attach the table naming its canonical column, then import again.', p_events);
        END IF;
        EXECUTE format('SELECT %I.mp_attach($1, $2, %L, %L, true, %L, %L)', s, 'distinct_id', 'canonical_id', 'device_id', 'user_id')
          USING p_events, p.token;
        -- Attached here: insert_id deduplication on, as Mixpanel's /import (when the table has
        -- the column; mp_dedup_insert_id(table, false) turns it off).
        IF EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = p_events AND t.attname = 'insert_id'
                      AND t.attnum > 0 AND NOT t.attisdropped) THEN
            EXECUTE format('SELECT %I.mp_dedup_insert_id($1)', s) USING p_events;
        END IF;
        SELECT * INTO a FROM identity_merge.attachments x WHERE x.events = p_events;
    ELSIF a.project_id <> p.project_id THEN
        RAISE EXCEPTION 'cannot stamp the events of % for project %: the table is attached to another project', p_events, quote_literal(p.token)
            USING ERRCODE = '55000', HINT = 'Import into the project the table is attached to, or mp_detach it first.';
    END IF;
    -- The rows already there, stamped as mp_restamp_all stamps them (Legacy: only rows without a stamp).
    RETURN identity_merge._exec_as_owner(p_events, format(
        'UPDATE %1$s e SET %2$I = coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
        '    WHERE i.project_id OPERATOR(pg_catalog.=) %4$s AND i.distinct_id OPERATOR(pg_catalog.=) (e.%3$I::pg_catalog.text COLLATE "C")), e.%3$I::pg_catalog.text) '
        'WHERE %5$s',
        p_events, a.canonical_column, a.distinct_id_column, a.project_id,
        CASE WHEN p.mode = 'legacy' THEN format('e.%I IS NULL AND e.%I IS NOT NULL', a.canonical_column, a.distinct_id_column)
             ELSE format('(e.%1$I)::pg_catalog.text COLLATE "C" IS DISTINCT FROM coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
                  '    WHERE i.project_id OPERATOR(pg_catalog.=) %3$s AND i.distinct_id OPERATOR(pg_catalog.=) (e.%2$I::pg_catalog.text COLLATE "C")), e.%2$I::pg_catalog.text)',
                  a.canonical_column, a.distinct_id_column, a.project_id) END));
END $$;

-- insert_id deduplication of an attached table, Mixpanel's rule for /import (one event per
-- insert_id): with `dedup`, a row whose insert_id the table already holds (the whole partitioned
-- table, for a partition) is skipped and recorded in identity_merge.rejections
-- (errDuplicateInsertId, the row as source_row); without, the table takes every row. A trigger of
-- its own (identity_merge.dedup_insert_id, src/api/dedup.rs) that fires before the stamping
-- trigger: tables without it never run it. Creates an index on the column when none leads with it.
CREATE FUNCTION mp_dedup_insert_id(events regclass, dedup boolean DEFAULT true, insert_id_column name DEFAULT 'insert_id')
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
    typ regtype;
BEGIN
    PERFORM identity_merge._no_nulls('mp_dedup_insert_id', '{events,dedup,insert_id_column}',
        ARRAY[events IS NULL, dedup IS NULL, insert_id_column IS NULL]);
    SELECT x.* INTO p FROM identity_merge.attachments a JOIN identity_merge.projects x ON x.project_id = a.project_id
     WHERE a.events = mp_dedup_insert_id.events;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not attached to identity_merge', events USING ERRCODE = '55000',
            HINT = 'Attach it with mp_attach first: deduplication is a setting of an attached table.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = events AND t.tgname = 'identity_merge_dedup') THEN
        EXECUTE format('DROP TRIGGER identity_merge_dedup ON %s', events);
    END IF;
    IF NOT dedup THEN
        RETURN;
    END IF;
    SELECT a.atttypid::regtype INTO typ FROM pg_attribute a
     WHERE a.attrelid = events AND a.attname = insert_id_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'cannot deduplicate %: column % does not exist', events, quote_ident(insert_id_column) USING ERRCODE = '42703',
            HINT = 'insert_id_column names the column holding each event''s insert_id.';
    END IF;
    IF NOT identity_merge._column_type_ok('id', typ) THEN
        RAISE EXCEPTION 'cannot deduplicate %: column % is of type %, not text', events, quote_ident(insert_id_column), typ
            USING ERRCODE = '42804', HINT = 'An insert_id is text: use a text or varchar column.';
    END IF;
    EXECUTE format('CREATE TRIGGER identity_merge_dedup BEFORE INSERT ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION identity_merge.dedup_insert_id(%L, %L)', events, p.token, insert_id_column);
    IF NOT EXISTS (SELECT 1 FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
                    WHERE x.indrelid = events AND a.attname = insert_id_column) THEN
        EXECUTE format('CREATE INDEX ON %s (%I)', events, insert_id_column);
    END IF;
END $$;

-- Brings a Mixpanel project home: seeds the project's identity graph from the export's
-- identity mappings (distinct_id, resolved_distinct_id), Mixpanel's resolved id as each new
-- person's canonical id; optionally stamps the export's events table (and attaches it) and
-- loads its people table as $set updates. Idempotent: the same export again changes nothing.
-- Administrators, as mp_backfill (docs/functions.md).
CREATE FUNCTION mp_import_mixpanel(project text, identity_mappings regclass, events regclass DEFAULT NULL,
                                   people regclass DEFAULT NULL)
RETURNS TABLE (mappings bigint, joins bigint, unchanged bigint, invalid bigint, mapped_twice bigint,
               chains bigint, conflicts bigint, ids_written bigint, clusters_written bigint,
               people_updates bigint, people_refused bigint, events_stamped bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
    r record;
BEGIN
    PERFORM identity_merge._no_nulls('mp_import_mixpanel', '{project,identity_mappings}',
        ARRAY[project IS NULL, identity_mappings IS NULL]);
    p := identity_merge._project(project);
    PERFORM identity_merge._mixpanel_columns(identity_mappings, 'identity mappings', '{distinct_id,resolved_distinct_id}', '{id,id}');
    IF people IS NOT NULL THEN
        PERFORM identity_merge._mixpanel_columns(people, 'people', '{distinct_id,properties}', '{id,json}');
    END IF;
    SELECT * INTO r FROM identity_merge._import_mixpanel(p.token, identity_mappings,
        format('SELECT distinct_id::pg_catalog.text, resolved_distinct_id::pg_catalog.text FROM %s', identity_mappings),
        people,
        format('SELECT distinct_id::pg_catalog.text, properties::pg_catalog.text FROM %s', people));
    RETURN QUERY SELECT r.mappings, r.joins, r.unchanged, r.invalid, r.mapped_twice, r.chains, r.conflicts,
                        r.ids_written, r.clusters_written, r.people, r.people_refused,
                        CASE WHEN events IS NULL THEN 0::bigint
                             ELSE identity_merge._mixpanel_events(p.token, events) END;
END $$;

-- The inverse, in the shape of Mixpanel's identity mappings: every id that resolves to another
-- id, with the id it resolves to (the canonical id of its cluster). Ids alone, and each
-- cluster's canonical id itself, have no row (they resolve to themselves).
-- The view reads the state tables through a function (with the caller's rights, as the
-- security_invoker view did), so that it depends on no table: on Citus, mp_undistribute recreates
-- the replicated tables, which a view depending on them would forbid.
CREATE FUNCTION identity_merge._mixpanel_identity_mappings()
RETURNS TABLE (project text, distinct_id text, resolved_distinct_id text)
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
SELECT p.token, i.distinct_id::text, i.canonical_id::text
  FROM identity_merge.identities i
  JOIN identity_merge.projects p ON p.project_id OPERATOR(pg_catalog.=) i.project_id
 WHERE i.distinct_id OPERATOR(pg_catalog.<>) i.canonical_id
$$;
CREATE VIEW identity_merge.mixpanel_identity_mappings WITH (security_invoker = true) AS
SELECT project, distinct_id, resolved_distinct_id FROM identity_merge._mixpanel_identity_mappings();

COMMENT ON FUNCTION mp_import_mixpanel(text, regclass, regclass, regclass) IS 'Seeds a project from a Mixpanel data-pipeline export: identity mappings, and optionally events (stamped) and people ($set) (administrators)';
COMMENT ON FUNCTION mp_dedup_insert_id(regclass, boolean, name) IS 'insert_id deduplication of an attached table (Mixpanel''s /import rule): duplicates skipped and recorded';
COMMENT ON VIEW identity_merge.mixpanel_identity_mappings IS 'Every id that resolves to another, in the shape of Mixpanel''s identity mappings (project, distinct_id, resolved_distinct_id)';

REVOKE ALL ON FUNCTION mp_import_mixpanel(text, regclass, regclass, regclass),
    identity_merge._import_mixpanel(text, regclass, text, regclass, text),
    identity_merge._mixpanel_columns(regclass, text, name[], text[]),
    identity_merge._mixpanel_events(text, regclass), mp_dedup_insert_id(regclass, boolean, name) FROM PUBLIC;
REVOKE ALL ON FUNCTION identity_merge._mixpanel_identity_mappings() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION identity_merge._mixpanel_identity_mappings() TO PUBLIC;

-- The trigger of mp_dedup_insert_id (src/api/dedup.rs), as pgrx declares it.
CREATE FUNCTION identity_merge."dedup_insert_id"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'dedup_insert_id_wrapper';
REVOKE ALL ON FUNCTION identity_merge.dedup_insert_id() FROM PUBLIC;
