//! identity_merge: Mixpanel's ID Merge inside PostgreSQL.
//!
//! Six layers, one folder each, lowest first (docs/architecture.md has a line per file):
//! - `core/`: what identity means, plain Rust with no PostgreSQL types (model, error, rules,
//!   ingest, graph, profile, record); see core/mod.rs. Unit-tested with plain `cargo test`.
//! - `pg/`: PostgreSQL plumbing (raising errors, running as the extension owner or under
//!   another resource owner, the local xid, the schema's oids), settings (`guc`), work on a
//!   user's table as its owner (`owner`).
//! - `sync/`: lock-manager locks, the ring of other sessions' committed joins in shared memory,
//!   the per-backend stamp cache, and where the identity rows are on this node (`placement`).
//! - `store/`: the extension's statements: kept plans and the project cache, direct index
//!   probes, bulk writes, the Citus queue's statements.
//! - `engine/`: identity events executed: the join protocol online (`join`), or a statement's
//!   batch in memory (`batch`); `engine::project` writes a batch before anything reads.
//! - `api/`: every SQL function, the stamping trigger and the hooks.
//!
//! The import rule: `api -> engine -> store -> sync -> pg -> core` (a module uses its siblings
//! and the layers below it); `layers.rs` is the unit test that keeps it.
//!
//! An identity event runs one way: trigger / Citus queue / Segment / `mp_track` →
//! `core::ingest::plan_event` → `engine::ingest` → `engine::execute` → `core::rules` and
//! `sync::locks` → refusals back as data → `store::record_refusals` (or, for a statement past `identity_merge.batch_threshold`
//! identity events, `engine::batch::execute` → `core::graph`, written by `engine::batch::flush`
//! when the statement ends, from api/hooks.rs).
//!
//! SQL objects live in `sql/schema.sql` (tables), `sql/api.sql` (plain SQL functions),
//! `sql/scaling.sql` (Citus) and `sql/mixpanel.sql` (Mixpanel exports: mp_import_mixpanel).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use pgrx::prelude::*;

pub mod core;

mod api;
mod engine;
mod pg;
mod store;
mod sync;

#[cfg(test)]
mod layers;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/scaling.sql",
    name = "scaling",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/mixpanel.sql",
    name = "mixpanel",
    requires = ["schema"]
);
extension_sql_file!("../sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    pg::guc::init();
    api::hooks::init();
    api::worker::register_launcher();
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
