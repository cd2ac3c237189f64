//! `mp_split` and `mp_unjoin`: undoing joins (engine/retract.rs does the work).

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::engine::retract::{one_text, retract, Changed, Target};
use crate::pg::{as_owner, OrRaise};

fn rows(
    changed: Changed,
) -> TableIterator<
    'static,
    (
        name!(id, String),
        name!(old_canonical, String),
        name!(new_canonical, String),
    ),
> {
    TableIterator::new(changed)
}

/// Retracts every join `distinct_id` took part in: its cluster becomes the clusters of the joins
/// that remain (the id alone is one). One row per id whose canonical id changed.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn mp_split(
    distinct_id: &str,
    project: default!(&str, "'default'"),
) -> TableIterator<
    'static,
    (
        name!(id, String),
        name!(old_canonical, String),
        name!(new_canonical, String),
    ),
> {
    let project = crate::engine::project(Some(project)).or_raise();
    let source = crate::store::Source {
        kind: "function",
        detail: serde_json::json!({ "function": "mp_split" }),
    };
    rows(retract(&project, Target::Id(distinct_id), &source).or_raise())
}

/// Retracts one logged join (`identity_merge.merge_log.seq`), with the same rule as mp_split.
#[pg_extern(volatile, strict, parallel_unsafe)]
fn mp_unjoin(
    seq: i64,
) -> TableIterator<
    'static,
    (
        name!(id, String),
        name!(old_canonical, String),
        name!(new_canonical, String),
    ),
> {
    let token = as_owner(|| {
        one_text(
            "SELECT p.token FROM identity_merge.merge_log l JOIN identity_merge.projects p USING (project_id) \
             WHERE l.seq OPERATOR(pg_catalog.=) $1",
            &[seq.into()],
        )
    })
    .ok_or(IdentityError::UnknownJoin { seq })
    .or_raise();
    let project = crate::engine::project(Some(&token)).or_raise();
    let source = crate::store::Source {
        kind: "function",
        detail: serde_json::json!({ "function": "mp_unjoin" }),
    };
    rows(retract(&project, Target::Seq(seq), &source).or_raise())
}
