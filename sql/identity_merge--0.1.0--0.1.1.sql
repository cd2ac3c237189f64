-- identity_merge 0.1.0 -> 0.1.1: descriptions of the main functions in the catalog (\df+).
-- Released upgrade scripts are never edited afterwards.
COMMENT ON FUNCTION mp_identify(text, text, text) IS 'The $identify event: joins anon_id''s cluster to identified_id''s; returns the canonical distinct_id';
COMMENT ON FUNCTION mp_alias(text, text, text) IS 'The $create_alias event: alias joins distinct_id''s cluster; returns the canonical distinct_id';
COMMENT ON FUNCTION mp_merge(text, text, text) IS 'The $merge event: joins the two clusters; returns the canonical distinct_id';
COMMENT ON FUNCTION mp_merge(text[], text) IS 'The $merge event with $distinct_ids (exactly two ids)';
COMMENT ON FUNCTION mp_resolve(text, text) IS 'The canonical distinct_id of an id (itself when never seen)';
COMMENT ON FUNCTION mp_cluster(text, text) IS 'Every id in the same cluster';
COMMENT ON FUNCTION mp_attach(regclass, text, name, name, boolean) IS 'Puts the stamping trigger on an event table';
COMMENT ON FUNCTION mp_restamp(regclass) IS 'Brings stamped rows up to date after later merges; returns rows changed';
COMMENT ON FUNCTION mp_backfill(text, text) IS 'Applies a history of identity events in one pass (administrators)';
COMMENT ON FUNCTION mp_check(text) IS 'Every violation of the identity invariants (no rows when all hold)';
COMMENT ON FUNCTION mp_track(jsonb) IS 'Mixpanel /track and /import payloads: applies identity events, answers IdentityResponse';
