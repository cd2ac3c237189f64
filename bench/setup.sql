-- Benchmark data and the reference implementations a user would write themselves.
\set ON_ERROR_STOP 1
CREATE EXTENSION IF NOT EXISTS identity_merge;
SET client_min_messages = warning;

\ir functions.sql

-- 200,000 known ids in 100,000 clusters of two (an anonymous device and its user), written
-- straight into the state tables; the same mapping in a plain table for the references.
INSERT INTO identity_merge.identities (project_id, distinct_id, canonical_id)
SELECT 1, id, 'user-' || g FROM generate_series(1, 100000) g, LATERAL (VALUES ('user-' || g), ('dev-' || g)) v(id);
INSERT INTO identity_merge.clusters (project_id, canonical_id, size, identified)
SELECT 1, 'user-' || g, 2, true FROM generate_series(1, 100000) g;
CREATE TABLE identities (distinct_id text PRIMARY KEY, canonical text NOT NULL);
INSERT INTO identities SELECT distinct_id, canonical_id FROM identity_merge.identities WHERE project_id = 1;
VACUUM ANALYZE identity_merge.identities, identity_merge.clusters, identities;

-- 300,000 source events: distinct ids drawn from the known ids and 1/3 unknown ones.
CREATE TABLE src AS
SELECT n, CASE WHEN n % 3 = 0 THEN 'new-' || n
               WHEN n % 3 = 1 THEN 'dev-' || (1 + (n::bigint * 7919) % 100000)
               ELSE 'user-' || (1 + (n::bigint * 104729) % 100000) END AS distinct_id,
       'Page View'::text AS event, jsonb_build_object('n', n) AS properties
  FROM generate_series(1, 300000) n;
-- The same with 2% $identify events linking a fresh anon UUID to a known user.
CREATE TABLE src_identify AS
SELECT n, CASE WHEN n % 50 = 0 THEN 'user-' || (1 + n % 100000) ELSE distinct_id END AS distinct_id,
       CASE WHEN n % 50 = 0 THEN '$identify' ELSE event END AS event,
       CASE WHEN n % 50 = 0 THEN jsonb_build_object('$identified_id', 'user-' || (1 + n % 100000),
                                                    '$anon_id', gen_random_uuid()::text)
            ELSE properties END AS properties
  FROM src;
VACUUM ANALYZE src, src_identify;
COPY src TO '/tmp/identity_merge_bench_src.csv' (FORMAT csv);
COPY src_identify TO '/tmp/identity_merge_bench_src_identify.csv' (FORMAT csv);

CREATE TABLE ev_plain (n int, distinct_id text, event text, properties jsonb, canonical_id text);
CREATE TABLE ev_noop (LIKE ev_plain);
CREATE TABLE ev_plpgsql (LIKE ev_plain);
CREATE TABLE ev_ours (LIKE ev_plain);
CREATE TABLE ev_ours_plain (n int, distinct_id text, canonical_id text);  -- no event/properties columns
-- The _ix tables carry the index on the canonical column that mp_attach creates (mp_restamp
-- needs it); the others have none, to show the stamping cost alone.
CREATE TABLE ev_plain_ix (LIKE ev_plain);
CREATE TABLE ev_plpgsql_ix (LIKE ev_plain);
CREATE TABLE ev_ours_ix (LIKE ev_plain);
CREATE INDEX ON ev_plain_ix (canonical_id);
CREATE INDEX ON ev_plpgsql_ix (canonical_id);

-- The floor: copies the row and sets canonical_id := distinct_id, in C, with no lookup.
CREATE FUNCTION floor_stamp() RETURNS trigger LANGUAGE c AS '$libdir/floor_stamp', 'floor_stamp';
CREATE TABLE ev_floor (LIKE ev_plain);
CREATE TRIGGER floor BEFORE INSERT ON ev_floor FOR EACH ROW EXECUTE FUNCTION floor_stamp();

CREATE FUNCTION noop_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER noop BEFORE INSERT ON ev_noop FOR EACH ROW EXECUTE FUNCTION noop_trigger();

-- What a user would write: one lookup per row.
CREATE FUNCTION plpgsql_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT i.canonical INTO NEW.canonical_id FROM identities i WHERE i.distinct_id = NEW.distinct_id;
    NEW.canonical_id := coalesce(NEW.canonical_id, NEW.distinct_id);
    RETURN NEW;
END $$;
CREATE TRIGGER stamp BEFORE INSERT ON ev_plpgsql FOR EACH ROW EXECUTE FUNCTION plpgsql_stamp();
CREATE TRIGGER stamp BEFORE INSERT ON ev_plpgsql_ix FOR EACH ROW EXECUTE FUNCTION plpgsql_stamp();

SELECT mp_attach('ev_ours', create_index => false);
SELECT mp_attach('ev_ours_plain', create_index => false);
SELECT mp_attach('ev_ours_ix');
-- The trigger as tables attached before 0.1.14 have it, without the WHEN that lets mp_ingest's
-- rows through (the WHEN's cost, side by side).
CREATE TABLE ev_ours_nowhen (LIKE ev_plain);
SELECT mp_attach('ev_ours_nowhen', create_index => false);
DROP TRIGGER identity_merge_stamp ON ev_ours_nowhen;
CREATE TRIGGER identity_merge_stamp BEFORE INSERT OR UPDATE OF distinct_id ON ev_ours_nowhen FOR EACH ROW
    EXECUTE FUNCTION identity_merge.stamp_event('default', 'distinct_id', 'canonical_id');
SET identity_merge.anon_id_format = 'uuid';
