-- identity_merge: state tables, indexes and the internal write function.
-- Loaded first by CREATE EXTENSION (extension_sql_file!, bootstrap). Everything lives in schema
-- identity_merge; every table is registered with pg_extension_config_dump so pg_dump keeps its rows.

CREATE SCHEMA identity_merge;
COMMENT ON SCHEMA identity_merge IS 'identity_merge state: projects, identity clusters, merge log, rejections';
REVOKE ALL ON SCHEMA identity_merge FROM PUBLIC;

-- One row per Mixpanel project (token). Settings the identity rules read live here.
CREATE TABLE identity_merge.projects (
    project_id       serial PRIMARY KEY,
    token            text NOT NULL UNIQUE
                     CHECK (token <> '' AND length(token) <= 255),
    mode             text NOT NULL DEFAULT 'original'
                     CHECK (mode IN ('original', 'simplified', 'legacy')),
    max_cluster_size integer NOT NULL DEFAULT 500 CHECK (max_cluster_size >= 2),
    anon_id_format   text NOT NULL DEFAULT 'uuid' CHECK (anon_id_format IN ('uuid', 'any')),
    blocked_ids      text[] NOT NULL DEFAULT ARRAY[
        '00000000-0000-0000-0000-000000000000', 'anon', 'anonymous', 'nil', 'none', 'null',
        'n/a', 'na', 'undefined', 'unknown', '<nil>', '0', '-1', 'true', 'false', '[]', '{}',
        '[object object]', 'nan', 'guest', 'distinctid', 'distinct_id', 'not_authenticated'],
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Simplified: whether a device's profile from before its link carries over (since 0.1.6).
    carry_device_profile boolean NOT NULL DEFAULT false,
    -- Whether an attached table of the project keeps its stamps fresh (since 0.1.14): its joins
    -- and splits then queue their stale canonicals in stale_stamps for the maintenance worker.
    -- Kept by mp_attach, mp_keep_fresh and mp_detach from attachments.keep_fresh.
    keep_fresh       boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE identity_merge.projects IS 'Projects (Mixpanel tokens), their ID Merge mode and rule settings';

-- Each known id and the canonical distinct_id of its cluster. The canonical is stored on every
-- id so that resolving is one index probe (the primary key covers canonical_id). Ids are opaque
-- byte strings: collation "C" compares them bytewise, which is also the fastest comparison.
CREATE TABLE identity_merge.identities (
    project_id   integer NOT NULL,
    distinct_id  text COLLATE "C" NOT NULL,
    canonical_id text COLLATE "C" NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, distinct_id) INCLUDE (canonical_id)
);
-- canonical_id leads so that only the primary key can serve (project_id, distinct_id) probes,
-- whatever the statistics say about a project (a lone project_id prefix would tempt the planner).
CREATE INDEX identities_cluster_idx ON identity_merge.identities (canonical_id, project_id);
COMMENT ON TABLE identity_merge.identities IS 'Every id seen by an identity operation, with its cluster''s canonical id';

-- Never holds rows and no query reads it: a relcache invalidation of this table is how a write
-- to identities tells every backend's stamp cache (src/cache.rs) that the graph changed,
-- without invalidating the cached plans of queries on identities.
CREATE TABLE identity_merge.graph_changed (never_used boolean);
COMMENT ON TABLE identity_merge.graph_changed IS 'Signal only: its relcache invalidation empties the stamp caches';

-- One row per cluster, keyed by its canonical id.
CREATE TABLE identity_merge.clusters (
    project_id   integer NOT NULL,
    canonical_id text COLLATE "C" NOT NULL,
    size         integer NOT NULL CHECK (size >= 1),
    identified   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, canonical_id)
);
COMMENT ON TABLE identity_merge.clusters IS 'Identity clusters: canonical id, size, whether an identified id is in it';

-- One row per join of two clusters, in commit-independent order of seq. absorbed_canonical is the
-- canonical that stopped being one: rows stamped with it are the stale ones mp_restamp fixes.
CREATE TABLE identity_merge.merge_log (
    seq                bigserial PRIMARY KEY,
    project_id         integer NOT NULL,
    operation          text NOT NULL,
    id_a               text COLLATE "C" NOT NULL,
    id_b               text COLLATE "C" NOT NULL,
    kept_canonical     text COLLATE "C" NOT NULL,
    absorbed_canonical text COLLATE "C" NOT NULL,
    moved_ids          integer NOT NULL,
    merged_at          timestamptz NOT NULL DEFAULT now(),
    -- Provenance (since 0.1.4; NULL on older rows: unknown): where the join came from
    -- ('function', 'trigger', 'track', 'identity_api', 'backfill') with what identifies it there
    -- (the function, the table and the row's ids, the backfill ordinal...), the role that
    -- made it and its transaction.
    source             text,
    source_detail      jsonb,
    role_name          name,
    transaction_id     xid8,
    -- The retraction (mp_split, mp_unjoin) that took this join back; NULL while it holds.
    retracted_by       bigint
);
CREATE INDEX merge_log_absorbed_idx ON identity_merge.merge_log (project_id, absorbed_canonical);
-- A cluster's joins, found through its ids (mp_explain, mp_split): every join's ids are in one
-- cluster; id_b too, to tell an id whose joins were all retracted from one never seen.
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
COMMENT ON TABLE identity_merge.merge_log IS 'Every join of two clusters, replayable in seq order';

-- Identity events the ingest path (trigger, JSON functions) refused or ignored.
CREATE TABLE identity_merge.rejections (
    rejection_id bigserial PRIMARY KEY,
    project_id   integer,
    reason_code  text NOT NULL,
    message      text NOT NULL,
    operation    text,
    id_a         text,
    id_b         text,
    source_table regclass,
    source_row   jsonb,
    rejected_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejections_project_idx ON identity_merge.rejections (project_id, rejected_at);
COMMENT ON TABLE identity_merge.rejections IS 'Refused identity events from the ingest path, with their reason code and row';

-- Event tables with the stamping trigger (mp_attach).
CREATE TABLE identity_merge.attachments (
    events             regclass PRIMARY KEY,
    project_id         integer NOT NULL REFERENCES identity_merge.projects,
    distinct_id_column name NOT NULL,
    canonical_column   name NOT NULL,
    attached_at        timestamptz NOT NULL DEFAULT now(),
    -- The maintenance worker restamps the table's stale rows after each join or split (since
    -- 0.1.14; mp_attach(..., keep_fresh => true), mp_keep_fresh).
    keep_fresh         boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE identity_merge.attachments IS 'Event tables stamped by identity_merge.stamp_event';

-- Canonical ids that stopped being one (absorbed by a join, or of a split cluster) in projects
-- whose tables keep their stamps fresh (since 0.1.14), queued in the transaction that made
-- them stale and taken by the maintenance worker, which restamps the rows stamped with them.
CREATE TABLE identity_merge.stale_stamps (
    project_id integer NOT NULL,
    canonical  text COLLATE "C" NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE identity_merge.stale_stamps IS 'Stale canonical ids waiting for the maintenance worker to restamp the keep_fresh tables';

-- Where a long restamp of every row (CALL mp_restamp_all) stands: one row per table while it
-- runs, committed with each batch, so an interrupted run resumes where it stopped (since 0.1.5).
CREATE TABLE identity_merge.restamp_progress (
    events      regclass PRIMARY KEY,
    next_block  bigint NOT NULL,
    blocks      bigint NOT NULL,
    rows_done   bigint NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Which physical table and which attachment the progress is of (since 0.1.13): a TRUNCATE,
    -- a rewrite or a new attach makes it void.
    filenode    oid,
    attached_at timestamptz
);
COMMENT ON TABLE identity_merge.restamp_progress IS 'Progress of CALL mp_restamp_all runs (a row while one runs or was interrupted)';

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

-- Identity records (the seed's "Create an Identity", since 0.1.6), identified by their content:
-- identity_hash is the SHA-256 of the canonical content (src/core/record.rs), so the same content
-- is one record. A record may describe a person (project, distinct_id): mp_profile shows it.
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

-- Identity events that arrived in event rows on a Citus shard (since 0.1.7). The trigger runs
-- there inside a query the coordinator sent, where Citus refuses the writes to the replicated
-- identity state that applying the event needs; it stamps the row and keeps the event here, on
-- the node, committed with the row, until mp_apply_pending() applies it (docs/scaling.md).
-- A plain table on every node, never distributed: events names the logical table (text, since a
-- regclass would be this node's oid).
CREATE TABLE identity_merge.pending_events (
    seq         bigserial PRIMARY KEY,
    project_id  integer NOT NULL,
    events      text NOT NULL,
    distinct_id text,
    event       text,
    properties  jsonb,
    device_id   text,
    user_id     text,
    role_name   name NOT NULL DEFAULT current_user,
    queued_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
COMMENT ON TABLE identity_merge.pending_events IS 'Identity events from rows stamped on Citus shards, until mp_apply_pending applies them';

-- The default project. Its row is dumped like any other; on restore the upsert trigger below turns
-- the restored row into an update of the row CREATE EXTENSION made, so changed settings survive.
INSERT INTO identity_merge.projects (project_id, token) VALUES (1, 'default');
SELECT setval('identity_merge.projects_project_id_seq', 1);

CREATE FUNCTION identity_merge._projects_restore_upsert() RETURNS trigger
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
CREATE TRIGGER projects_restore_upsert BEFORE INSERT ON identity_merge.projects
    FOR EACH ROW EXECUTE FUNCTION identity_merge._projects_restore_upsert();

SELECT pg_catalog.pg_extension_config_dump('identity_merge.projects', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.stale_stamps', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.projects_project_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.identities', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.clusters', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.merge_log', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.merge_log_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.rejections', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.rejections_rejection_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.attachments', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.retractions', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.restamp_progress', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.profile_updates', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.profile_updates_update_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.people', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.people_refreshed', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.identity_records', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.retractions_retraction_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.pending_events', '');
SELECT pg_catalog.pg_extension_config_dump('identity_merge.pending_events_seq_seq', '');

-- The project row for a token, or 42704.
CREATE FUNCTION identity_merge._project(p_token text) RETURNS identity_merge.projects
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r identity_merge.projects;
BEGIN
    SELECT * INTO r FROM identity_merge.projects WHERE token = p_token;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown project token %', quote_literal(coalesce(p_token, 'NULL'))
            USING ERRCODE = '42704', HINT = 'Create it with mp_create_project(token, mode).';
    END IF;
    RETURN r;
END $$;
