-- identity_merge 0.1.1 -> 0.1.2. The library changed (the stamp cache keeps its entries across
-- the session's own joins and loads whole projects, joins are written by one statement, locks are
-- taken through the lock manager with a project lock and the setting
-- identity_merge.cluster_locks_per_transaction; see CHANGELOG.md). The only SQL change: the
-- description of identity_merge._join, which the library no longer calls.
-- Released upgrade scripts are never edited afterwards.
COMMENT ON FUNCTION identity_merge._join(integer, text, text, text, text, boolean, text, boolean, integer, boolean)
    IS 'Unused since 0.1.2 (joins are written by the library); kept for compatibility';
