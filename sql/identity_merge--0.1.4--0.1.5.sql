-- identity_merge 0.1.4 -> 0.1.5 (see CHANGELOG.md): mp_segment (Segment / RudderStack payloads)
-- CALL mp_restamp_all (every row of a table, in committed batches, resumable), and
-- mp_schedule_restamp / mp_unschedule_restamp (restamps on a schedule, with pg_cron), and
-- mp_attach's device_id_column / user_id_column, and mp_backfill_from (history from an attached
-- table or Segment's identifies and aliases tables).
-- Released upgrade scripts are never edited afterwards.

CREATE  FUNCTION identity_merge."_segment"(
	"payload" TEXT, /* Option < & str > */
	"project" TEXT /* Option < & str > */
) RETURNS jsonb /* pgrx :: JsonB */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_segment_wrapper';

CREATE FUNCTION mp_segment(payload jsonb, project text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._segment(payload::text, project) $$;

-- Where a long restamp of every row (CALL mp_restamp_all) stands: one row per table while it
-- runs, committed with each batch, so an interrupted run resumes where it stopped (since 0.1.5).
CREATE TABLE identity_merge.restamp_progress (
    events      regclass PRIMARY KEY,
    next_block  bigint NOT NULL,
    blocks      bigint NOT NULL,
    rows_done   bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE identity_merge.restamp_progress IS 'Progress of CALL mp_restamp_all runs (a row while one runs or was interrupted)';
SELECT pg_catalog.pg_extension_config_dump('identity_merge.restamp_progress', '');

-- A role keeps the restamp progress of the tables it owns only.
ALTER TABLE identity_merge.restamp_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_tables ON identity_merge.restamp_progress
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = events::pg_catalog.oid), 'MEMBER'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = events::pg_catalog.oid), 'MEMBER'));

CREATE PROCEDURE mp_restamp_all(events regclass, batch_blocks integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    a identity_merge.attachments;
    bad record;
    total bigint;
    b bigint;
    n bigint;
    done bigint;
BEGIN
    IF batch_blocks IS NULL OR batch_blocks < 1 THEN
        RAISE EXCEPTION 'invalid batch_blocks: %', coalesce(batch_blocks::pg_catalog.text, 'NULL') USING ERRCODE = '22023',
            HINT = 'A positive number of heap blocks per batch (1000 blocks are about 8 MB).';
    END IF;
    SELECT * INTO a FROM identity_merge.attachments x WHERE x.events = mp_restamp_all.events;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not attached to identity_merge', events USING ERRCODE = '55000',
            HINT = 'Attach it with mp_attach first.';
    END IF;
    IF (SELECT p.mode FROM identity_merge.projects p WHERE p.project_id = a.project_id) = 'legacy' THEN
        RAISE NOTICE 'table % belongs to a legacy project: its stamps are final (aliases are not retroactive); nothing to restamp', events;
        RETURN;
    END IF;
    SELECT * INTO bad FROM identity_merge._column_problems(events, a.distinct_id_column, a.canonical_column) x
     WHERE x.code IN ('42703', '42804') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot restamp %: %', events, bad.problem USING ERRCODE = '55000',
            HINT = 'Re-attach the table with mp_attach naming its current columns, or mp_detach it.';
    END IF;
    total := pg_catalog.pg_relation_size(events) / pg_catalog.current_setting('block_size')::pg_catalog.int8;
    INSERT INTO identity_merge.restamp_progress AS p (events, next_block, blocks)
    VALUES (mp_restamp_all.events, 0, total)
    ON CONFLICT ON CONSTRAINT restamp_progress_pkey
    DO UPDATE SET blocks = greatest(p.blocks, EXCLUDED.blocks), updated_at = pg_catalog.now();
    SELECT p.next_block, p.rows_done INTO b, done FROM identity_merge.restamp_progress p WHERE p.events = mp_restamp_all.events;
    IF b > 0 THEN
        RAISE NOTICE 'resuming the restamp of % at block % of %', events, b, total;
    END IF;
    COMMIT;
    WHILE b < total LOOP
        EXECUTE pg_catalog.format(
            'UPDATE %1$s e SET %2$I = coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
            '    WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.distinct_id OPERATOR(pg_catalog.=) (e.%3$I::pg_catalog.text COLLATE "C")), e.%3$I::pg_catalog.text) '
            'WHERE e.ctid OPERATOR(pg_catalog.>=) pg_catalog.format(''(%%s,0)'', $2)::pg_catalog.tid '
            '  AND e.ctid OPERATOR(pg_catalog.<) pg_catalog.format(''(%%s,0)'', $3)::pg_catalog.tid '
            '  AND (e.%2$I)::pg_catalog.text COLLATE "C" IS DISTINCT FROM coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
            '    WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.distinct_id OPERATOR(pg_catalog.=) (e.%3$I::pg_catalog.text COLLATE "C")), e.%3$I::pg_catalog.text)',
            events, a.canonical_column, a.distinct_id_column) USING a.project_id, b, b + batch_blocks;
        GET DIAGNOSTICS n = ROW_COUNT;
        b := b + batch_blocks;
        done := done + n;
        UPDATE identity_merge.restamp_progress p SET next_block = b, rows_done = done, updated_at = pg_catalog.now()
         WHERE p.events = mp_restamp_all.events;
        RAISE NOTICE 'restamp of %: blocks % of % done, % rows changed', events, least(b, total), total, done;
        COMMIT;
    END LOOP;
    DELETE FROM identity_merge.restamp_progress p WHERE p.events = mp_restamp_all.events;
    COMMIT;
END $$;

CREATE OR REPLACE FUNCTION identity_merge._forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM identity_merge.attachments a
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0
       AND a.events::pg_catalog.oid = d.objid;
    DELETE FROM identity_merge.restamp_progress r
     USING pg_catalog.pg_event_trigger_dropped_objects() d
     WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objsubid = 0
       AND r.events::pg_catalog.oid = d.objid;
END $$;

-- mp_attach takes the columns holding the device and the user id (a Segment table's
-- anonymous_id and user_id): a new signature, so the old function goes, its grants carried over.
CREATE TEMP TABLE identity_merge_attach_grantees AS
    SELECT a.grantee::regrole AS grantee
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid = 'mp_attach(regclass, text, name, name, boolean)'::pg_catalog.regprocedure
       AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner;
DROP FUNCTION mp_attach(regclass, text, name, name, boolean);
CREATE FUNCTION mp_attach(events regclass, project text DEFAULT 'default',
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
    PERFORM identity_merge._register_attachment(events, p.project_id, distinct_id_column, canonical_column);
END $$;
COMMENT ON FUNCTION mp_attach(regclass, text, name, name, boolean, name, name) IS 'Puts the stamping trigger on an event table';
REVOKE ALL ON FUNCTION mp_attach(regclass, text, name, name, boolean, name, name) FROM PUBLIC;
DO $$
DECLARE
    r regrole;
BEGIN
    FOR r IN SELECT grantee FROM identity_merge_attach_grantees LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_attach(regclass, text, name, name, boolean, name, name) TO %s', r);
    END LOOP;
END $$;
DROP TABLE identity_merge_attach_grantees;

CREATE OR REPLACE FUNCTION mp_grant_writer(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'identity_merge');
BEGIN
    EXECUTE format('SELECT %I.mp_grant_reader(%L::regrole)', s, role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_identify(text, text, text), %1$I.mp_alias(text, text, text), '
                   '%1$I.mp_merge(text, text, text), %1$I.mp_merge(text[], text), '
                   '%1$I.mp_identity_create(jsonb), %1$I.mp_identity_create_alias(jsonb), %1$I.mp_identity_merge(jsonb), '
                   '%1$I.mp_track(jsonb), %1$I.mp_segment(jsonb, text), identity_merge._segment(text, text), '
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
END $$;

CREATE FUNCTION mp_schedule_restamp(events regclass, every interval DEFAULT '1 hour') RETURNS bigint
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                WHERE e.extname = 'identity_merge');
    secs bigint := extract(epoch FROM every)::bigint;
    schedule text;
    job bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'pg_cron is not installed in database %', current_database() USING ERRCODE = '0A000',
            HINT = 'Install postgresql-15-cron, add pg_cron to shared_preload_libraries, set cron.database_name to this database and CREATE EXTENSION pg_cron; '
                   'or run SELECT mp_restamp(table) from a scheduler of your own.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM identity_merge.attachments a WHERE a.events = mp_schedule_restamp.events) THEN
        RAISE EXCEPTION 'table % is not attached to identity_merge', events USING ERRCODE = '55000',
            HINT = 'Attach it with mp_attach first.';
    END IF;
    schedule := CASE
        WHEN secs >= 60 AND secs < 3600 AND secs % 60 = 0 AND 60 % (secs / 60) = 0 THEN
            CASE secs WHEN 60 THEN '* * * * *' ELSE format('*/%s * * * *', secs / 60) END
        WHEN secs >= 3600 AND secs < 86400 AND secs % 3600 = 0 AND 24 % (secs / 3600) = 0 THEN
            CASE secs WHEN 3600 THEN '0 * * * *' ELSE format('0 */%s * * *', secs / 3600) END
        WHEN secs = 86400 THEN '0 0 * * *'
    END;
    IF schedule IS NULL OR every <> make_interval(secs => secs) THEN
        RAISE EXCEPTION 'invalid schedule: every %', every USING ERRCODE = '22023',
            HINT = 'A whole number of minutes dividing an hour (1, 5, 15, 30 minutes...), of hours dividing a day, or 1 day.';
    END IF;
    EXECUTE 'SELECT cron.schedule($1, $2, $3)'
       INTO job
      USING 'identity_merge restamp ' || events::text, schedule,
            format('SELECT %I.mp_restamp(%L::regclass)', s, events::text);
    RETURN job;
END $$;

CREATE FUNCTION mp_unschedule_restamp(events regclass) RETURNS boolean
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found_job boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT 1 FROM cron.job WHERE jobname = $1 AND username = current_user)'
       INTO found_job USING 'identity_merge restamp ' || events::text;
    IF found_job THEN
        EXECUTE 'SELECT cron.unschedule($1)' USING 'identity_merge restamp ' || events::text;
    END IF;
    RETURN found_job;
END $$;

-- History from the tables a user already has (since 0.1.5): builds mp_backfill's source query
-- (operation, id_a, id_b in time order) from an attached event table, by the project's mode:
-- Original reads the $identify / $create_alias / $merge rows' properties, Legacy the
-- $create_alias rows, Simplified links the device and user id columns of rows carrying both.
-- `order_by` names the column giving time order (default: time, timestamp, received_at or
-- created_at, the first the table has). Administrators, as mp_backfill.
CREATE FUNCTION mp_backfill_from(events regclass, order_by name DEFAULT NULL)
RETURNS TABLE (events_read bigint, joins bigint, refused bigint, ids_written bigint, clusters_written bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a identity_merge.attachments;
    p identity_merge.projects;
    args text[];
    rest bytea;
    k integer;
    ord name;
    device name;
    usr name;
    src text;
    s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                WHERE e.extname = 'identity_merge');
BEGIN
    IF events IS NULL THEN
        RAISE EXCEPTION 'events is NULL' USING ERRCODE = '22004', HINT = 'Name an attached event table.';
    END IF;
    SELECT * INTO a FROM identity_merge.attachments x WHERE x.events = mp_backfill_from.events;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not attached to identity_merge', events USING ERRCODE = '55000',
            HINT = 'Attach it with mp_attach (which names its project), or pass Segment''s identifies and aliases tables with a project.';
    END IF;
    SELECT * INTO p FROM identity_merge.projects x WHERE x.project_id = a.project_id;
    ord := coalesce(order_by, (SELECT u.c FROM unnest(ARRAY['time', 'timestamp', 'received_at', 'created_at']::name[]) WITH ORDINALITY u(c, i)
                                WHERE EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = events AND t.attname = u.c
                                                AND t.attnum > 0 AND NOT t.attisdropped)
                                ORDER BY u.i LIMIT 1));
    IF ord IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = events AND t.attname = ord
                                    AND t.attnum > 0 AND NOT t.attisdropped) THEN
        RAISE EXCEPTION 'no column gives % a time order: %', events,
              coalesce(quote_ident(order_by), 'none of time, timestamp, received_at, created_at')
            USING ERRCODE = '42703', HINT = 'Pass order_by => the column holding each event''s time.';
    END IF;
    IF p.mode = 'simplified' THEN
        -- The device and user id columns the stamping trigger reads (its 4th and 5th arguments).
        SELECT t.tgargs INTO rest FROM pg_trigger t WHERE t.tgrelid = events AND t.tgname = 'identity_merge_stamp';
        args := '{}';
        LOOP
            k := position('\x00'::bytea IN rest);
            EXIT WHEN k IS NULL OR k = 0;
            args := args || convert_from(substring(rest FROM 1 FOR k - 1), getdatabaseencoding());
            rest := substring(rest FROM k + 1);
        END LOOP;
        device := coalesce(nullif(args[4], ''), '$device_id');
        usr := coalesce(nullif(args[5], ''), '$user_id');
        src := format('SELECT ''link'', %1$I::text, %2$I::text FROM %3$s WHERE %1$I IS NOT NULL AND %2$I IS NOT NULL ORDER BY %4$I',
                      usr, device, events, ord);
    ELSE
        src := format('SELECT CASE event WHEN ''$identify'' THEN ''identify'' WHEN ''$create_alias'' THEN ''alias'' ELSE ''merge'' END, '
                      '  CASE event WHEN ''$identify'' THEN properties::jsonb->>''$identified_id'' '
                      '             WHEN ''$create_alias'' THEN properties::jsonb->>''alias'' '
                      '             ELSE properties::jsonb->''$distinct_ids''->>0 END, '
                      '  CASE event WHEN ''$identify'' THEN properties::jsonb->>''$anon_id'' '
                      '             WHEN ''$create_alias'' THEN properties::jsonb->>''distinct_id'' '
                      '             ELSE properties::jsonb->''$distinct_ids''->>1 END '
                      'FROM %1$s WHERE event::text = ANY (%3$L::text[]) ORDER BY %2$I',
                      events, ord,
                      CASE p.mode WHEN 'legacy' THEN '{$create_alias}' ELSE '{$identify,$create_alias,$merge}' END);
    END IF;
    RETURN QUERY EXECUTE format('SELECT * FROM %I.mp_backfill($1, $2)', s) USING src, p.token;
END $$;

-- The same from Segment / RudderStack warehouse tables: identifies (anonymous_id, user_id) and
-- aliases (previous_id, user_id), merged in time order into project's history: Simplified links
-- the devices, Original makes identifies $identify and aliases $create_alias.
CREATE FUNCTION mp_backfill_from(identifies regclass, aliases regclass, project text, order_by name DEFAULT 'timestamp')
RETURNS TABLE (events_read bigint, joins bigint, refused bigint, ids_written bigint, clusters_written bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
    parts text[] := '{}';
    s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                WHERE e.extname = 'identity_merge');
BEGIN
    p := identity_merge._project(project);
    IF identifies IS NOT NULL THEN
        parts := parts || format('SELECT %1$L::text AS op, user_id::text AS a, anonymous_id::text AS b, %3$I AS t FROM %2$s '
                                 'WHERE user_id IS NOT NULL AND anonymous_id IS NOT NULL',
                                 CASE p.mode WHEN 'simplified' THEN 'link' ELSE 'identify' END, identifies, order_by);
    END IF;
    IF aliases IS NOT NULL THEN
        parts := parts || format('SELECT %1$L::text, user_id::text, previous_id::text, %3$I FROM %2$s '
                                 'WHERE user_id IS NOT NULL AND previous_id IS NOT NULL',
                                 CASE p.mode WHEN 'simplified' THEN 'link' ELSE 'alias' END, aliases, order_by);
    END IF;
    IF cardinality(parts) = 0 THEN
        RAISE EXCEPTION 'no table to read' USING ERRCODE = '22004', HINT = 'Pass Segment''s identifies table, its aliases table, or both.';
    END IF;
    RETURN QUERY EXECUTE format('SELECT * FROM %I.mp_backfill($1, $2)', s)
        USING format('SELECT op, a, b FROM (%s) h ORDER BY t', array_to_string(parts, ' UNION ALL ')), p.token;
END $$;

COMMENT ON FUNCTION mp_backfill_from(regclass, name) IS 'mp_backfill with the history read from an attached event table (administrators)';
COMMENT ON FUNCTION mp_backfill_from(regclass, regclass, text, name) IS 'mp_backfill with the history read from Segment''s identifies and aliases tables (administrators)';
COMMENT ON FUNCTION mp_schedule_restamp(regclass, interval) IS 'Runs mp_restamp(table) on a schedule with pg_cron; returns the job id';
COMMENT ON FUNCTION mp_unschedule_restamp(regclass) IS 'Removes the schedule of mp_schedule_restamp';
COMMENT ON FUNCTION mp_segment(jsonb, text) IS 'Segment / RudderStack spec payloads (one message or a batch): applies what each means for identity, answers IdentityResponse';
COMMENT ON PROCEDURE mp_restamp_all(regclass, integer) IS 'Stamps every row of an attached table in committed batches, resumable (CALL it)';

-- Nothing is executable by PUBLIC; the roles that may feed mp_track may feed mp_segment, and
-- those that may restamp may restamp every row (and keep its progress).
REVOKE ALL ON ROUTINE mp_segment(jsonb, text), identity_merge._segment(text, text), mp_restamp_all(regclass, integer),
    mp_schedule_restamp(regclass, interval), mp_unschedule_restamp(regclass),
    mp_backfill_from(regclass, name), mp_backfill_from(regclass, regclass, text, name) FROM PUBLIC;
DO $$
DECLARE
    r regrole;
BEGIN
    FOR r IN SELECT a.grantee::regrole
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid = 'mp_track(jsonb)'::pg_catalog.regprocedure
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_segment(jsonb, text), identity_merge._segment(text, text) TO %s', r);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON PROCEDURE mp_restamp_all(regclass, integer) TO %s', r);
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_schedule_restamp(regclass, interval), mp_unschedule_restamp(regclass) TO %s', r);
        EXECUTE pg_catalog.format('GRANT SELECT, INSERT, UPDATE, DELETE ON identity_merge.restamp_progress TO %s', r);
    END LOOP;
END $$;
