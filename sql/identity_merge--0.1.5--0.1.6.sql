-- identity_merge 0.1.5 -> 0.1.6 (see CHANGELOG.md): people profiles (mp_engage, mp_profile).
-- Released upgrade scripts are never edited afterwards.

-- People profiles (since 0.1.6): every Engage update, kept with the id it was sent to. A
-- person's profile is the fold of the updates of all its ids in the order sent (mp_profile), so
-- merges and splits combine and separate profiles with no row moved.
CREATE TABLE identity_merge.profile_updates (
    update_id   bigserial PRIMARY KEY,
    project_id  integer NOT NULL,
    distinct_id text COLLATE "C" NOT NULL,
    operation   text NOT NULL CHECK (operation IN ('$set', '$set_once', '$add', '$append', '$union', '$remove', '$unset', '$delete')),
    value       jsonb NOT NULL,
    sent_at     timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX profile_updates_id_idx ON identity_merge.profile_updates (project_id, distinct_id, sent_at);
COMMENT ON TABLE identity_merge.profile_updates IS 'Engage updates (mp_engage), each with the id it was sent to';
SELECT pg_catalog.pg_extension_config_dump('identity_merge.profile_updates', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.profile_updates_update_id_seq', '');

CREATE  FUNCTION "mp_profile"(
	"distinct_id" TEXT, /* & str */
	"project" TEXT DEFAULT 'default' /* & str */
) RETURNS jsonb /* pgrx :: JsonB */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'mp_profile_wrapper';

CREATE  FUNCTION identity_merge."_engage"(
	"payload" TEXT /* Option < & str > */
) RETURNS jsonb /* pgrx :: JsonB */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_engage_wrapper';

CREATE FUNCTION mp_engage(payload jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._engage(payload::text) $$;

CREATE OR REPLACE FUNCTION mp_grant_reader(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE s text := (SELECT n.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'identity_merge');
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA identity_merge TO %s', role);
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA identity_merge TO %s', role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.mp_resolve(text, text), %1$I.mp_cluster(text, text), '
                   '%1$I.mp_project_settings(text), %1$I.mp_check(text), identity_merge._check_log(integer), '
                   'identity_merge._project(text), %1$I.mp_explain(text, text), %1$I.mp_explain(text, text, text), '
                   '%1$I.mp_profile(text, text) TO %2$s', s, role);
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
                   '%1$I.mp_track(jsonb), %1$I.mp_segment(jsonb, text), identity_merge._segment(text, text), '
                   '%1$I.mp_engage(jsonb), identity_merge._engage(text), '
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

COMMENT ON FUNCTION mp_engage(jsonb) IS 'Mixpanel /engage bodies: profile updates ($set, $set_once, $add, $append, $union, $remove, $unset, $delete)';
COMMENT ON FUNCTION mp_profile(text, text) IS 'The profile of the person an id belongs to (the fold of the updates sent to any of its ids)';

-- Nothing is executable by PUBLIC; readers may read profiles, the roles that feed mp_track may
-- feed mp_engage.
REVOKE ALL ON FUNCTION mp_engage(jsonb), identity_merge._engage(text), mp_profile(text, text) FROM PUBLIC;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT a.grantee::regrole AS grantee, p.oid = 'mp_track(jsonb)'::pg_catalog.regprocedure AS writer
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid IN ('mp_resolve(text, text)'::pg_catalog.regprocedure, 'mp_track(jsonb)'::pg_catalog.regprocedure)
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner LOOP
        IF r.writer THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_engage(jsonb), identity_merge._engage(text) TO %s', r.grantee);
        ELSE
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_profile(text, text) TO %s', r.grantee);
            EXECUTE pg_catalog.format('GRANT SELECT ON identity_merge.profile_updates TO %s', r.grantee);
        END IF;
    END LOOP;
END $$;
