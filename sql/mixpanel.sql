-- identity_merge: coming from Mixpanel (since 0.1.14). A project's data-pipeline export
-- (Mixpanel's "Json Pipelines": events, people, and the identity mappings
-- mp_identity_mappings_data) loaded into a project, and the mappings read back in Mixpanel's
-- shape. Loaded after schema.sql, before api.sql (extension_sql_file!: api.sql's REVOKE of every
-- routine from PUBLIC covers these too; they are revoked here as well, for the upgrade script,
-- which holds this file's text). Each function pins its search_path and qualifies what it uses.

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
    -- Turning it off needs no attachment (a table detached under 0.1.14 kept its trigger).
    IF NOT FOUND AND dedup THEN
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
