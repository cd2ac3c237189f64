-- Run first by `cargo pgrx regress` in the database it has just created (its special file
-- setup.sql): the extension every other file uses. tests/regress.sh creates the extension
-- itself, so here it is already there and this does nothing.
CREATE EXTENSION IF NOT EXISTS identity_merge;
