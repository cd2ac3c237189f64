//! Tests against a real PostgreSQL started by pgrx-tests, one file per subject. The
//! `#[pg_test]`s run inside the test server (each in a transaction rolled back at the end, all
//! in the SQL schema `tests` the runner calls); `sessions` drives several client connections
//! at once (concurrency, stress, cache invalidation across sessions), each test on a project
//! of its own since its data is committed; `batch` does the same for a statement's batch
//! (batch.rs), and `ring` for other sessions' joins reaching a warm cache (ring.rs). User-visible flows are also golden SQL files in
//! tests/pg_regress; hostile roles and tables are tests/reliability.sh.

pub mod support;

mod contract;
mod flows;
mod ingest;
mod json;
mod mixpanel;
mod model;
mod people;
mod ring;
mod roles;
mod trigger;

#[cfg(test)]
mod batch;
#[cfg(test)]
mod sessions;
