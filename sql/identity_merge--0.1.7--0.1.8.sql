-- identity_merge 0.1.7 -> 0.1.8 (see CHANGELOG.md): CALL mp_restamp_all on a Citus table stamps
-- its rows with one UPDATE over the shards (its shell has no rows for TID ranges to find).
-- Released upgrade scripts are never edited afterwards.

CREATE OR REPLACE PROCEDURE mp_restamp_all(events regclass, batch_blocks integer DEFAULT 1000)
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
    -- A Citus table is an empty shell whose rows are in its shards, where a TID range finds
    -- nothing (since 0.1.8): every row is stamped by one UPDATE, which Citus runs on each shard,
    -- beside that node's copy of the identity state.
    IF identity_merge._is_citus_table(events) THEN
        EXECUTE pg_catalog.format(
            'UPDATE %1$s e SET %2$I = coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
            '    WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.distinct_id OPERATOR(pg_catalog.=) (e.%3$I::pg_catalog.text COLLATE "C")), e.%3$I::pg_catalog.text) '
            'WHERE (e.%2$I)::pg_catalog.text COLLATE "C" IS DISTINCT FROM coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
            '    WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.distinct_id OPERATOR(pg_catalog.=) (e.%3$I::pg_catalog.text COLLATE "C")), e.%3$I::pg_catalog.text)',
            events, a.canonical_column, a.distinct_id_column) USING a.project_id;
        GET DIAGNOSTICS n = ROW_COUNT;
        RAISE NOTICE 'restamp of % (a Citus table, one UPDATE over its shards): % rows changed', events, n;
        RETURN;
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
