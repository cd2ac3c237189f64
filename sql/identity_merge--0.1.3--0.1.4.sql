-- identity_merge 0.1.3 -> 0.1.4 (see CHANGELOG.md): provenance on every join, mp_explain.
-- Released upgrade scripts are never edited afterwards.

-- Where each join came from; NULL on joins made before 0.1.4 (their source is unknown).
ALTER TABLE identity_merge.merge_log
    ADD COLUMN source text,
    ADD COLUMN source_detail jsonb,
    ADD COLUMN role_name name,
    ADD COLUMN transaction_id xid8;
-- A cluster's joins, found through its ids (mp_explain).
CREATE INDEX merge_log_id_a_idx ON identity_merge.merge_log (project_id, id_a);

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
	"from_id" TEXT, /* & str */
	"to_id" TEXT, /* & str */
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

COMMENT ON FUNCTION mp_explain(text, text) IS 'Why an id is in its cluster: the chain of logged joins to its canonical id, with their provenance';
COMMENT ON FUNCTION mp_explain(text, text, text) IS 'Why two ids are one person: the chain of logged joins between them (project required)';

-- Nothing is executable by PUBLIC; roles that may resolve ids (mp_grant_reader, mp_grant_writer)
-- may also explain them.
REVOKE ALL ON FUNCTION mp_explain(text, text), mp_explain(text, text, text) FROM PUBLIC;
DO $$
DECLARE
    r regrole;
BEGIN
    FOR r IN SELECT a.grantee::regrole
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid = 'mp_resolve(text, text)'::pg_catalog.regprocedure
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0
                AND a.grantee <> p.proowner LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_explain(text, text), mp_explain(text, text, text) TO %s', r);
    END LOOP;
END $$;
