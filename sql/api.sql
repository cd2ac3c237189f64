-- identity_merge: the SQL functions that need no Rust (projects, clusters, attaching event
-- tables, restamping). Loaded last by CREATE EXTENSION (extension_sql_file!, finalize).
-- Each pins its search_path and qualifies what it uses.

CREATE FUNCTION mp_create_project(token text, mode text DEFAULT 'original') RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM identity_merge._no_nulls('mp_create_project', '{token,mode}', ARRAY[token IS NULL, mode IS NULL]);
    IF mode NOT IN ('original', 'simplified', 'legacy') THEN
        RAISE EXCEPTION 'invalid mode: %', quote_literal(mode) USING ERRCODE = '22023',
            HINT = 'mode is ''original'', ''simplified'' or ''legacy''.';
    END IF;
    IF btrim(token) = '' OR length(token) > 255 THEN
        RAISE EXCEPTION 'invalid project token: %', quote_literal(token) USING ERRCODE = '22023',
            HINT = 'A token is 1 to 255 characters, not blank.';
    END IF;
    IF EXISTS (SELECT 1 FROM identity_merge.projects p WHERE p.token = mp_create_project.token) THEN
        RAISE EXCEPTION 'project % already exists', quote_literal(token) USING ERRCODE = '42710',
            HINT = 'Pick another token or use the existing project.';
    END IF;
    INSERT INTO identity_merge.projects (token, mode) VALUES (token, mode);
END $$;

CREATE FUNCTION mp_set_project_mode(token text, mode text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
BEGIN
    PERFORM identity_merge._no_nulls('mp_set_project_mode', '{token,mode}', ARRAY[token IS NULL, mode IS NULL]);
    IF mode NOT IN ('original', 'simplified', 'legacy') THEN
        RAISE EXCEPTION 'invalid mode: %', quote_literal(mode) USING ERRCODE = '22023',
            HINT = 'mode is ''original'', ''simplified'' or ''legacy''.';
    END IF;
    p := identity_merge._project(token);
    -- Lock the project row so no identity can be written between the check and the switch.
    PERFORM 1 FROM identity_merge.projects WHERE project_id = p.project_id FOR UPDATE;
    IF EXISTS (SELECT 1 FROM identity_merge.identities i WHERE i.project_id = p.project_id) THEN
        RAISE EXCEPTION 'project % already holds identities; its mode can no longer change', quote_literal(token)
            USING ERRCODE = '55000', HINT = 'Create a new project for the other mode.';
    END IF;
    UPDATE identity_merge.projects SET mode = mp_set_project_mode.mode WHERE project_id = p.project_id;
END $$;

-- Settings of a project, one row per setting.
CREATE FUNCTION mp_project_settings(token text DEFAULT 'default')
RETURNS TABLE (setting text, value text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
BEGIN
    p := identity_merge._project(token);
    RETURN QUERY VALUES ('mode', p.mode),
                        ('max_cluster_size', p.max_cluster_size::text),
                        ('anon_id_format', p.anon_id_format),
                        ('blocked_ids', p.blocked_ids::text),
                        ('carry_device_profile', CASE WHEN p.carry_device_profile THEN 'on' ELSE 'off' END);
END $$;

-- Changes one setting: max_cluster_size (integer >= 2), anon_id_format ('uuid' | 'any'),
-- blocked_ids (a text[] literal; compared case-insensitively after trimming),
-- carry_device_profile ('on' | 'off'). A NULL value resets the setting to its default.
CREATE FUNCTION mp_set_project_setting(token text, setting text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
    blocked text[];
BEGIN
    PERFORM identity_merge._no_nulls('mp_set_project_setting', '{token,setting}', ARRAY[token IS NULL, setting IS NULL]);
    p := identity_merge._project(token);
    IF value IS NULL AND setting IN ('max_cluster_size', 'anon_id_format', 'blocked_ids', 'carry_device_profile') THEN
        EXECUTE format('UPDATE identity_merge.projects SET %I = DEFAULT WHERE project_id = $1', setting) USING p.project_id;
        RETURN;
    END IF;
    CASE setting
    WHEN 'max_cluster_size' THEN
        IF value !~ '^[0-9]{1,9}$' OR value::integer < 2 THEN
            RAISE EXCEPTION 'invalid max_cluster_size: %', quote_literal(value) USING ERRCODE = '22023',
                HINT = 'An integer of at least 2.';
        END IF;
        UPDATE identity_merge.projects SET max_cluster_size = value::integer WHERE project_id = p.project_id;
    WHEN 'anon_id_format' THEN
        IF value NOT IN ('uuid', 'any') THEN
            RAISE EXCEPTION 'invalid anon_id_format: %', quote_literal(value) USING ERRCODE = '22023',
                HINT = '''uuid'' or ''any''.';
        END IF;
        UPDATE identity_merge.projects SET anon_id_format = value WHERE project_id = p.project_id;
    WHEN 'blocked_ids' THEN
        BEGIN
            blocked := value::text[];
        EXCEPTION WHEN invalid_text_representation THEN
            RAISE EXCEPTION 'invalid blocked_ids: %', quote_literal(value) USING ERRCODE = '22P02',
                HINT = 'A text[] literal, such as ''{anonymous,"not set"}'' (or NULL for the default list).';
        END;
        UPDATE identity_merge.projects
           SET blocked_ids = ARRAY(SELECT DISTINCT lower(btrim(b)) FROM unnest(blocked) b WHERE b IS NOT NULL)
         WHERE project_id = p.project_id;
    WHEN 'carry_device_profile' THEN
        IF value NOT IN ('on', 'off') THEN
            RAISE EXCEPTION 'invalid carry_device_profile: %', quote_literal(value) USING ERRCODE = '22023',
                HINT = '''on'' or ''off''.';
        END IF;
        UPDATE identity_merge.projects SET carry_device_profile = (value = 'on') WHERE project_id = p.project_id;
    ELSE
        RAISE EXCEPTION 'unknown setting: %', quote_literal(setting) USING ERRCODE = '22023',
            HINT = 'Settings are max_cluster_size, anon_id_format, blocked_ids and carry_device_profile.';
    END CASE;
END $$;

-- Every id in the same cluster as distinct_id (an id never seen is alone in its cluster).
CREATE FUNCTION mp_cluster(distinct_id text, project text DEFAULT 'default') RETURNS SETOF text
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pid integer := (identity_merge._project(project)).project_id;
    canon text;
BEGIN
    SELECT i.canonical_id INTO canon FROM identity_merge.identities i
     WHERE i.project_id = pid AND i.distinct_id = mp_cluster.distinct_id;
    IF NOT FOUND THEN
        RETURN NEXT distinct_id;
        RETURN;
    END IF;
    RETURN QUERY SELECT i.distinct_id FROM identity_merge.identities i
                  WHERE i.project_id = pid AND i.canonical_id = canon ORDER BY i.distinct_id;
END $$;

-- The attachments registry is written with the extension owner's rights, and only to record a
-- fact the caller proved by creating (or dropping) the trigger on the table, which takes owning it.
-- Implemented in Rust (src/attach.rs): it checks, as the caller, that the caller owns the table
-- and that the table's identity_merge_stamp trigger says exactly this project and these columns.
CREATE FUNCTION identity_merge._register_attachment(p_events regclass, p_project integer,
                                                    p_distinct name, p_canonical name) RETURNS void
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE AS 'MODULE_PATHNAME', '_register_attachment_wrapper';

-- Administrators' functions given a NULL argument say so (22004) instead of silently doing
-- nothing; `names` and `is_null` are the arguments in order.
CREATE FUNCTION identity_merge._no_nulls(fn text, names text[], is_null boolean[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k integer;
BEGIN
    FOR k IN 1 .. cardinality(names) LOOP
        IF is_null[k] THEN
            RAISE EXCEPTION '%: argument % is NULL', fn, names[k] USING ERRCODE = '22004',
                HINT = format('Pass a value for %s (NULL is not a default).', names[k]);
        END IF;
    END LOOP;
END $$;

-- The arguments of a table's stamping trigger (project, distinct_id column, canonical column
-- and, when given at attach, the device and user id columns), or NULL without one: the one
-- place SQL reads them.
CREATE FUNCTION identity_merge._trigger_args(p_events regclass) RETURNS text[]
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rest bytea;
    args text[] := '{}';
    k integer;
BEGIN
    SELECT t.tgargs INTO rest FROM pg_trigger t WHERE t.tgrelid = p_events AND t.tgname = 'identity_merge_stamp';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    LOOP
        k := position('\x00'::bytea IN rest);
        EXIT WHEN k IS NULL OR k = 0;
        args := args || convert_from(substring(rest FROM 1 FOR k - 1), getdatabaseencoding());
        rest := substring(rest FROM k + 1);
    END LOOP;
    RETURN args;
END $$;

-- Work on a user's table done on another role's behalf runs as the table's owner in a
-- security-restricted operation (src/owner.rs, docs/security.md): mp_restamp's statements...
CREATE FUNCTION identity_merge._exec_as_owner(p_events regclass, p_sql text) RETURNS bigint
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE AS 'MODULE_PATHNAME', '_exec_as_owner_wrapper';

-- ... and mp_backfill_from's read of the history: Segment's tables as (operation, id_a, id_b)
-- rows, an attached event table as its rows (event, properties, device_id, user_id), each planned
-- in Rust as the stamping trigger plans it (src/core/ingest.rs).
CREATE FUNCTION identity_merge._backfill_from_table(source text, project text, p_events regclass)
RETURNS TABLE (events bigint, joins bigint, refused bigint, ids_written bigint, clusters_written bigint)
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE AS 'MODULE_PATHNAME', '_backfill_from_table_wrapper';

CREATE FUNCTION identity_merge._backfill_events_from_table(source text, project text, p_events regclass)
RETURNS TABLE (events bigint, joins bigint, refused bigint, ids_written bigint, clusters_written bigint)
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE AS 'MODULE_PATHNAME', '_backfill_events_from_table_wrapper';

-- Waits for the transactions writing these tables to end (mp_refresh_people's consistent point).
CREATE FUNCTION identity_merge._wait_for_writers(tables regclass[]) RETURNS void
LANGUAGE c VOLATILE STRICT PARALLEL UNSAFE AS 'MODULE_PATHNAME', '_wait_for_writers_wrapper';

-- The column types the trigger reads and writes (src/core/columns.rs, the one rule): ids ('id')
-- are text or varchar, 'properties' jsonb, json, text or varchar.
CREATE FUNCTION identity_merge._column_type_ok(kind text, typ regtype) RETURNS boolean
LANGUAGE c IMMUTABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', '_column_type_ok_wrapper';

-- The column the trigger reads the event name from (src/core/columns.rs, the one rule): "event",
-- or "event_name" in a table without one (Mixpanel's data-pipeline export); NULL when neither.
CREATE FUNCTION identity_merge._event_column(events regclass) RETURNS text
LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', '_event_column_wrapper';

-- The device and user id columns a stamping trigger with these arguments (_trigger_args) reads:
-- the ones named at attach, or "$device_id" and "$user_id" (src/core/attachment.rs, the one
-- rule); the defaults for a table without the trigger (NULL).
CREATE FUNCTION identity_merge._id_columns(targs text[]) RETURNS text[]
LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', '_id_columns_wrapper';

-- What keeps the stamping trigger from working on a table, one row per problem (none when it
-- can work): the columns it reads and writes must exist with types it handles. Ids (the
-- distinct_id and canonical columns, "event", "$device_id", "$user_id") are text or varchar, the
-- canonical column holds 255 characters and is not generated, "properties" is jsonb, json or
-- text; a table with INHERITS children is refused (their rows would not be stamped). mp_attach
-- raises the first problem, mp_restamp refuses a table whose columns no longer fit, mp_check
-- reports them all. Reads only catalogs, so it is executable by every role (granted below).
CREATE FUNCTION identity_merge._column_problems(p_events regclass, p_distinct name, p_canonical name)
RETURNS TABLE (code text, problem text, hint text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
    targs text[] := identity_merge._trigger_args(p_events);
    id_columns text[] := identity_merge._id_columns(targs);
BEGIN
    -- The device and user id columns named at attach (the trigger's 4th and 5th arguments) are
    -- required: one renamed or dropped would silently stop linking.
    FOR c IN SELECT n.ord, n.col, n.kind, n.required, a.atttypid, a.atttypmod, a.attgenerated, a.attnum IS NOT NULL AS present
               FROM (VALUES (1, p_distinct, 'id', true), (2, p_canonical, 'stamp', true),
                            (3, coalesce(identity_merge._event_column(p_events), 'event')::name, 'id', false), (4, 'properties'::name, 'json', false),
                            (5, id_columns[1]::name, 'id', coalesce(targs[4], '') <> ''),
                            (6, id_columns[2]::name, 'id', coalesce(targs[5], '') <> '')) n(ord, col, kind, required)
               LEFT JOIN pg_attribute a ON a.attrelid = p_events AND a.attname = n.col AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY NOT n.required OR a.attnum IS NOT NULL, n.ord
    LOOP
        IF NOT c.present THEN
            IF c.required THEN
                RETURN QUERY SELECT '42703'::text, format('column %s does not exist', quote_ident(c.col)),
                    CASE WHEN c.ord <= 2 THEN 'Name the distinct_id and canonical columns: mp_attach(table, project, distinct_id_column, canonical_column).'
                         ELSE 'It was named at attach as the device or user id column: re-attach with mp_attach naming the current device_id_column and user_id_column.' END;
            END IF;
            CONTINUE;
        END IF;
        IF c.kind = 'json' THEN
            IF NOT identity_merge._column_type_ok('properties', c.atttypid) THEN
                RETURN QUERY SELECT '42804'::text, format('column properties is of type %s, not jsonb, json or text', format_type(c.atttypid, c.atttypmod)),
                    'The trigger reads identity events from properties: make it jsonb (or json, text), or rename it.'::text;
            END IF;
        ELSIF NOT identity_merge._column_type_ok('id', c.atttypid) THEN
            RETURN QUERY SELECT '42804'::text, format('column %s is of type %s, not text', quote_ident(c.col), format_type(c.atttypid, c.atttypmod)),
                'Ids are text; use a text or varchar column (or rename a column that does not hold ids).'::text;
        ELSIF c.kind = 'stamp' AND c.atttypmod >= 0 AND c.atttypmod - 4 < 255 THEN
            RETURN QUERY SELECT '42804'::text, format('column %s is %s, shorter than the 255 characters a canonical id may have', quote_ident(c.col), format_type(c.atttypid, c.atttypmod)),
                'Use text or varchar(255) or longer for the canonical column.'::text;
        END IF;
        IF c.ord <= 2 AND c.attgenerated <> '' THEN
            RETURN QUERY SELECT '0A000'::text, format('column %s is a generated column', quote_ident(c.col)),
                'The trigger writes the canonical column and reads the distinct_id before generated columns are computed: use plain columns.'::text;
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid
                WHERE i.inhparent = p_events AND NOT k.relispartition) THEN
        RETURN QUERY SELECT '0A000'::text, 'it has INHERITS children, whose rows the trigger would not stamp'::text,
            'Attach each child table with mp_attach (partitioned tables are supported: their partitions get the trigger).'::text;
    END IF;
END $$;

CREATE FUNCTION identity_merge._unregister_attachment(p_events regclass) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = p_events AND t.tgname = 'identity_merge_stamp') THEN
        RAISE EXCEPTION 'table % still has its identity_merge_stamp trigger', p_events USING ERRCODE = '55000',
            HINT = 'Use mp_detach.';
    END IF;
    DELETE FROM identity_merge.attachments a WHERE a.events = p_events;
    PERFORM identity_merge._keep_fresh_projects();
END $$;

-- projects.keep_fresh, which the joins read (through the project cache), from the attachments:
-- the one place it is written (mp_attach, mp_keep_fresh, a table detached or dropped). In two
-- statements: on Citus, projects is a reference table and attachments the coordinator's own,
-- which one UPDATE may not mix.
CREATE FUNCTION identity_merge._keep_fresh_projects() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fresh integer[];
    changed integer[];
BEGIN
    SELECT coalesce(array_agg(DISTINCT a.project_id), '{}') INTO fresh FROM identity_merge.attachments a WHERE a.keep_fresh;
    SELECT array_agg(p.project_id) INTO changed FROM identity_merge.projects p
     WHERE p.keep_fresh IS DISTINCT FROM (p.project_id = ANY (fresh));
    IF changed IS NOT NULL THEN
        UPDATE identity_merge.projects p SET keep_fresh = (p.project_id = ANY (fresh)) WHERE p.project_id = ANY (changed);
    END IF;
END $$;

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

-- Puts the stamping trigger on an event table and registers it. Unless create_index is false,
-- creates an index on the canonical column when none leads with it (mp_restamp needs one to
-- stay proportional to the rows it changes).
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

CREATE FUNCTION mp_detach(events regclass) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    unsafe_triggers text;
BEGIN
    PERFORM identity_merge._no_nulls('mp_detach', '{events}', ARRAY[events IS NULL]);
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
    -- insert_id deduplication is a setting of the attachment (mp_dedup_insert_id): it goes too.
    IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = events AND t.tgname = 'identity_merge_dedup') THEN
        EXECUTE format('DROP TRIGGER identity_merge_dedup ON %s', events);
    END IF;
    PERFORM identity_merge._unregister_attachment(events);
END $$;

-- One restamp of a table at a time (mp_restamp, mp_restamp_all's batches, the maintenance
-- worker's keep_fresh restamps): two would update the same stale rows in different orders and
-- deadlock. The lock is held until the transaction ends.
CREATE FUNCTION identity_merge._lock_restamp(p_events regclass) RETURNS void
LANGUAGE sql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('identity_merge restamp ' OPERATOR(pg_catalog.||) p_events::pg_catalog.oid::pg_catalog.text, 0))
$$;

-- The maintenance worker's restamp of a keep_fresh table (src/engine/maintain.rs): the rows
-- stamped with these stale canonical ids get what their distinct_id resolves to now, as
-- mp_restamp gives them, as the table's owner. Rows whose stamp moved on meanwhile (the trigger,
-- a concurrent restamp) no longer match and are left alone.
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

-- Turns keep_fresh on or off for an attached table the caller owns (src/api/worker.rs checks
-- ownership): with it on, the maintenance worker restamps the table's stale rows after each
-- join or split. Also keeps projects.keep_fresh, which the joins read.
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

-- Brings stamped rows up to date after later merges and splits: afterwards every stamp equals
-- mp_resolve(distinct_id). The cost follows the stale rows, the merges and the splits, not the
-- table size (see below).
CREATE FUNCTION mp_restamp(events regclass) RETURNS bigint
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

-- Stamps every row of an attached table, also rows loaded before it was attached (NULL stamps),
-- in batches of `batch_blocks` heap blocks, each committed on its own (a TID range scan per
-- batch: no transaction spans the table). Progress is in identity_merge.restamp_progress and a
-- NOTICE per batch; an interrupted run resumes where it stopped. A procedure: CALL it outside a
-- transaction block. Rows whose stamp is already current are not written. (A procedure that
-- commits may not pin its search_path with SET: it qualifies what it calls instead, and runs
-- with the caller's rights, so a caller's search_path can only affect the caller.)
CREATE PROCEDURE mp_restamp_all(events regclass, batch_blocks integer DEFAULT 1000)
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
    id_columns text[];
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
        id_columns := identity_merge._id_columns(identity_merge._trigger_args(events));
        device := id_columns[1];
        usr := id_columns[2];
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

-- Stamps kept fresh on a schedule, with pg_cron (since 0.1.5): a job running mp_restamp(events)
-- every `every` (a whole number of minutes dividing an hour, of hours dividing a day, or one day:
-- pg_cron schedules by minute). Again for the same table: the schedule is replaced. pg_cron runs
-- its jobs in the database cron.database_name names, as the role that scheduled them.
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

-- Removes the schedule of mp_schedule_restamp; false when the table had none.
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

-- History from the tables a user already has (since 0.1.5): mp_backfill's history read from an
-- attached event table. Its query selects, in time order, the columns the stamping trigger reads
-- (event, properties as text and, in a Simplified project, the device and user id columns);
-- _backfill_events_from_table plans each row as the trigger plans it (src/core/ingest.rs):
-- what an event means is said there only. Its $1 is the identity event names, the only rows
-- the trigger reads in an Original or Legacy project; a Simplified project's rows are all read.
-- `order_by` names the column giving time order (default: time, timestamp, received_at or
-- created_at, the first the table has). Administrators, as mp_backfill.
CREATE FUNCTION mp_backfill_from(events regclass, order_by name DEFAULT NULL)
RETURNS TABLE (events_read bigint, joins bigint, refused bigint, ids_written bigint, clusters_written bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    a identity_merge.attachments;
    p identity_merge.projects;
    id_columns text[];
    bad record;
    ord name;
    typ oid;
    device name;
    usr name;
    ev name;
    has_properties boolean;
    src text;
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
    -- The columns are checked again now (a table's owner may have changed them since attach):
    -- the history is read only from columns of the built-in types the trigger reads.
    SELECT * INTO bad FROM identity_merge._column_problems(events, a.distinct_id_column, a.canonical_column) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'cannot read the history of %: %', events, bad.problem USING ERRCODE = bad.code, HINT = bad.hint;
    END IF;
    ord := coalesce(order_by, (SELECT u.c FROM unnest(ARRAY['time', 'timestamp', 'received_at', 'created_at']::name[]) WITH ORDINALITY u(c, i)
                                WHERE EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = events AND t.attname = u.c
                                                AND t.attnum > 0 AND NOT t.attisdropped)
                                ORDER BY u.i LIMIT 1));
    SELECT t.atttypid INTO typ FROM pg_attribute t WHERE t.attrelid = events AND t.attname = ord AND t.attnum > 0 AND NOT t.attisdropped;
    IF ord IS NULL OR typ IS NULL THEN
        RAISE EXCEPTION 'no column gives % a time order: %', events,
              coalesce(quote_ident(order_by), 'none of time, timestamp, received_at, created_at')
            USING ERRCODE = '42703', HINT = 'Pass order_by => the column holding each event''s time.';
    END IF;
    IF typ >= 16384 THEN
        RAISE EXCEPTION 'cannot order the history of % by column %: its type % is not a built-in type', events, quote_ident(ord), typ::regtype
            USING ERRCODE = '42804', HINT = 'Order by a timestamp, date, number or text column.';
    END IF;
    IF p.mode = 'simplified' THEN
        -- The device and user id columns the stamping trigger reads (its 4th and 5th arguments).
        id_columns := identity_merge._id_columns(identity_merge._trigger_args(events));
        device := id_columns[1];
        usr := id_columns[2];
        IF (SELECT count(*) FROM pg_attribute t WHERE t.attrelid = events AND t.attname IN (device, usr)
               AND t.attnum > 0 AND NOT t.attisdropped) < 2 THEN
            RAISE EXCEPTION 'cannot read the history of %: it has no column % or %', events, quote_ident(device), quote_ident(usr)
                USING ERRCODE = '42703',
                      HINT = 'A Simplified project''s history is the rows carrying both a device id and a user id: attach the table with device_id_column and user_id_column.';
        END IF;
        ev := identity_merge._event_column(events);
        has_properties := EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = events AND t.attname = 'properties' AND t.attnum > 0 AND NOT t.attisdropped);
        -- The trigger reads properties only for an id its column lacks: the others are not printed.
        src := format('SELECT %1$s, %2$s, %3$I::text, %4$I::text FROM %5$s ORDER BY %6$I',
                      CASE WHEN ev IS NOT NULL THEN format('%I::text', ev) ELSE 'NULL::text' END,
                      CASE WHEN has_properties THEN format('CASE WHEN %1$I IS NULL OR %2$I IS NULL THEN properties::text END', device, usr)
                           ELSE 'NULL::text' END,
                      device, usr, events, ord);
    ELSE
        ev := identity_merge._event_column(events);
        IF ev IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute t WHERE t.attrelid = events AND t.attname = 'properties'
               AND t.attnum > 0 AND NOT t.attisdropped) THEN
            RAISE EXCEPTION 'cannot read the history of %: it has no column event (or event_name) or properties', events USING ERRCODE = '42703',
                HINT = 'The identity events of an Original or Legacy project are rows with an event name and properties.';
        END IF;
        src := format('SELECT %3$I::text, properties::text, NULL::text, NULL::text FROM %1$s WHERE %3$I::text = ANY ($1) ORDER BY %2$I',
                      events, ord, ev);
    END IF;
    -- Read as the table's owner (src/owner.rs): its policies and types are its owner's code.
    RETURN QUERY SELECT * FROM identity_merge._backfill_events_from_table(src, p.token, events);
END $$;

-- The same from Segment / RudderStack warehouse tables: identifies (anonymous_id, user_id) and
-- aliases (previous_id, user_id), merged in time order into project's history: Simplified links
-- the devices, Original makes identifies $identify and aliases $create_alias. (Its rows are
-- mapped here to (operation, id_a, id_b): that is Segment's table layout, not an event's meaning.)
CREATE FUNCTION mp_backfill_from(identifies regclass, aliases regclass, project text, order_by name DEFAULT 'timestamp')
RETURNS TABLE (events_read bigint, joins bigint, refused bigint, ids_written bigint, clusters_written bigint)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
    parts text[] := '{}';
    t regclass;
    col name;
    typ oid;
    owners oid[];
BEGIN
    PERFORM identity_merge._no_nulls('mp_backfill_from', '{project,order_by}', ARRAY[project IS NULL, order_by IS NULL]);
    p := identity_merge._project(project);
    IF identifies IS NULL AND aliases IS NULL THEN
        RAISE EXCEPTION 'no table to read' USING ERRCODE = '22004', HINT = 'Pass Segment''s identifies table, its aliases table, or both.';
    END IF;
    -- Every column read must exist with a built-in type (ids text or varchar): a column of a
    -- type its owner made would run its owner's code.
    FOR t, col IN SELECT x.t, x.c FROM (VALUES (identifies, 'user_id'::name), (identifies, 'anonymous_id'), (identifies, order_by),
                                               (aliases, 'user_id'), (aliases, 'previous_id'), (aliases, order_by)) x(t, c)
                   WHERE x.t IS NOT NULL LOOP
        SELECT a.atttypid INTO typ FROM pg_attribute a WHERE a.attrelid = t AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'table % has no column %', t, quote_ident(col) USING ERRCODE = '42703',
                HINT = CASE WHEN col = order_by THEN 'Pass order_by => the column holding each call''s time (Segment''s is timestamp).'
                            ELSE 'Segment''s identifies table has user_id and anonymous_id, its aliases table user_id and previous_id.' END;
        END IF;
        IF col <> order_by AND NOT identity_merge._column_type_ok('id', typ) THEN
            RAISE EXCEPTION 'column % of % is of type %, not text', quote_ident(col), t, typ::regtype USING ERRCODE = '42804',
                HINT = 'Ids are text; use a text or varchar column.';
        END IF;
        IF typ >= 16384 THEN
            RAISE EXCEPTION 'cannot order the history of % by column %: its type % is not a built-in type', t, quote_ident(col), typ::regtype
                USING ERRCODE = '42804', HINT = 'Order by a timestamp, date, number or text column.';
        END IF;
    END LOOP;
    -- Both tables are read in one query, as their owner (src/owner.rs): one owner.
    owners := ARRAY(SELECT DISTINCT c.relowner FROM pg_class c WHERE c.oid IN (identifies, aliases));
    IF cardinality(owners) > 1 THEN
        RAISE EXCEPTION 'tables % and % have different owners', identifies, aliases USING ERRCODE = '42501',
            HINT = 'The history is read as the tables'' owner: give both tables the same owner.';
    END IF;
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
    RETURN QUERY SELECT * FROM identity_merge._backfill_from_table(
        format('SELECT op, a, b FROM (%s) h ORDER BY t', array_to_string(parts, ' UNION ALL ')), p.token, coalesce(identifies, aliases));
END $$;

-- Brings identity_merge.people up to date for one project: recomputes the profile of every person
-- whose ids or updates changed since the last refresh (joins, retractions and Engage updates
-- since then), and removes rows of canonical ids that stopped being one. The cost follows what
-- changed, not the project. Returns how many rows it wrote or removed.
CREATE FUNCTION mp_refresh_people(project text DEFAULT 'default') RETURNS bigint
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
    IF identity_merge._distributed() THEN
        -- On Citus the ids come from the coordinator in write order (sql/scaling.sql).
        SELECT (SELECT coalesce(max(seq), 0) FROM identity_merge.merge_log WHERE project_id = p.project_id) AS merge_seq,
               (SELECT coalesce(max(retraction_id), 0) FROM identity_merge.retractions WHERE project_id = p.project_id) AS retraction_id,
               (SELECT coalesce(max(update_id), 0) FROM identity_merge.profile_updates WHERE project_id = p.project_id) AS update_id
          INTO top;
    ELSE
        -- Ids are handed out at insert, not at commit: the highest id read could be followed by a
        -- lower one committed later. So: the ids handed out so far (the sequences), then a wait
        -- for every transaction writing these tables; each row with an id up to those is then
        -- committed, and seen by the statements below, or gone.
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'mp_refresh_people needs READ COMMITTED, not %', current_setting('transaction_isolation')
                USING ERRCODE = '0A000', HINT = 'Call it in its own transaction: it must see what commits while it waits.';
        END IF;
        SELECT (SELECT CASE WHEN q.is_called THEN q.last_value ELSE q.last_value - 1 END FROM identity_merge.merge_log_seq_seq q) AS merge_seq,
               (SELECT CASE WHEN q.is_called THEN q.last_value ELSE q.last_value - 1 END FROM identity_merge.retractions_retraction_id_seq q) AS retraction_id,
               (SELECT CASE WHEN q.is_called THEN q.last_value ELSE q.last_value - 1 END FROM identity_merge.profile_updates_update_id_seq q) AS update_id
          INTO top;
        PERFORM identity_merge._wait_for_writers(ARRAY['identity_merge.merge_log', 'identity_merge.retractions',
                                                       'identity_merge.profile_updates']::regclass[]);
    END IF;
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

-- Every write to identities or projects tells the per-backend caches (src/cache.rs).
CREATE TRIGGER notify_caches AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON identity_merge.identities
    FOR EACH STATEMENT EXECUTE FUNCTION identity_merge.notify_caches();
CREATE TRIGGER notify_caches AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON identity_merge.projects
    FOR EACH STATEMENT EXECUTE FUNCTION identity_merge.notify_caches();

-- The seed's HTTP API shapes: request bodies in, IdentityResponse out (src/json_api.rs).
-- The jsonb is handed over as text so that every failure is an answer, never an error.
CREATE FUNCTION mp_identity_create(body jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._identity_create(body::text) $$;

CREATE FUNCTION mp_identity_create_alias(body jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._identity_create_alias(body::text) $$;

CREATE FUNCTION mp_identity_merge(body jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._identity_merge(body::text) $$;

-- Segment / RudderStack spec payloads (since 0.1.5): identify, track, page, screen, group and
-- alias messages, one or a {"batch": [...]}; the project is `project`, else the writeKey.
CREATE FUNCTION mp_segment(payload jsonb, project text DEFAULT NULL) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._segment(payload::text, project) $$;

-- Mixpanel /engage bodies (since 0.1.6): one profile update or an array of them.
CREATE FUNCTION mp_engage(payload jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._engage(payload::text) $$;

-- The seed's "Create an Identity" (POST /identity) body (since 0.1.6): the Identity object, or
-- the seed's 400 Bad Request naming the field (src/records.rs).
CREATE FUNCTION mp_identity_record_create(body jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._identity_record_create(body::text) $$;

CREATE FUNCTION mp_track(payload jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._track(payload::text) $$;

-- Every violation of the identity invariants in a project, one row each; no rows when all hold.
-- Structural checks here, the merge-log replay in Rust (identity_merge._check_log).
CREATE FUNCTION mp_check(project text DEFAULT 'default') RETURNS TABLE (check_name text, detail text)
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    proj identity_merge.projects := identity_merge._project(project);
    pid integer := proj.project_id;
    legacy boolean := proj.mode = 'legacy';
    a identity_merge.attachments;
    bad record;
    broken boolean;
    id_columns text[];
    fillable text;
    token text := proj.token;
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
            id_columns := identity_merge._id_columns(identity_merge._trigger_args(a.events));
            SELECT format(' OR identity_merge._row_distinct_id(%L, %s, %s) IS NOT NULL', token,
                          coalesce(max(format('e.%I::text', t.attname)) FILTER (WHERE t.attname = id_columns[1]), 'NULL'),
                          coalesce(max(format('e.%I::text', t.attname)) FILTER (WHERE t.attname = id_columns[2]), 'NULL'))
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

-- Statistics (since 0.1.14, src/sync/stats.rs): counters in shared memory per project of this
-- database, moved there when each transaction commits; the maintenance worker of this database.
CREATE FUNCTION identity_merge._stats()
RETURNS TABLE (project_id integer, rows_stamped bigint, events_applied bigint, events_queued bigint,
               events_refused bigint, joins bigint, splits bigint, cache_hits bigint, cache_misses bigint)
LANGUAGE c VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', '_stats_wrapper';

CREATE FUNCTION identity_merge._worker()
RETURNS TABLE (pid integer, state text, started_at timestamptz, last_apply_at timestamptz,
               last_restamp_at timestamptz, events_applied bigint, rows_restamped bigint)
LANGUAGE c VOLATILE PARALLEL SAFE AS 'MODULE_PATHNAME', '_worker_wrapper';

-- One row per project: what was stamped and applied, the Citus queue and the stale stamps
-- waiting, and the maintenance worker (docs/functions.md#statistics). The view reads through a
-- function, so that it depends on no table: on Citus, mp_undistribute recreates the replicated
-- tables, which a view depending on them would forbid.
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

-- Zeroes this database's counters (administrators).
CREATE FUNCTION mp_stats_reset() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'mp_stats_reset_wrapper';
COMMENT ON FUNCTION mp_stats_reset() IS 'Zeroes the counters of identity_merge.stats in this database';

-- Wakes the maintenance workers' launcher: a database that creates the extension gets its worker
-- at once (when identity_merge is in shared_preload_libraries; nothing otherwise).
CREATE FUNCTION identity_merge._wake_launcher() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', '_wake_launcher_wrapper';
SELECT identity_merge._wake_launcher();

-- Rights to read: resolve ids, list clusters, read settings and the state tables, run mp_check.
CREATE FUNCTION mp_grant_reader(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'identity_merge');
        propagation text := identity_merge._grant_on_workers('mp_grant_reader', role);
BEGIN
    PERFORM identity_merge._no_nulls('mp_grant_reader', '{role}', ARRAY[role IS NULL]);
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

-- Rights to change identities through the functions (never the tables directly), to feed the
-- JSON API, and to attach event tables the role owns.
CREATE FUNCTION mp_grant_writer(role regrole) RETURNS void
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

-- A dropped table leaves no registration behind (its oid could later name another table).
-- Runs for every role's DROP with the owner's rights, and only deletes rows of dropped tables.
CREATE FUNCTION identity_merge._forget_dropped_tables() RETURNS event_trigger
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
CREATE EVENT TRIGGER identity_merge_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION identity_merge._forget_dropped_tables();

-- Refused rows carry the event row's properties: a role sees those of tables it may read (and
-- the ones without a table, from the functions), not every table's.
ALTER TABLE identity_merge.rejections ENABLE ROW LEVEL SECURITY;
CREATE POLICY rows_of_readable_tables ON identity_merge.rejections FOR SELECT
    USING (source_table IS NULL OR coalesce(pg_catalog.has_table_privilege(source_table::pg_catalog.oid, 'SELECT'), false));

-- A role keeps the restamp progress of the tables it owns only.
ALTER TABLE identity_merge.restamp_progress ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_tables ON identity_merge.restamp_progress
    USING (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = events::pg_catalog.oid), 'MEMBER'))
    WITH CHECK (pg_catalog.pg_has_role((SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = events::pg_catalog.oid), 'MEMBER'));

-- Descriptions shown by \df+ (since 0.1.1).
COMMENT ON FUNCTION mp_identify(text, text, text) IS 'The $identify event: joins anon_id''s cluster to identified_id''s; returns the canonical distinct_id';
COMMENT ON FUNCTION mp_alias(text, text, text) IS 'The $create_alias event: alias joins distinct_id''s cluster; returns the canonical distinct_id';
COMMENT ON FUNCTION mp_merge(text, text, text) IS 'The $merge event: joins the two clusters; returns the canonical distinct_id';
COMMENT ON FUNCTION mp_merge(text[], text) IS 'The $merge event with $distinct_ids (exactly two ids)';
COMMENT ON FUNCTION mp_resolve(text, text) IS 'The canonical distinct_id of an id (itself when never seen)';
COMMENT ON FUNCTION mp_cluster(text, text) IS 'Every id in the same cluster';
COMMENT ON FUNCTION mp_attach(regclass, text, name, name, boolean, name, name, boolean) IS 'Puts the stamping trigger on an event table';
COMMENT ON FUNCTION mp_keep_fresh(regclass, boolean) IS 'Turns on (or off) the maintenance worker''s restamps of an attached table after each join or split';
COMMENT ON FUNCTION mp_restamp(regclass) IS 'Brings stamped rows up to date after later merges; returns rows changed';
COMMENT ON FUNCTION mp_backfill(text, text) IS 'Applies a history of identity events in one pass (administrators)';
COMMENT ON FUNCTION mp_check(text) IS 'Every violation of the identity invariants (no rows when all hold)';
COMMENT ON FUNCTION mp_explain(text, text) IS 'Why an id is in its cluster: the chain of logged joins to its canonical id, with their provenance';
COMMENT ON FUNCTION mp_explain(text, text, text) IS 'Why two ids are one person: the chain of logged joins between them (project required)';
COMMENT ON FUNCTION mp_split(text, text) IS 'Retracts every join the id took part in: its cluster becomes the clusters of the joins that remain';
COMMENT ON FUNCTION mp_unjoin(bigint) IS 'Retracts one logged join (merge_log.seq), as mp_split does';
COMMENT ON FUNCTION mp_segment(jsonb, text) IS 'Segment / RudderStack spec payloads (one message or a batch): applies what each means for identity, answers IdentityResponse';
COMMENT ON PROCEDURE mp_restamp_all(regclass, integer) IS 'Stamps every row of an attached table in committed batches, resumable (CALL it)';
COMMENT ON FUNCTION mp_schedule_restamp(regclass, interval) IS 'Runs mp_restamp(table) on a schedule with pg_cron; returns the job id';
COMMENT ON FUNCTION mp_unschedule_restamp(regclass) IS 'Removes the schedule of mp_schedule_restamp';
COMMENT ON FUNCTION mp_backfill_from(regclass, name) IS 'mp_backfill with the history read from an attached event table (administrators)';
COMMENT ON FUNCTION mp_backfill_from(regclass, regclass, text, name) IS 'mp_backfill with the history read from Segment''s identifies and aliases tables (administrators)';
COMMENT ON FUNCTION mp_engage(jsonb) IS 'Mixpanel /engage bodies: profile updates ($set, $set_once, $add, $append, $union, $remove, $unset, $delete)';
COMMENT ON FUNCTION mp_profile(text, text) IS 'The profile of the person an id belongs to (the fold of the updates sent to any of its ids)';
COMMENT ON FUNCTION mp_refresh_people(text) IS 'Brings identity_merge.people up to date for the people that changed since the last refresh';
COMMENT ON FUNCTION mp_identity_record_create(jsonb) IS 'Creates an identity record (the seed''s POST /identity): the Identity object, once per content';
COMMENT ON FUNCTION mp_distribute() IS 'Citus: makes the identity state reference tables on every node (run on the coordinator)';
COMMENT ON FUNCTION mp_undistribute() IS 'Citus: takes the identity state back to the coordinator alone (before DROP EXTENSION)';
COMMENT ON FUNCTION mp_distribute_events(regclass, text, text) IS 'Citus: distributes an event table by a column, with its stamping trigger';
COMMENT ON FUNCTION mp_apply_pending() IS 'Citus: applies the identity events rows brought to shards, on every node, then restamps; returns how many';
COMMENT ON FUNCTION mp_ingest(regclass, regclass, boolean) IS 'Moves a staged batch into an attached table: its identity events applied in order, then every row inserted with its final stamp in one statement';
COMMENT ON FUNCTION mp_track(jsonb) IS 'Mixpanel /track and /import payloads: applies identity events, answers IdentityResponse';

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
-- Catalog reads only (see its definition): every role may run it.
GRANT EXECUTE ON FUNCTION identity_merge._column_problems(regclass, name, name), identity_merge._column_type_ok(text, regtype),
    identity_merge._event_column(regclass), identity_merge._id_columns(text[]) TO PUBLIC;
-- Argument checks, the trigger's arguments and its rule for a row's missing distinct_id: no
-- rights of their own. _exec_as_owner runs a statement as a table's owner only for a caller
-- who may act as that owner (src/owner.rs), so it gives no role a right it did not have.
GRANT EXECUTE ON FUNCTION identity_merge._no_nulls(text, text[], boolean[]), identity_merge._trigger_args(regclass),
    identity_merge._row_distinct_id(text, text, text), identity_merge._exec_as_owner(regclass, text) TO PUBLIC;
-- The stamping trigger's WHEN, evaluated with the rights of whoever writes an attached table;
-- the restamp lock, taken by the restamps writers may run (an advisory lock, no right).
GRANT EXECUTE ON FUNCTION identity_merge._stamp_wanted(regclass), identity_merge._lock_restamp(regclass) TO PUBLIC;
-- Shared-memory reads for identity_merge.stats and mp_check (the view itself is the readers').
GRANT EXECUTE ON FUNCTION identity_merge._stats(), identity_merge._worker(), identity_merge._stats_by_project(),
    identity_merge._mixpanel_identity_mappings() TO PUBLIC;
-- Catalog reads only: where the identity state is (mp_check asks, as any role).
GRANT EXECUTE ON FUNCTION identity_merge._distributed(), identity_merge._on_coordinator(), identity_merge._is_citus_table(regclass) TO PUBLIC;
