//! identity_merge: Mixpanel's ID Merge inside PostgreSQL.
//!
//! Two rooms:
//! - `core/`: what identity means, plain Rust with no PostgreSQL types (model, error, rules,
//!   ingest, graph); see core/mod.rs. Unit-tested with plain `cargo test`.
//! - the glue, one module per concern, each thin around the core:
//!   - `trigger`: the stamping trigger; `probe` and `cache`: its lookups (direct index probes,
//!     a per-backend cache kept correct by invalidations); `ring`: other sessions' committed
//!     joins, told through shared memory so that caches need not empty;
//!   - `store`: SPI with kept plans, the project cache, the locking protocol of a join, and
//!     executing an event's plan; `locks`: its locks; `batch`: a statement's identity events
//!     applied in memory and written once when it ends;
//!   - `api`: the Rust-backed SQL functions; `json_api`: the seed's HTTP API shapes;
//!     `people`: profiles (`mp_engage`, `mp_profile`); `records`: identity records;
//!     `backfill`: history in one pass; `check`: `mp_check`'s replay; `explain`: why two ids
//!     are one person (`mp_explain`); `retract`: undoing joins (`mp_split`, `mp_unjoin`);
//!     `attach`: the registry
//!     of attached tables; `guc`: settings; `citus`: what changes on a Citus cluster (where
//!     the replicated rows are, shards, the queue of their identity events);
//!   - `owner`: work on a user's table done on another role's behalf, as the table's owner in a
//!     security-restricted operation (mp_restamp, mp_backfill_from);
//!   - `pg`: PostgreSQL plumbing shared by all of them (raising errors, running as the
//!     extension owner or under another resource owner, the local xid, the schema's oids).
//!
//! An identity event runs one way: trigger / `mp_track` → `core::ingest::plan_event` →
//! `store::execute` → `core::rules` and `locks` → refusals back as data → `store::record_refusals`
//! (or, for a statement past `identity_merge.batch_threshold` identity events, `batch::execute`
//! → `core::graph`, written by `batch::flush` when the statement ends).
//!
//! SQL objects live in `sql/schema.sql` (tables), `sql/api.sql` (plain SQL functions) and
//! `sql/scaling.sql` (Citus).

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
extension_sql_file!("../sql/api.sql", name = "api", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    pg::guc::init();
    api::hooks::init();
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
