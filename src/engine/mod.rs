//! The engine: identity events executed, online (join.rs, under the locks) or in a statement's
//! batch (batch.rs, in memory, written when the statement ends).

use crate::core::error::IdentityError;
use crate::core::rules::Project;

pub mod batch;
pub mod join;

pub use join::{apply, execute, Executed};

/// A project by token, or `UnknownProject`. Every function that reads or writes the graph asks
/// for its project first: a statement's identity events still held in memory (batch.rs) are
/// written before it reads.
pub fn project(token: Option<&str>) -> Result<Project, IdentityError> {
    let token = token.ok_or(IdentityError::NullId { field: "project" })?;
    batch::flush();
    crate::store::cached_project(Some(token))
}

/// Only the id of a project by token (the `mp_resolve` path: no settings cloned on a hit),
/// after the same write of a statement's batch.
pub fn project_id(token: &str) -> Result<i32, IdentityError> {
    batch::flush();
    crate::store::cached_project_id(token)
}
