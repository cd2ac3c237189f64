-- identity_merge on Citus (since 0.1.7; the design and its measurements: docs/scaling.md).
-- mp_distribute makes the identity state reference tables (a copy on every node, so the stamping
-- trigger's lookups stay local on whichever node holds a shard, and every identity write reaches
-- every copy in one two-phase commit); mp_undistribute takes it back; mp_distribute_events
-- distributes an attached event table; mp_apply_pending applies the identity events that event
-- rows brought to shards (the trigger cannot write the replicated state from there).

-- The identity state Citus replicates to every node. attachments and restamp_progress stay on the
-- coordinator (they hold regclass values, which are one node's oids, and only the coordinator's
-- functions read them); pending_events and graph_changed are each node's own.
CREATE FUNCTION identity_merge._replicated_tables() RETURNS regclass[]
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY['identity_merge.projects', 'identity_merge.identities', 'identity_merge.clusters',
                 'identity_merge.merge_log', 'identity_merge.retractions', 'identity_merge.rejections',
                 'identity_merge.profile_updates', 'identity_merge.people', 'identity_merge.people_refreshed',
                 'identity_merge.identity_records']::pg_catalog.regclass[]
$$;

-- Whether the identity state is on a Citus cluster (true on every node of it).
CREATE FUNCTION identity_merge._distributed() RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d boolean;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid OPERATOR(pg_catalog.=) $1)'
       INTO d USING 'identity_merge.identities'::pg_catalog.regclass;
    RETURN d;
END $$;

-- Whether a table is Citus's (distributed, reference or Citus-local): false without Citus.
CREATE FUNCTION identity_merge._is_citus_table(t regclass) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d boolean;
BEGIN
    IF pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid OPERATOR(pg_catalog.=) $1)'
       INTO d USING t;
    RETURN d;
END $$;

-- Whether this node is a Citus coordinator (false without Citus).
CREATE FUNCTION identity_merge._on_coordinator() RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c boolean;
BEGIN
    IF pg_catalog.to_regproc('pg_catalog.citus_is_coordinator') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO c;
    RETURN c;
END $$;

-- Ids whose order means something (merge_log.seq is the order of the joins; the people refresh
-- reads retractions and profile updates past a mark) are taken from the table itself once
-- distributed: every node has its own sequence, so nextval would interleave the nodes' writes.
-- Safe because every identity writer on Citus first takes the cluster-wide write lock
-- (src/citus.rs), held to commit.
CREATE FUNCTION identity_merge._next_merge_seq() RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(pg_catalog.max(seq), 0) + 1 FROM identity_merge.merge_log $$;
CREATE FUNCTION identity_merge._next_retraction_id() RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(pg_catalog.max(retraction_id), 0) + 1 FROM identity_merge.retractions $$;
CREATE FUNCTION identity_merge._next_update_id() RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT COALESCE(pg_catalog.max(update_id), 0) + 1 FROM identity_merge.profile_updates $$;

-- Ids that only need to be unique (projects, rejections) keep their sequences, which are each
-- node's own: a worker's start where the coordinator's can never reach (its group id, shifted;
-- what Citus does for sequences it creates). Run on every node by mp_distribute; idempotent.
CREATE FUNCTION identity_merge._separate_node_sequences() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g bigint;
BEGIN
    EXECUTE 'SELECT groupid FROM pg_catalog.pg_dist_local_group' INTO g;
    IF g IS NULL OR g = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_catalog.setval('identity_merge.projects_project_id_seq', g << 24)
      FROM identity_merge.projects_project_id_seq WHERE last_value < g << 24;
    PERFORM pg_catalog.setval('identity_merge.rejections_rejection_id_seq', g << 48)
      FROM identity_merge.rejections_rejection_id_seq WHERE last_value < g << 48;
END $$;

CREATE FUNCTION identity_merge._require_citus_coordinator(what text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION '% needs Citus, which is not installed in database %', what, current_database()
            USING ERRCODE = '0A000',
            HINT = 'On a Citus cluster: citus in shared_preload_libraries, CREATE EXTENSION citus, then the worker nodes (citus_add_node). '
                   'A single server needs none of this: identity_merge works as it is.';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION '% runs on the coordinator, and this node is a worker', what USING ERRCODE = '55000',
            HINT = 'Connect to the coordinator (citus_get_active_worker_nodes() lists the workers; the coordinator is the node in pg_dist_node with groupid 0).';
    END IF;
    IF NOT pg_catalog.pg_has_role((SELECT nspowner FROM pg_catalog.pg_namespace WHERE nspname = 'identity_merge'), 'MEMBER') THEN
        RAISE EXCEPTION 'permission denied: % changes where identity_merge keeps its tables', what USING ERRCODE = '42501',
            HINT = 'Run it as the owner of the extension (the role that ran CREATE EXTENSION identity_merge).';
    END IF;
END $$;

-- Puts the identity state on the Citus cluster. Twice is harmless (it says what it did).
CREATE FUNCTION mp_distribute() RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t regclass;
    made int := 0;
    failed text;
BEGIN
    PERFORM identity_merge._require_citus_coordinator('mp_distribute');
    -- The triggers that come with the tables (the cache signal on identities and projects) are
    -- copied onto every placement: each node's copy tells that node's caches.
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- A distributed installation is dumped and restored the Citus way; this trigger's own query
    -- would deadlock the copy of projects into its placement.
    DROP TRIGGER IF EXISTS projects_restore_upsert ON identity_merge.projects;
    -- attachments stays on the coordinator; a foreign key to a reference table would make Citus
    -- convert it, on every node.
    ALTER TABLE identity_merge.attachments DROP CONSTRAINT IF EXISTS attachments_project_id_fkey;
    FOREACH t IN ARRAY identity_merge._replicated_tables() LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = t) THEN
            PERFORM pg_catalog.create_reference_table(t);
            PERFORM pg_catalog.truncate_local_data_after_distributing_table(t);
            made := made + 1;
        END IF;
    END LOOP;
    ALTER TABLE identity_merge.merge_log ALTER COLUMN seq SET DEFAULT identity_merge._next_merge_seq();
    ALTER TABLE identity_merge.retractions ALTER COLUMN retraction_id SET DEFAULT identity_merge._next_retraction_id();
    ALTER TABLE identity_merge.profile_updates ALTER COLUMN update_id SET DEFAULT identity_merge._next_update_id();
    SELECT string_agg(format('node %s: %s', r.nodeid, r.result), '; ') INTO failed
      FROM pg_catalog.run_command_on_all_nodes('SELECT identity_merge._separate_node_sequences()') r
     WHERE NOT r.success;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION 'mp_distribute could not set up every node: %', failed USING ERRCODE = '55000',
            HINT = 'Every node needs identity_merge installed (CREATE EXTENSION on the coordinator propagates it) and reachable.';
    END IF;
    RETURN CASE WHEN made = 0 THEN 'identity_merge was already distributed: nothing to do'
                ELSE format('identity_merge distributed: %s tables replicated to %s nodes', made,
                            (SELECT pg_catalog.count(*) FROM pg_catalog.pg_dist_node WHERE isactive AND noderole = 'primary')) END;
END $$;

-- Takes the identity state back to the coordinator alone (run it before DROP EXTENSION
-- identity_merge on a cluster). Queued identity events are applied first.
CREATE FUNCTION mp_undistribute() RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t regclass;
    tname text;
    old_oid oid;
    seqs text[];
    q text;
    undone int := 0;
    project_def text;
    project_acl aclitem[];
    g record;
    dumped text[];
    conditions text[];
BEGIN
    PERFORM identity_merge._require_citus_coordinator('mp_undistribute');
    IF NOT identity_merge._distributed() THEN
        RETURN 'identity_merge is not distributed: nothing to do';
    END IF;
    EXECUTE format('SELECT %I.mp_apply_pending()', (SELECT n.nspname FROM pg_catalog.pg_extension e
                   JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'identity_merge'));
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- pg_dump keeps the rows of the tables registered in extconfig, by oid; a table leaving the
    -- extension leaves it: the registrations are put back by name at the end.
    SELECT array_agg(c::regclass::text ORDER BY n), array_agg(coalesce(x.extcondition[n], '') ORDER BY n)
      INTO dumped, conditions
      FROM pg_catalog.pg_extension x, unnest(x.extconfig) WITH ORDINALITY u(c, n)
     WHERE x.extname = 'identity_merge';
    FOREACH t IN ARRAY identity_merge._replicated_tables() LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = t);
        old_oid := t::oid;
        tname := t::text;
        -- Citus rebuilds the table (a new oid): it must leave the extension meanwhile, with
        -- the sequences its columns own.
        SELECT array_agg(d.objid::regclass::text) INTO seqs FROM pg_catalog.pg_depend d
         WHERE d.refobjid = old_oid AND d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'a'
           AND (SELECT relkind FROM pg_catalog.pg_class WHERE oid = d.objid) = 'S';
        FOREACH q IN ARRAY coalesce(seqs, '{}') LOOP
            EXECUTE format('ALTER EXTENSION identity_merge DROP SEQUENCE %s', q);
        END LOOP;
        -- _project(text) returns the projects row type: the rebuild drops it with the old
        -- table, so it is kept aside and put back as it was (definition and grants).
        IF tname = 'identity_merge.projects' THEN
            project_def := pg_catalog.pg_get_functiondef('identity_merge._project(text)'::regprocedure);
            project_acl := (SELECT proacl FROM pg_catalog.pg_proc WHERE oid = 'identity_merge._project(text)'::regprocedure);
            ALTER EXTENSION identity_merge DROP FUNCTION identity_merge._project(text);
        END IF;
        EXECUTE format('ALTER EXTENSION identity_merge DROP TABLE %s', tname);
        PERFORM pg_catalog.undistribute_table(t, cascade_via_foreign_keys => false);
        t := pg_catalog.to_regclass(tname);
        IF tname = 'identity_merge.projects' THEN
            IF pg_catalog.to_regprocedure('identity_merge._project(text)') IS NULL THEN
                -- Every other node has its own _project: nothing to propagate.
                PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
                EXECUTE project_def;
                PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'on', true);
            END IF;
            ALTER EXTENSION identity_merge ADD FUNCTION identity_merge._project(text);
            REVOKE ALL ON FUNCTION identity_merge._project(text) FROM PUBLIC;
            FOR g IN SELECT a.grantee, a.privilege_type FROM pg_catalog.aclexplode(project_acl) a LOOP
                EXECUTE format('GRANT %s ON FUNCTION identity_merge._project(text) TO %s', g.privilege_type,
                               CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::regrole::text END);
            END LOOP;
        END IF;
        EXECUTE format('ALTER EXTENSION identity_merge ADD TABLE %s', t);
        FOREACH q IN ARRAY coalesce(seqs, '{}') LOOP
            EXECUTE format('ALTER EXTENSION identity_merge ADD SEQUENCE %s', q);
        END LOOP;
        undone := undone + 1;
    END LOOP;
    UPDATE pg_catalog.pg_extension
       SET extconfig = (SELECT array_agg(pg_catalog.to_regclass(d)::oid ORDER BY n) FROM unnest(dumped) WITH ORDINALITY u(d, n)),
           extcondition = conditions
     WHERE extname = 'identity_merge';
    ALTER TABLE identity_merge.merge_log ALTER COLUMN seq SET DEFAULT pg_catalog.nextval('identity_merge.merge_log_seq_seq'::regclass);
    ALTER TABLE identity_merge.retractions ALTER COLUMN retraction_id SET DEFAULT pg_catalog.nextval('identity_merge.retractions_retraction_id_seq'::regclass);
    ALTER TABLE identity_merge.profile_updates ALTER COLUMN update_id SET DEFAULT pg_catalog.nextval('identity_merge.profile_updates_update_id_seq'::regclass);
    PERFORM pg_catalog.setval('identity_merge.merge_log_seq_seq', m) FROM (SELECT max(seq) m FROM identity_merge.merge_log) x WHERE m IS NOT NULL;
    PERFORM pg_catalog.setval('identity_merge.retractions_retraction_id_seq', m) FROM (SELECT max(retraction_id) m FROM identity_merge.retractions) x WHERE m IS NOT NULL;
    PERFORM pg_catalog.setval('identity_merge.profile_updates_update_id_seq', m) FROM (SELECT max(update_id) m FROM identity_merge.profile_updates) x WHERE m IS NOT NULL;
    PERFORM pg_catalog.setval('identity_merge.projects_project_id_seq', m) FROM (SELECT max(project_id) m FROM identity_merge.projects) x WHERE m IS NOT NULL;
    PERFORM pg_catalog.setval('identity_merge.rejections_rejection_id_seq', m) FROM (SELECT max(rejection_id) m FROM identity_merge.rejections) x WHERE m IS NOT NULL;
    DELETE FROM identity_merge.attachments a WHERE NOT EXISTS (SELECT 1 FROM identity_merge.projects p WHERE p.project_id = a.project_id);
    ALTER TABLE identity_merge.attachments ADD CONSTRAINT attachments_project_id_fkey
        FOREIGN KEY (project_id) REFERENCES identity_merge.projects;
    CREATE TRIGGER projects_restore_upsert BEFORE INSERT ON identity_merge.projects
        FOR EACH ROW EXECUTE FUNCTION identity_merge._projects_restore_upsert();
    RETURN format('identity_merge undistributed: %s tables back on the coordinator alone', undone);
END $$;

-- Distributes an attached (or not yet attached) event table by the column the user chooses,
-- with its stamping trigger (create_distributed_table refuses tables with triggers unless
-- citus.enable_unsafe_triggers is on: that is this function's business, not the caller's).
CREATE FUNCTION mp_distribute_events(events regclass, distribution_column text,
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

-- Applies the identity events that event rows brought to shards (pending_events, on every
-- node), each node's in the order its rows arrived, then restamps the attached tables' rows
-- that the joins made stale. Returns how many events were applied. Each node applies its own
-- queue in its own transaction (committed before this returns), so an interrupted run loses
-- nothing: what was not applied is still queued.
CREATE FUNCTION mp_apply_pending() RETURNS bigint
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

-- After the maintenance worker applied a node's queue: the rows stamped with the canonical ids
-- its joins absorbed, in every attached table of a project that is not legacy, restamped (on
-- the coordinator, which holds the attachments; src/engine/maintain.rs).
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

-- After a queue was applied (mp_apply_pending, the maintenance worker): every attached table of
-- a project that is not legacy restamped, so every row has the stamp it would have on one server.
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

-- DROP EXTENSION identity_merge on a cluster would leave its tables' shards on every node (Citus
-- refuses it, naming every shard): refused first, with the way out.
CREATE FUNCTION identity_merge._refuse_drop_while_distributed() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.current_query() ~* '\midentity_merge\M' AND identity_merge._distributed() THEN
        RAISE EXCEPTION 'identity_merge is distributed on this Citus cluster: run SELECT mp_undistribute() before DROP EXTENSION identity_merge'
            USING ERRCODE = '2BP01',
            HINT = 'mp_undistribute() (on the coordinator) brings the identity state back to the coordinator alone; DROP EXTENSION then drops it cleanly on every node.';
    END IF;
END $$;
CREATE EVENT TRIGGER identity_merge_refuse_drop_while_distributed ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION') EXECUTE FUNCTION identity_merge._refuse_drop_while_distributed();
