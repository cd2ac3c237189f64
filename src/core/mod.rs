//! The core: what identity means, in plain Rust with no PostgreSQL types (no `pgrx` import
//! anywhere below this module), unit-tested with plain `cargo test`. The glue around it
//! (src/*.rs) reads rows and payloads, asks the core what they mean, and writes the answer.
//!
//! Dependencies run one way: `model` ← `error` ← `rules` ← `ingest`, `graph` ← `profile`;
//! `graph` ← `mixpanel`;
//! `error` ← `attachment` ← `staged`.
//! - `model`: the vocabulary (operations and their names, modes, anon id formats);
//! - `error`: the one error type, its reason codes and SQLSTATEs (raised by `crate::pg`);
//! - `rules`: valid ids, which join is allowed, which canonical id survives, size limits,
//!   and a project's settings;
//! - `ingest`: what an event (a row, a Mixpanel payload, a history row) means: a plan of
//!   operations to apply and refusals to record;
//! - `graph`: union-find over a history, with the same rules, for `mp_backfill`;
//! - `mixpanel`: a Mixpanel export's identity mappings checked and imported into a graph
//!   (`mp_import_mixpanel`);
//! - `profile`: people profiles, the fold of the Engage updates sent to a person's ids;
//! - `record`: identity records (the seed's "Create an Identity"): valid bodies, their content;
//! - `attachment`: what an attached table's stamping trigger says (its arguments);
//! - `columns`: the column types the trigger reads and writes (ids, properties);
//! - `staged`: a staged batch moved into an attached table (`mp_ingest`): the read of its
//!   identity rows and the one INSERT of every row with its stamp.

pub mod attachment;
pub mod columns;
pub mod error;
pub mod graph;
pub mod ingest;
pub mod mixpanel;
pub mod model;
pub mod profile;
pub mod record;
pub mod rules;
pub mod staged;

pub use model::{AnonIdFormat, Mode, Op};
