-- identity_merge 0.1.14 -> 0.1.15 (see CHANGELOG.md): mp_detach drops the insert_id
-- deduplication trigger with the stamping one; mp_dedup_insert_id(table, false) drops one
-- without an attachment (a table detached under 0.1.14 kept its trigger).
-- Released upgrade scripts are never edited afterwards.

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
