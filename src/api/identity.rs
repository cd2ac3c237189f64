//! The contract's SQL functions that need the Rust rules: `mp_identify`, `mp_alias`,
//! `mp_merge` (both forms) and `mp_resolve`. Thin: look up the project, refuse the wrong
//! mode, hand over to `crate::engine::apply`, raise errors through `error::raise`. The functions that
//! are plain SQL (projects, mp_cluster, mp_attach, mp_restamp...) are in sql/api.sql.

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::core::Op;
use crate::pg::{raise, OrRaise};

fn run(op: Op, a: Option<&str>, b: Option<&str>, project: Option<&str>) -> String {
    let project = crate::engine::project(project).or_raise();
    if !project.mode.allows(op) {
        raise(IdentityError::WrongMode {
            op: op.function_name(),
            token: project.token,
            mode: project.mode,
        });
    }
    let source = crate::store::Source {
        kind: "function",
        detail: serde_json::json!({ "function": op.function_name() }),
    };
    crate::engine::apply(&project, op, a, b, &source).or_raise()
}

/// `$identify`: joins anon_id's cluster to identified_id's; returns the canonical id.
#[pg_extern(volatile, parallel_unsafe)]
fn mp_identify(
    identified_id: Option<&str>,
    anon_id: Option<&str>,
    project: default!(Option<&str>, "'default'"),
) -> String {
    run(Op::Identify, identified_id, anon_id, project)
}

/// `$create_alias`: alias joins distinct_id's cluster; returns the canonical id.
#[pg_extern(volatile, parallel_unsafe)]
fn mp_alias(
    alias: Option<&str>,
    distinct_id: Option<&str>,
    project: default!(Option<&str>, "'default'"),
) -> String {
    run(Op::Alias, alias, distinct_id, project)
}

/// `$merge`: joins the two clusters whatever they hold; returns the canonical id.
#[pg_extern(volatile, parallel_unsafe)]
fn mp_merge(
    distinct_id_a: Option<&str>,
    distinct_id_b: Option<&str>,
    project: default!(Option<&str>, "'default'"),
) -> String {
    run(Op::Merge, distinct_id_a, distinct_id_b, project)
}

/// `$merge` with `$distinct_ids` as an array of exactly two ids.
#[pg_extern(volatile, parallel_unsafe, name = "mp_merge")]
fn mp_merge_array(
    distinct_ids: Option<Vec<Option<String>>>,
    project: default!(Option<&str>, "'default'"),
) -> String {
    let ids = distinct_ids
        .ok_or(IdentityError::NullId {
            field: "distinct_ids",
        })
        .or_raise();
    if ids.len() != 2 {
        raise(IdentityError::InvalidArgument {
            what: "distinct_ids (it must hold exactly 2 ids; its length is shown)",
            value: ids.len().to_string(),
            hint: "Pass ARRAY[id_a, id_b], as $distinct_ids of the $merge event.",
        });
    }
    run(Op::Merge, ids[0].as_deref(), ids[1].as_deref(), project)
}

/// The canonical distinct_id of an id; an id never seen resolves to itself. One direct index
/// probe under the caller's snapshot (no SPI), the project from the backend's cache.
#[pg_extern(stable, strict, parallel_safe)]
fn mp_resolve(distinct_id: &str, project: default!(&str, "'default'")) -> String {
    let project_id = crate::engine::project_id(project).or_raise();
    crate::store::probe::resolve(project_id, distinct_id).or_raise()
}
