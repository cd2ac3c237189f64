-- identity_merge 0.1.14 -> 0.1.15 (see CHANGELOG.md): the event name is read from "event_name"
-- in a table without "event" (Mixpanel's data-pipeline export): identity_merge._event_column,
-- used by _column_problems and mp_backfill_from; the device and user id columns' defaults in one
-- place (identity_merge._id_columns); mp_detach drops the insert_id deduplication trigger with
-- the stamping one; mp_dedup_insert_id(table, false) drops one without an attachment (a table
-- detached under 0.1.14 kept its trigger); projects.keep_fresh written in one place
-- (_keep_fresh_projects); mp_check reads its project once.
-- Released upgrade scripts are never edited afterwards.

-- The column the trigger reads the event name from (src/core/columns.rs, the one rule): "event",
-- or "event_name" in a table without one (Mixpanel's data-pipeline export); NULL when neither.
CREATE FUNCTION identity_merge._event_column(events regclass) RETURNS text
LANGUAGE c STABLE STRICT PARALLEL SAFE AS 'MODULE_PATHNAME', '_event_column_wrapper';

-- The device and user id columns a stamping trigger with these arguments (_trigger_args) reads:
-- the ones named at attach, or "$device_id" and "$user_id" (src/core/attachment.rs, the one
-- rule); the defaults for a table without the trigger (NULL).
CREATE FUNCTION identity_merge._id_columns(targs text[]) RETURNS text[]
LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', '_id_columns_wrapper';
REVOKE ALL ON FUNCTION identity_merge._event_column(regclass), identity_merge._id_columns(text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION identity_merge._event_column(regclass), identity_merge._id_columns(text[]) TO PUBLIC;

CREATE OR REPLACE FUNCTION identity_merge._column_problems(p_events regclass, p_distinct name, p_canonical name)
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

CREATE OR REPLACE FUNCTION mp_backfill_from(events regclass, order_by name DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION mp_detach(events regclass) RETURNS void
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

CREATE OR REPLACE FUNCTION mp_dedup_insert_id(events regclass, dedup boolean DEFAULT true, insert_id_column name DEFAULT 'insert_id')
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

CREATE OR REPLACE FUNCTION mp_check(project text DEFAULT 'default') RETURNS TABLE (check_name text, detail text)
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

-- Since 0.1.15 the one writer of projects.keep_fresh, turning it on as well as off (the
-- library's mp_keep_fresh calls it).
CREATE OR REPLACE FUNCTION identity_merge._keep_fresh_projects() RETURNS void
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

-- A 0.1.15 library before this update recorded keep_fresh in attachments only: the projects'
-- flags from the attachments once. (The coordinator's attachments; on a Citus worker node
-- there are none, and the replicated projects are not read.)
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM identity_merge.attachments WHERE keep_fresh) THEN
        PERFORM identity_merge._keep_fresh_projects();
    END IF;
END $$;
