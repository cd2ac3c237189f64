-- identity_merge 0.1.4 -> 0.1.5 (see CHANGELOG.md): mp_segment, Segment / RudderStack payloads.
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
                   '%1$I.mp_attach(regclass, text, name, name, boolean), %1$I.mp_detach(regclass), %1$I.mp_restamp(regclass), '
                   '%1$I.mp_split(text, text), %1$I.mp_unjoin(bigint), '
                   'identity_merge.stamp_event(), identity_merge._register_attachment(regclass, integer, name, name), '
                   'identity_merge._unregister_attachment(regclass) TO %2$s', s, role);
END $$;

COMMENT ON FUNCTION mp_segment(jsonb, text) IS 'Segment / RudderStack spec payloads (one message or a batch): applies what each means for identity, answers IdentityResponse';

-- Nothing is executable by PUBLIC; the roles that may feed mp_track may feed mp_segment.
REVOKE ALL ON FUNCTION mp_segment(jsonb, text), identity_merge._segment(text, text) FROM PUBLIC;
DO $$
DECLARE
    r regrole;
BEGIN
    FOR r IN SELECT a.grantee::regrole
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid = 'mp_track(jsonb)'::pg_catalog.regprocedure
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_segment(jsonb, text), identity_merge._segment(text, text) TO %s', r);
    END LOOP;
END $$;
