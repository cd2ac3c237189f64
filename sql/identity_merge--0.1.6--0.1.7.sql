-- identity_merge 0.1.6 -> 0.1.7 (see CHANGELOG.md): Citus scale-out (mp_distribute,
-- mp_undistribute, mp_distribute_events, mp_apply_pending, the queue identity_merge.pending_events;
-- mp_attach / mp_detach set citus.enable_unsafe_triggers for their trigger DDL; the grant helpers
-- grant on every worker too; mp_check reports queued identity events and reads stamps with a
-- join Citus can plan).
-- Released upgrade scripts are never edited afterwards.

-- Identity events that arrived in event rows on a Citus shard (since 0.1.7). The trigger runs
-- there inside a query the coordinator sent, where Citus refuses the writes to the replicated
-- identity state that applying the event needs; it stamps the row and keeps the event here, on
-- the node, committed with the row, until mp_apply_pending() applies it (docs/scaling.md).
-- A plain table on every node, never distributed: events names the logical table (text, since a
-- regclass would be this node's oid).
CREATE TABLE identity_merge.pending_events (
    seq         bigserial PRIMARY KEY,
    project_id  integer NOT NULL,
    events      text NOT NULL,
    distinct_id text,
    event       text,
    properties  jsonb,
    device_id   text,
    user_id     text,
    role_name   name NOT NULL DEFAULT current_user,
    queued_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE identity_merge.pending_events IS 'Identity events from rows stamped on Citus shards, until mp_apply_pending applies them';

SELECT pg_catalog.pg_extension_config_dump('identity_merge.pending_events', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.pending_events_seq_seq', '');

CREATE  FUNCTION identity_merge."_apply_queue"() RETURNS bigint /* i64 */
STRICT VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'apply_queue_wrapper';

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
    PERFORM pg_catalog.create_distributed_table(events, distribution_column, colocate_with => colocate_with);
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
    s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                WHERE e.extname = 'identity_merge');
    n bigint := 0;
    failed text;
    a record;
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
        FOR a IN SELECT x.events FROM identity_merge.attachments x
                   JOIN identity_merge.projects p USING (project_id) WHERE p.mode <> 'legacy' LOOP
            EXECUTE format('SELECT %I.mp_restamp($1)', s) USING a.events;
        END LOOP;
    END IF;
    RETURN n;
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

-- mp_attach and mp_detach: citus.enable_unsafe_triggers for their trigger DDL on Citus;
-- mp_restamp and mp_check: plain tables beside a distributed state resolve ids one by one;
-- mp_check: queued identity events, and a join instead of a lateral subquery;
-- mp_refresh_people: refreshed_at from the inserted row (Citus allows no function in DO UPDATE).
CREATE OR REPLACE FUNCTION mp_attach(events regclass, project text DEFAULT 'default',
                          distinct_id_column name DEFAULT 'distinct_id',
                          canonical_column name DEFAULT 'canonical_id',
                          create_index boolean DEFAULT true,
                          device_id_column name DEFAULT '',
                          user_id_column name DEFAULT '') RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
    bad record;
    col name;
    typ regtype;
    unsafe_triggers text;
BEGIN
    p := identity_merge._project(project);
    IF distinct_id_column = canonical_column THEN
        RAISE EXCEPTION 'the canonical column must differ from the distinct_id column (%)', quote_ident(distinct_id_column)
            USING ERRCODE = '22023', HINT = 'The trigger keeps the distinct_id as sent and writes the canonical id beside it.';
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
        IF typ NOT IN ('text'::regtype, 'character varying'::regtype) THEN
            RAISE EXCEPTION 'cannot attach %: column % is of type %, not text', events, quote_ident(col), typ
                USING ERRCODE = '42804', HINT = 'Ids are text; use a text or varchar column.';
        END IF;
    END LOOP;
    -- Citus takes triggers on its tables only with citus.enable_unsafe_triggers on (for the DDL
    -- alone): the trigger is this function's, so is the setting (docs/scaling.md).
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        unsafe_triggers := current_setting('citus.enable_unsafe_triggers', true);
        PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = events AND t.tgname = 'identity_merge_stamp') THEN
        EXECUTE format('DROP TRIGGER identity_merge_stamp ON %s', events);
    END IF;
    -- UPDATE OF the distinct_id too (also INSERT ... ON CONFLICT DO UPDATE): a changed
    -- distinct_id gets its stamp, so no row keeps a stamp mp_restamp could not fix.
    EXECUTE format('CREATE TRIGGER identity_merge_stamp BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW '
                   'EXECUTE FUNCTION identity_merge.stamp_event(%L, %L, %L%s)',
                   distinct_id_column, events, p.token, distinct_id_column, canonical_column,
                   CASE WHEN device_id_column = '' AND user_id_column = '' THEN ''
                        ELSE format(', %L, %L', device_id_column, user_id_column) END);
    IF create_index AND NOT EXISTS (SELECT 1 FROM pg_index x JOIN pg_attribute a
                     ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
                    WHERE x.indrelid = events AND a.attname = canonical_column) THEN
        EXECUTE format('CREATE INDEX ON %s (%I)', events, canonical_column);
    END IF;
    IF unsafe_triggers IS NOT NULL THEN
        PERFORM set_config('citus.enable_unsafe_triggers', unsafe_triggers, true);
    END IF;
    PERFORM identity_merge._register_attachment(events, p.project_id, distinct_id_column, canonical_column);
END $$;

CREATE OR REPLACE FUNCTION mp_detach(events regclass) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    unsafe_triggers text;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = events AND t.tgname = 'identity_merge_stamp') THEN
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
            unsafe_triggers := current_setting('citus.enable_unsafe_triggers', true);
            PERFORM set_config('citus.enable_unsafe_triggers', 'on', true);
        END IF;
        EXECUTE format('DROP TRIGGER identity_merge_stamp ON %s', events);
        IF unsafe_triggers IS NOT NULL THEN
            PERFORM set_config('citus.enable_unsafe_triggers', unsafe_triggers, true);
        END IF;
    END IF;
    PERFORM identity_merge._unregister_attachment(events);
END $$;

CREATE OR REPLACE FUNCTION mp_restamp(events regclass) RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a identity_merge.attachments;
    n bigint;
    coll text;
    bad record;
BEGIN
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
        EXECUTE format(
            'UPDATE %1$s e SET %2$I = %5$I.mp_resolve(e.%4$I::text, $2) '
            'WHERE e.%2$I OPERATOR(pg_catalog.=) ANY ($3::text[] COLLATE %3$s) '
            '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.=) ANY ($3) '
            '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.<>) %5$I.mp_resolve(e.%4$I::text, $2)',
            events, a.canonical_column, coll, a.distinct_id_column,
            (SELECT n.nspname FROM pg_extension x JOIN pg_namespace n ON n.oid = x.extnamespace WHERE x.extname = 'identity_merge'))
        USING a.project_id, (SELECT p.token FROM identity_merge.projects p WHERE p.project_id = a.project_id),
              (SELECT array_agg(DISTINCT x.stale) FROM (
                   SELECT l.absorbed_canonical AS stale FROM identity_merge.merge_log l WHERE l.project_id = a.project_id
                   UNION ALL
                   SELECT r.old_canonical FROM identity_merge.retractions r WHERE r.project_id = a.project_id) x);
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN n;
    END IF;
    -- A stale stamp is a canonical id that stopped being one: absorbed by a join
    -- (merge_log.absorbed_canonical), or the canonical of a cluster that was split
    -- (retractions.old_canonical), whose rows may now belong to other people. Each row stamped
    -- with one is set to what its own distinct_id resolves to now (one primary-key probe per
    -- row), found through the index on the canonical column: the cost follows the stale rows.
    EXECUTE format(
        'UPDATE %1$s e SET %2$I = coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
        '    WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.distinct_id OPERATOR(pg_catalog.=) (e.%4$I::text COLLATE "C")), e.%4$I::text) '
        'FROM (SELECT DISTINCT x.stale FROM ('
        '        SELECT l.absorbed_canonical AS stale FROM identity_merge.merge_log l WHERE l.project_id OPERATOR(pg_catalog.=) $1 '
        '        UNION ALL '
        '        SELECT r.old_canonical FROM identity_merge.retractions r WHERE r.project_id OPERATOR(pg_catalog.=) $1) x) d '
        'WHERE e.%2$I OPERATOR(pg_catalog.=) (d.stale COLLATE %3$s) '
        '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.=) d.stale '
        '  AND (e.%2$I)::text COLLATE "C" OPERATOR(pg_catalog.<>) coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
        '    WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.distinct_id OPERATOR(pg_catalog.=) (e.%4$I::text COLLATE "C")), e.%4$I::text)',
        events, a.canonical_column, coll, a.distinct_id_column) USING a.project_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION mp_check(project text DEFAULT 'default') RETURNS TABLE (check_name text, detail text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := (identity_merge._project(project)).project_id;
    legacy boolean := (identity_merge._project(project)).mode = 'legacy';
    a identity_merge.attachments;
    bad record;
    broken boolean;
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

CREATE OR REPLACE FUNCTION mp_refresh_people(project text DEFAULT 'default') RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects := identity_merge._project(project);
    w identity_merge.people_refreshed;
    top record;
    n bigint := 0;
    k bigint;
    touched text[] COLLATE "C";
    persons text[] COLLATE "C";
    profiles jsonb[];
    s text := (SELECT ns.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace ns ON ns.oid = e.extnamespace
                WHERE e.extname = 'identity_merge');
BEGIN
    -- One refresh of a project at a time.
    PERFORM pg_advisory_xact_lock(hashtext('identity_merge people ' || p.project_id));
    INSERT INTO identity_merge.people_refreshed (project_id) VALUES (p.project_id) ON CONFLICT DO NOTHING;
    SELECT * INTO w FROM identity_merge.people_refreshed x WHERE x.project_id = p.project_id;
    SELECT (SELECT coalesce(max(seq), 0) FROM identity_merge.merge_log WHERE project_id = p.project_id) AS merge_seq,
           (SELECT coalesce(max(retraction_id), 0) FROM identity_merge.retractions WHERE project_id = p.project_id) AS retraction_id,
           (SELECT coalesce(max(update_id), 0) FROM identity_merge.profile_updates WHERE project_id = p.project_id) AS update_id
      INTO top;
    -- Every id whose person may have changed: both sides of new joins, the ids of retracted
    -- joins and the split clusters' old canonicals, the ids that received updates. (An array,
    -- not a temporary table: on Citus a temporary table cannot meet the replicated ones.)
    touched := ARRAY(
        SELECT unnest(ARRAY[l.id_a, l.id_b, l.kept_canonical, l.absorbed_canonical]) FROM identity_merge.merge_log l
         WHERE l.project_id = p.project_id AND l.seq > w.merge_seq AND l.seq <= top.merge_seq
        UNION
        SELECT unnest(ARRAY[l.id_a, l.id_b, r.old_canonical]) FROM identity_merge.retractions r
          JOIN identity_merge.merge_log l ON l.seq = ANY (r.retracted)
         WHERE r.project_id = p.project_id AND r.retraction_id > w.retraction_id AND r.retraction_id <= top.retraction_id
        UNION
        SELECT u.distinct_id FROM identity_merge.profile_updates u
         WHERE u.project_id = p.project_id AND u.update_id > w.update_id AND u.update_id <= top.update_id);
    -- Rows of ids that are no longer a canonical id (absorbed, or joined under another).
    DELETE FROM identity_merge.people pe
     WHERE pe.project_id = p.project_id AND pe.canonical_id = ANY (touched)
       AND EXISTS (SELECT 1 FROM identity_merge.identities i WHERE i.project_id = p.project_id
                     AND i.distinct_id = pe.canonical_id AND i.canonical_id <> pe.canonical_id);
    GET DIAGNOSTICS k = ROW_COUNT;
    n := n + k;
    -- The current people of those ids: their profile, or no row when they have none.
    persons := ARRAY(SELECT DISTINCT coalesce(i.canonical_id, t.id) FROM unnest(touched) t(id)
                       LEFT JOIN identity_merge.identities i ON i.project_id = p.project_id AND i.distinct_id = t.id);
    EXECUTE format('SELECT array_agg(%I.mp_profile(u.c, $2) ORDER BY u.n) FROM unnest($1) WITH ORDINALITY u(c, n)', s)
       INTO profiles USING persons, p.token;
    DELETE FROM identity_merge.people pe
     WHERE pe.project_id = p.project_id
       AND pe.canonical_id = ANY (ARRAY(SELECT c FROM unnest(persons, profiles) u(c, props) WHERE props = '{}'::jsonb));
    GET DIAGNOSTICS k = ROW_COUNT;
    n := n + k;
    INSERT INTO identity_merge.people (project_id, canonical_id, properties)
    SELECT p.project_id, u.c, u.props FROM unnest(persons, profiles) u(c, props) WHERE u.props <> '{}'::jsonb
    ON CONFLICT (project_id, canonical_id) DO UPDATE SET properties = EXCLUDED.properties, refreshed_at = EXCLUDED.refreshed_at;
    GET DIAGNOSTICS k = ROW_COUNT;
    n := n + k;
    UPDATE identity_merge.people_refreshed x
       SET merge_seq = top.merge_seq, retraction_id = top.retraction_id, update_id = top.update_id
     WHERE x.project_id = p.project_id;
    RETURN n;
END $$;

-- The grant helpers grant on every worker too.
-- On Citus the same rights on every worker (since 0.1.7): the trigger runs on the shards as the
-- role that inserts, and a role may connect to a worker. Roles exist on every node (Citus
-- propagates CREATE ROLE); grants on the extension's schema and functions are not propagated.
-- Each worker runs the grant function itself, first (in its own transaction, before this one
-- holds anything there that it would wait for); the caller's own grants then stay on this node
-- (DDL propagation off until it returns the setting given back here). NULL: not distributed.
CREATE FUNCTION identity_merge._grant_on_workers(grant_function text, role regrole) RETURNS text
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                WHERE e.extname = 'identity_merge');
    failed text;
    propagation text;
BEGIN
    IF NOT identity_merge._distributed() OR NOT identity_merge._on_coordinator() THEN
        RETURN NULL;
    END IF;
    SELECT string_agg(format('%s:%s: %s', r.nodename, r.nodeport, r.result), '; ') INTO failed
      FROM pg_catalog.run_command_on_workers(format(
             'SELECT %I.%I(%L::regrole) FROM (SELECT pg_catalog.set_config(''citus.enable_ddl_propagation'', ''off'', true)) off',
             s, grant_function, role)) r
     WHERE NOT r.success;
    IF failed IS NOT NULL THEN
        RAISE EXCEPTION '% could not grant on every worker: %', grant_function, failed USING ERRCODE = '55000',
            HINT = 'Check that every worker is up and has the role, then run it again.';
    END IF;
    propagation := pg_catalog.current_setting('citus.enable_ddl_propagation', true);
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    RETURN coalesce(propagation, 'on');
END $$;

CREATE OR REPLACE FUNCTION mp_grant_reader(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'identity_merge');
        propagation text := identity_merge._grant_on_workers('mp_grant_reader', role);
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA identity_merge TO %s', role);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA identity_merge TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_resolve(text, text), %1$I.mp_cluster(text, text), '
                   '%1$I.mp_project_settings(text), %1$I.mp_check(text), identity_merge._check_log(integer), '
                   'identity_merge._project(text), %1$I.mp_explain(text, text), %1$I.mp_explain(text, text, text), '
                   '%1$I.mp_profile(text, text) TO %2$s', s, role);
    IF propagation IS NOT NULL THEN
        PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', propagation, true);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION mp_grant_writer(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'identity_merge');
        propagation text := identity_merge._grant_on_workers('mp_grant_writer', role);
BEGIN
    EXECUTE format('SELECT %I.mp_grant_reader(%L::regrole)', s, role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_identify(text, text, text), %1$I.mp_alias(text, text, text), '
                   '%1$I.mp_merge(text, text, text), %1$I.mp_merge(text[], text), '
                   '%1$I.mp_identity_create(jsonb), %1$I.mp_identity_create_alias(jsonb), %1$I.mp_identity_merge(jsonb), '
                   '%1$I.mp_track(jsonb), %1$I.mp_segment(jsonb, text), identity_merge._segment(text, text), '
                   '%1$I.mp_engage(jsonb), identity_merge._engage(text), %1$I.mp_refresh_people(text), '
                   '%1$I.mp_identity_record_create(jsonb), identity_merge._identity_record_create(text), '
                   'identity_merge._identity_create(text), identity_merge._identity_create_alias(text), '
                   'identity_merge._identity_merge(text), identity_merge._track(text), '
                   '%1$I.mp_attach(regclass, text, name, name, boolean, name, name), %1$I.mp_detach(regclass), %1$I.mp_restamp(regclass), '
                   '%1$I.mp_split(text, text), %1$I.mp_unjoin(bigint), '
                   'identity_merge.stamp_event(), identity_merge._register_attachment(regclass, integer, name, name), '
                   'identity_merge._unregister_attachment(regclass) TO %2$s', s, role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_schedule_restamp(regclass, interval), '
                   '%1$I.mp_unschedule_restamp(regclass) TO %2$s', s, role);
    -- The restamp of every row commits per batch, so it runs as the caller, who keeps its
    -- progress (row-level security limits that to tables the caller owns).
    EXECUTE format('GRANT EXECUTE ON PROCEDURE %1$I.mp_restamp_all(regclass, integer) TO %2$s', s, role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON identity_merge.restamp_progress TO %s', role);
    IF propagation IS NOT NULL THEN
        PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', propagation, true);
    END IF;
END $$;

COMMENT ON FUNCTION mp_distribute() IS 'Citus: makes the identity state reference tables on every node (run on the coordinator)';
COMMENT ON FUNCTION mp_undistribute() IS 'Citus: takes the identity state back to the coordinator alone (before DROP EXTENSION)';
COMMENT ON FUNCTION mp_distribute_events(regclass, text, text) IS 'Citus: distributes an event table by a column, with its stamping trigger';
COMMENT ON FUNCTION mp_apply_pending() IS 'Citus: applies the identity events rows brought to shards, on every node, then restamps; returns how many';

-- Least privilege (docs/security.md). Nothing is executable by PUBLIC: an administrator grants
-- one of two roles' worth of rights. The state tables are only ever changed by the functions,
-- which do their writes as the extension owner.
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT d.objid::regprocedure FROM pg_catalog.pg_depend d
              WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
                AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'identity_merge') LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);
    END LOOP;
END $$;

-- Catalog reads only: where the identity state is (mp_check asks, as any role).
GRANT EXECUTE ON FUNCTION identity_merge._distributed(), identity_merge._on_coordinator(), identity_merge._is_citus_table(regclass) TO PUBLIC;
