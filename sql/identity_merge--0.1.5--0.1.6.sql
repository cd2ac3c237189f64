-- identity_merge 0.1.5 -> 0.1.6 (see CHANGELOG.md): people profiles (mp_engage, mp_profile,
-- the table identity_merge.people and mp_refresh_people).
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
                   '%1$I.mp_engage(jsonb), identity_merge._engage(text), %1$I.mp_refresh_people(text), '
                   '%1$I.mp_identity_record_create(jsonb), identity_merge._identity_record_create(text), '
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

-- People as a table users join to their events (canonical_id -> properties), brought up to date
-- by mp_refresh_people for the people whose ids or updates changed since the project's last
-- refresh (people_refreshed holds how far each project got).
CREATE TABLE identity_merge.people (
    project_id   integer NOT NULL,
    canonical_id text COLLATE "C" NOT NULL,
    properties   jsonb NOT NULL,
    refreshed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, canonical_id)
);
COMMENT ON TABLE identity_merge.people IS 'Profiles by canonical id (mp_refresh_people), to join to stamped events';
CREATE TABLE identity_merge.people_refreshed (
    project_id    integer PRIMARY KEY,
    merge_seq     bigint NOT NULL DEFAULT 0,
    retraction_id bigint NOT NULL DEFAULT 0,
    update_id     bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE identity_merge.people_refreshed IS 'How far mp_refresh_people got, per project';
SELECT pg_catalog.pg_extension_config_dump('identity_merge.people', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.people_refreshed', '');

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
    s text := (SELECT ns.nspname FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace ns ON ns.oid = e.extnamespace
                WHERE e.extname = 'identity_merge');
BEGIN
    -- One refresh of a project at a time.
    PERFORM pg_advisory_xact_lock(hashtext('identity_merge people ' || p.project_id));
    INSERT INTO identity_merge.people_refreshed (project_id) VALUES (p.project_id) ON CONFLICT DO NOTHING;
    SELECT * INTO w FROM identity_merge.people_refreshed x WHERE x.project_id = p.project_id;
    SELECT (SELECT coalesce(max(seq), 0) FROM identity_merge.merge_log WHERE project_id = p.project_id) AS merge_seq,
           (SELECT coalesce(max(retraction_id), 0) FROM identity_merge.retractions WHERE project_id = p.project_id) AS retraction_id,
           (SELECT coalesce(max(update_id), 0) FROM identity_merge.profile_updates WHERE project_id = p.project_id) AS update_id
      INTO top;
    CREATE TEMP TABLE IF NOT EXISTS identity_merge_touched (id text COLLATE "C") ON COMMIT DROP;
    TRUNCATE identity_merge_touched;
    -- Every id whose person may have changed: both sides of new joins, the ids of retracted
    -- joins and the split clusters' old canonicals, the ids that received updates.
    INSERT INTO identity_merge_touched
    SELECT unnest(ARRAY[l.id_a, l.id_b, l.kept_canonical, l.absorbed_canonical]) FROM identity_merge.merge_log l
     WHERE l.project_id = p.project_id AND l.seq > w.merge_seq AND l.seq <= top.merge_seq
    UNION
    SELECT unnest(ARRAY[l.id_a, l.id_b, r.old_canonical]) FROM identity_merge.retractions r
      JOIN identity_merge.merge_log l ON l.seq = ANY (r.retracted)
     WHERE r.project_id = p.project_id AND r.retraction_id > w.retraction_id AND r.retraction_id <= top.retraction_id
    UNION
    SELECT u.distinct_id FROM identity_merge.profile_updates u
     WHERE u.project_id = p.project_id AND u.update_id > w.update_id AND u.update_id <= top.update_id;
    -- Rows of ids that are no longer a canonical id (absorbed, or joined under another).
    DELETE FROM identity_merge.people pe
     USING identity_merge_touched t
     WHERE pe.project_id = p.project_id AND pe.canonical_id = t.id
       AND EXISTS (SELECT 1 FROM identity_merge.identities i WHERE i.project_id = p.project_id
                     AND i.distinct_id = t.id AND i.canonical_id <> t.id);
    GET DIAGNOSTICS k = ROW_COUNT;
    n := n + k;
    -- The current people of those ids: their profile, or no row when they have none.
    EXECUTE format(
        'WITH persons AS (SELECT DISTINCT coalesce(i.canonical_id, t.id) AS c FROM identity_merge_touched t '
        '                   LEFT JOIN identity_merge.identities i ON i.project_id = $1 AND i.distinct_id = t.id), '
        '     profiles AS (SELECT persons.c, %I.mp_profile(persons.c, $2) AS props FROM persons), '
        '     gone AS (DELETE FROM identity_merge.people pe USING profiles '
        '               WHERE pe.project_id = $1 AND pe.canonical_id = profiles.c AND profiles.props = ''{}''::jsonb RETURNING 1), '
        '     written AS (INSERT INTO identity_merge.people (project_id, canonical_id, properties) '
        '                 SELECT $1, profiles.c, profiles.props FROM profiles WHERE profiles.props <> ''{}''::jsonb '
        '                 ON CONFLICT (project_id, canonical_id) DO UPDATE SET properties = EXCLUDED.properties, refreshed_at = now() '
        '                 RETURNING 1) '
        'SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM written)', s)
        INTO k USING p.project_id, p.token;
    n := n + k;
    UPDATE identity_merge.people_refreshed x
       SET merge_seq = top.merge_seq, retraction_id = top.retraction_id, update_id = top.update_id
     WHERE x.project_id = p.project_id;
    RETURN n;
END $$;

COMMENT ON FUNCTION mp_refresh_people(text) IS 'Brings identity_merge.people up to date for the people that changed since the last refresh';
COMMENT ON FUNCTION mp_engage(jsonb) IS 'Mixpanel /engage bodies: profile updates ($set, $set_once, $add, $append, $union, $remove, $unset, $delete)';
COMMENT ON FUNCTION mp_profile(text, text) IS 'The profile of the person an id belongs to (the fold of the updates sent to any of its ids)';

-- Nothing is executable by PUBLIC; readers may read profiles, the roles that feed mp_track may
-- feed mp_engage.
REVOKE ALL ON FUNCTION mp_engage(jsonb), identity_merge._engage(text), mp_profile(text, text), mp_refresh_people(text) FROM PUBLIC;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT a.grantee::regrole AS grantee, p.oid = 'mp_track(jsonb)'::pg_catalog.regprocedure AS writer
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid IN ('mp_resolve(text, text)'::pg_catalog.regprocedure, 'mp_track(jsonb)'::pg_catalog.regprocedure)
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner LOOP
        IF r.writer THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_engage(jsonb), identity_merge._engage(text), mp_refresh_people(text) TO %s', r.grantee);
        ELSE
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_profile(text, text) TO %s', r.grantee);
            EXECUTE pg_catalog.format('GRANT SELECT ON identity_merge.profile_updates, identity_merge.people, identity_merge.people_refreshed TO %s', r.grantee);
        END IF;
    END LOOP;
END $$;

-- Identity records (the seed's "Create an Identity"), since 0.1.6.
CREATE TABLE identity_merge.identity_records (
    id                 text PRIMARY KEY,
    identity_id        text NOT NULL UNIQUE,
    identity_hash      text NOT NULL UNIQUE,
    display_name       text NOT NULL,
    description        text,
    image              text,
    external_reference text,
    creator            text NOT NULL,
    project_id         integer,
    distinct_id        text COLLATE "C",
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX identity_records_person_idx ON identity_merge.identity_records (project_id, distinct_id);
COMMENT ON TABLE identity_merge.identity_records IS 'Identity records (mp_identity_record_create), one per content';
SELECT pg_catalog.pg_extension_config_dump('identity_merge.identity_records', '');

CREATE  FUNCTION identity_merge."_identity_record_create"(
	"body" TEXT /* Option < & str > */
) RETURNS jsonb /* pgrx :: JsonB */
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_identity_record_create_wrapper';

CREATE FUNCTION mp_identity_record_create(body jsonb) RETURNS jsonb
LANGUAGE sql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp
AS $$ SELECT identity_merge._identity_record_create(body::text) $$;

COMMENT ON FUNCTION mp_identity_record_create(jsonb) IS 'Creates an identity record (the seed''s POST /identity): the Identity object, once per content';

-- Nothing is executable by PUBLIC; the roles that feed mp_track may create identity records.
REVOKE ALL ON FUNCTION mp_identity_record_create(jsonb), identity_merge._identity_record_create(text) FROM PUBLIC;
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT a.grantee::regrole AS grantee
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
              WHERE p.oid = 'mp_track(jsonb)'::pg_catalog.regprocedure
                AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION mp_identity_record_create(jsonb), identity_merge._identity_record_create(text) TO %s', r.grantee);
    END LOOP;
END $$;

-- Simplified projects: the setting carry_device_profile (since 0.1.6).
ALTER TABLE identity_merge.projects ADD COLUMN carry_device_profile boolean NOT NULL DEFAULT false;
CREATE OR REPLACE FUNCTION identity_merge._projects_restore_upsert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.token = 'default' AND EXISTS (SELECT 1 FROM identity_merge.projects WHERE token = 'default') THEN
        UPDATE identity_merge.projects
           SET mode = NEW.mode, max_cluster_size = NEW.max_cluster_size,
               anon_id_format = NEW.anon_id_format, blocked_ids = NEW.blocked_ids,
               created_at = NEW.created_at, carry_device_profile = NEW.carry_device_profile
         WHERE token = 'default';
        RETURN NULL;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION mp_project_settings(token text DEFAULT 'default')
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

CREATE OR REPLACE FUNCTION mp_set_project_setting(token text, setting text, value text) RETURNS void
LANGUAGE plpgsql VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p identity_merge.projects;
BEGIN
    p := identity_merge._project(token);
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
        UPDATE identity_merge.projects
           SET blocked_ids = ARRAY(SELECT DISTINCT lower(btrim(b)) FROM unnest(value::text[]) b WHERE b IS NOT NULL)
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
