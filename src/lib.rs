//! identity_merge: Mixpanel's ID Merge inside PostgreSQL.
//!
//! Modules, one concern each:
//! - `rules`: the identity rules (validation, refusals, canonical choice, size limit), pure Rust.
//! - `error`: the one error enum and its mapping to SQLSTATEs.
//! - `ingest`: reading identity events out of JSON payloads, pure Rust.
//! - `store`: SPI access with kept plans, and the protocol of a join; `locks`: its locks.
//! - `graph`: union-find for `backfill` (history in one pass); `check`: `mp_check`'s replay.
//! - `attach`: the registry of attached tables (ownership and trigger checks);
//! - `api`: the Rust-backed SQL functions; `json_api`: the seed's HTTP API shapes;
//!   `trigger`: the stamping trigger; `probe` and `cache`: its lookups; `guc`: settings.
//!
//! SQL objects live in `sql/schema.sql` (tables) and `sql/api.sql` (plain SQL functions).

use pgrx::prelude::*;

pub mod error;
pub mod graph;
pub mod ingest;
pub mod rules;

mod api;
mod attach;
mod backfill;
mod cache;
mod check;
mod guc;
mod json_api;
mod locks;
mod probe;
mod store;
mod trigger;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
