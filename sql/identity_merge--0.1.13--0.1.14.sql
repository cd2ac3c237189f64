-- identity_merge 0.1.13 -> 0.1.14 (see CHANGELOG.md): mp_ingest, a staged batch moved into an
-- attached table set-wise; the stamping trigger gets a WHEN that skips mp_ingest's own rows
-- (tables attached before keep their trigger until mp_attach runs on them again: the trigger
-- then passes those rows through itself).
-- Released upgrade scripts are never edited afterwards.

-- The stamping trigger's WHEN (src/api/ingest.rs): false only for the rows of mp_ingest's own
-- INSERT into the table, which carry their stamps already (since 0.1.14). Evaluated for every
-- row written by every role that writes an attached table: executable by all (granted below).
CREATE FUNCTION identity_merge._stamp_wanted(events regclass) RETURNS boolean
LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', '_stamp_wanted';

-- Moves a staged batch into an attached table set-wise (src/engine/staged.rs): the batch's
-- identity events applied in the rows' order as the trigger would apply them, then one INSERT
-- of every row with its final stamp, which the trigger skips. With the caller's rights.
CREATE FUNCTION mp_ingest(staging regclass, target regclass, empty_staging boolean DEFAULT false)
RETURNS TABLE (rows_inserted bigint, identity_events bigint, refused bigint)
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'mp_ingest_wrapper';

-- Puts the stamping trigger (now with its WHEN) on an event table and registers it.
CREATE OR REPLACE FUNCTION mp_attach(events regclass, project text DEFAULT 'default',
                          distinct_id_column name DEFAULT 'distinct_id',
                          canonical_column name DEFAULT 'canonical_id',
                          create_index boolean DEFAULT true,
                          device_id_column name DEFAULT '',
                          user_id_column name DEFAULT '') RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
    bad record;
    col name;
    typ regtype;
    unsafe_triggers text;
BEGIN
    PERFORM identity_merge._no_nulls('mp_attach', '{events,project,distinct_id_column,canonical_column,create_index,device_id_column,user_id_column}',
        ARRAY[events IS NULL, project IS NULL, distinct_id_column IS NULL, canonical_column IS NULL, create_index IS NULL,
              device_id_column IS NULL, user_id_column IS NULL]);
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
    EXECUTE format('CREATE TRIGGER identity_merge_stamp BEFORE INSERT OR UPDATE OF %I ON %s FOR EACH ROW '
                   'WHEN (identity_merge._stamp_wanted(%L::regclass)) '
                   'EXECUTE FUNCTION identity_merge.stamp_event(%L, %L, %L%s)',
                   distinct_id_column, events, events::oid, p.token, distinct_id_column, canonical_column,
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

-- Writers may run mp_ingest.
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
                   '%1$I.mp_attach(regclass, text, name, name, boolean, name, name), %1$I.mp_detach(regclass), %1$I.mp_restamp(regclass), '
                   '%1$I.mp_ingest(regclass, regclass, boolean), '
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

COMMENT ON FUNCTION mp_ingest(regclass, regclass, boolean) IS 'Moves a staged batch into an attached table: its identity events applied in order, then every row inserted with its final stamp in one statement';

REVOKE ALL ON FUNCTION mp_ingest(regclass, regclass, boolean), identity_merge._stamp_wanted(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION identity_merge._stamp_wanted(regclass) TO PUBLIC;
-- Roles granted the writer's rights before this version (they may run mp_restamp) get mp_ingest.
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT DISTINCT a.grantee::regrole AS role
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid = 'mp_restamp(regclass)'::regprocedure AND a.privilege_type = 'EXECUTE'
                AND a.grantee <> 0 AND a.grantee <> p.proowner LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION mp_ingest(regclass, regclass, boolean) TO %s', r.role);
    END LOOP;
END $$;
