//! `mp_backfill` and `mp_backfill_from`'s `_backfill_from_table` (Segment's tables) and
//! `_backfill_events_from_table` (an event table's rows): a history of identity events loaded in
//! one pass (engine/backfill.rs does the work).

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::engine::backfill::{backfill, Rows};
use crate::pg::raise;

#[pg_extern(volatile, parallel_unsafe)]
fn mp_backfill(
    source: Option<&str>,
    project: default!(Option<&str>, "'default'"),
) -> TableIterator<
    'static,
    (
        name!(events, i64),
        name!(joins, i64),
        name!(refused, i64),
        name!(ids_written, i64),
        name!(clusters_written, i64),
    ),
> {
    let null = |argument| {
        raise(IdentityError::NullArgument {
            function: "mp_backfill",
            argument,
        })
    };
    let source = source.unwrap_or_else(|| null("source"));
    TableIterator::once(backfill(
        source,
        project.unwrap_or_else(|| null("project")),
        None,
        Rows::History,
    ))
}

/// `identity_merge._backfill_from_table(source text, project text, events regclass)`, declared
/// in sql/api.sql: the history query of mp_backfill_from's Segment form ((operation, id_a,
/// id_b) rows), read as the owner of `events`.
#[pg_extern(sql = false)]
fn _backfill_from_table(
    source: &str,
    project: &str,
    events: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(events, i64),
        name!(joins, i64),
        name!(refused, i64),
        name!(ids_written, i64),
        name!(clusters_written, i64),
    ),
> {
    TableIterator::once(backfill(source, project, Some(events), Rows::History))
}

/// `identity_merge._backfill_events_from_table(source text, project text, p_events regclass)`,
/// declared in sql/api.sql: mp_backfill_from's query of an event table's rows ((event,
/// properties, device_id, user_id) as text, in time order; `$1` the identity event names), read
/// as the owner of `events`, each row planned as the stamping trigger plans it.
#[pg_extern(sql = false)]
fn _backfill_events_from_table(
    source: &str,
    project: &str,
    events: pg_sys::Oid,
) -> TableIterator<
    'static,
    (
        name!(events, i64),
        name!(joins, i64),
        name!(refused, i64),
        name!(ids_written, i64),
        name!(clusters_written, i64),
    ),
> {
    TableIterator::once(backfill(source, project, Some(events), Rows::Events))
}
