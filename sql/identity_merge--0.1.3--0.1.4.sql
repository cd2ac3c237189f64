-- identity_merge 0.1.3 -> 0.1.4 (see CHANGELOG.md): provenance on every join, mp_explain, and
-- undo (mp_split, mp_unjoin). Released upgrade scripts are never edited afterwards.

-- Where each join came from (NULL on joins made before 0.1.4: their source is unknown), and
-- the retraction that took it back (NULL while it holds).
ALTER TABLE identity_merge.merge_log
    ADD COLUMN source text,
    ADD COLUMN source_detail jsonb,
    ADD COLUMN role_name name,
    ADD COLUMN transaction_id xid8,
    ADD COLUMN retracted_by bigint;
-- A cluster's joins, found through its ids (mp_explain, mp_split).
CREATE INDEX merge_log_id_a_idx ON identity_merge.merge_log (project_id, id_a);
CREATE INDEX merge_log_id_b_idx ON identity_merge.merge_log (project_id, id_b);

-- Joins taken back (since 0.1.4): mp_split retracts every join an id took part in, mp_unjoin one.
-- old_canonical is the canonical id of the cluster that was split: rows stamped with it may
-- belong to another person now, which mp_restamp looks up (like merge_log.absorbed_canonical).
CREATE TABLE identity_merge.retractions (
    retraction_id  bigserial PRIMARY KEY,
    project_id     integer NOT NULL,
    operation      text NOT NULL CHECK (operation IN ('split', 'unjoin')),
    target         text NOT NULL,
    old_canonical  text COLLATE "C" NOT NULL,
    retracted      bigint[] NOT NULL,
    source         text,
    source_detail  jsonb,
    role_name      name,
    transaction_id xid8,
    retracted_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX retractions_canonical_idx ON identity_merge.retractions (project_id, old_canonical);
COMMENT ON TABLE identity_merge.retractions IS 'Joins taken back by mp_split / mp_unjoin, with their provenance';
SELECT pg_catalog.pg_extension_config_dump('identity_merge.retractions', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.retractions_retraction_id_seq', '');

CREATE  FUNCTION "mp_explain"(
	"distinct_id" TEXT, /* & str */
	"project" TEXT DEFAULT 'default' /* & str */
) RETURNS TABLE (
	"step" INT,  /* i32 */
	"seq" bigint,  /* i64 */
	"operation" TEXT,  /* String */
	"id_a" TEXT,  /* String */
	"id_b" TEXT,  /* String */
	"kept_canonical" TEXT,  /* String */
	"absorbed_canonical" TEXT,  /* String */
	"merged_at" timestamp with time zone,  /* pgrx :: datum :: TimestampWithTimeZone */
	"source" TEXT,  /* Option < String > */
	"source_detail" jsonb,  /* Option < pgrx :: JsonB > */
	"role_name" TEXT,  /* Option < String > */
	"transaction_id" bigint  /* Option < i64 > */
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'mp_explain_wrapper';

CREATE  FUNCTION "mp_explain"(
	"id_a" TEXT, /* & str */
	"id_b" TEXT, /* & str */
	"project" TEXT /* & str */
) RETURNS TABLE (
	"step" INT,  /* i32 */
	"seq" bigint,  /* i64 */
	"operation" TEXT,  /* String */
	"id_a" TEXT,  /* String */
	"id_b" TEXT,  /* String */
	"kept_canonical" TEXT,  /* String */
	"absorbed_canonical" TEXT,  /* String */
	"merged_at" timestamp with time zone,  /* pgrx :: datum :: TimestampWithTimeZone */
	"source" TEXT,  /* Option < String > */
	"source_detail" jsonb,  /* Option < pgrx :: JsonB > */
	"role_name" TEXT,  /* Option < String > */
	"transaction_id" bigint  /* Option < i64 > */
)
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'mp_explain_between_wrapper';

CREATE  FUNCTION "mp_split"(
	"distinct_id" TEXT, /* & str */
	"project" TEXT DEFAULT 'default' /* & str */
) RETURNS TABLE (
	"id" TEXT,  /* String */
	"old_canonical" TEXT,  /* String */
	"new_canonical" TEXT  /* String */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'mp_split_wrapper';

CREATE  FUNCTION "mp_unjoin"(
	"seq" bigint /* i64 */
) RETURNS TABLE (
	"id" TEXT,  /* String */
	"old_canonical" TEXT,  /* String */
	"new_canonical" TEXT  /* String */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'mp_unjoin_wrapper';

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
                'SELECT ''unfixable_stamp''::text, format(''%%s row distinct_id %%s stamped %%s, which is neither itself nor %%s'', %1$L, e.%2$I, e.%3$I, r.c) '
                'FROM %1$s e CROSS JOIN LATERAL (SELECT coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
                '  WHERE i.project_id = $1 AND i.distinct_id = e.%2$I::text COLLATE "C"), e.%2$I::text) AS c) r '
                'WHERE e.%3$I IS NOT NULL AND e.%3$I::text COLLATE "C" <> r.c AND e.%3$I::text COLLATE "C" <> e.%2$I::text',
                a.events, a.distinct_id_column, a.canonical_column) USING pid;
            CONTINUE;
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT ''unfixable_stamp''::text, format(''%%s row distinct_id %%s stamped %%s, resolves to %%s'', %1$L, e.%2$I, e.%3$I, r.c) '
            'FROM %1$s e CROSS JOIN LATERAL (SELECT coalesce((SELECT i.canonical_id FROM identity_merge.identities i '
            '  WHERE i.project_id = $1 AND i.distinct_id = e.%2$I::text COLLATE "C"), e.%2$I::text) AS c) r '
            'WHERE e.%3$I IS NOT NULL AND e.%3$I::text COLLATE "C" <> r.c '
            '  AND NOT EXISTS (SELECT 1 FROM identity_merge.merge_log l WHERE l.project_id = $1 '
            '                  AND l.absorbed_canonical = e.%3$I::text COLLATE "C") '
            '  AND NOT EXISTS (SELECT 1 FROM identity_merge.retractions x WHERE x.project_id = $1 '
            '                  AND x.old_canonical = e.%3$I::text COLLATE "C")',
            a.events, a.distinct_id_column, a.canonical_column) USING pid;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION mp_grant_reader(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'identity_merge');
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA identity_merge TO %s', role);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA identity_merge TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_resolve(text, text), %1$I.mp_cluster(text, text), '
                   '%1$I.mp_project_settings(text), %1$I.mp_check(text), identity_merge._check_log(integer), '
                   'identity_merge._project(text), %1$I.mp_explain(text, text), %1$I.mp_explain(text, text, text) TO %2$s', s, role);
END $$;

CREATE OR REPLACE FUNCTION mp_grant_writer(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'identity_merge');
BEGIN
    EXECUTE format('SELECT %I.mp_grant_reader(%L::regrole)', s, role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_identify(text, text, text), %1$I.mp_alias(text, text, text), '
                   '%1$I.mp_merge(text, text, text), %1$I.mp_merge(text[], text), '
                   '%1$I.mp_identity_create(jsonb), %1$I.mp_identity_create_alias(jsonb), %1$I.mp_identity_merge(jsonb), '
                   '%1$I.mp_track(jsonb), identity_merge._identity_create(text), identity_merge._identity_create_alias(text), '
                   'identity_merge._identity_merge(text), identity_merge._track(text), '
                   '%1$I.mp_attach(regclass, text, name, name, boolean), %1$I.mp_detach(regclass), %1$I.mp_restamp(regclass), '
                   '%1$I.mp_split(text, text), %1$I.mp_unjoin(bigint), '
                   'identity_merge.stamp_event(), identity_merge._register_attachment(regclass, integer, name, name), '
                   'identity_merge._unregister_attachment(regclass) TO %2$s', s, role);
END $$;

COMMENT ON FUNCTION mp_explain(text, text) IS 'Why an id is in its cluster: the chain of logged joins to its canonical id, with their provenance';
COMMENT ON FUNCTION mp_explain(text, text, text) IS 'Why two ids are one person: the chain of logged joins between them (project required)';
COMMENT ON FUNCTION mp_split(text, text) IS 'Retracts every join the id took part in: its cluster becomes the clusters of the joins that remain';
COMMENT ON FUNCTION mp_unjoin(bigint) IS 'Retracts one logged join (merge_log.seq), as mp_split does';

-- Nothing is executable by PUBLIC. Roles that may resolve ids (mp_grant_reader) may also
-- explain them; roles that may change identities (mp_grant_writer) may also retract joins.
REVOKE ALL ON FUNCTION mp_explain(text, text), mp_explain(text, text, text), mp_split(text, text), mp_unjoin(bigint) FROM PUBLIC;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT a.grantee::regrole AS grantee, p.oid = 'mp_identify(text, text, text)'::pg_catalog.regprocedure AS writer
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid IN ('mp_resolve(text, text)'::pg_catalog.regprocedure, 'mp_identify(text, text, text)'::pg_catalog.regprocedure)
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner LOOP
        IF r.writer THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_split(text, text), mp_unjoin(bigint) TO %s', r.grantee);
        ELSE
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_explain(text, text), mp_explain(text, text, text) TO %s', r.grantee);
        END IF;
    END LOOP;
END $$;
