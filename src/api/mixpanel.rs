//! `mp_import_mixpanel`'s Rust part, `identity_merge._import_mixpanel`, declared in
//! sql/mixpanel.sql: the SQL function checks the export's tables and columns and passes the
//! queries that read them as text; engine/mixpanel.rs imports.

use pgrx::prelude::*;

use crate::engine::mixpanel::import;

/// `identity_merge._import_mixpanel(project text, p_mappings regclass, mapping_sql text,
/// p_people regclass, people_sql text)`: the identity mappings (and people rows, when
/// `people` is not NULL) of a Mixpanel export, each table read as its owner.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn _import_mixpanel(
    project: &str,
    mappings: pg_sys::Oid,
    mapping_sql: &str,
    people: Option<pg_sys::Oid>,
    people_sql: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(mappings, i64),
        name!(joins, i64),
        name!(unchanged, i64),
        name!(invalid, i64),
        name!(mapped_twice, i64),
        name!(chains, i64),
        name!(conflicts, i64),
        name!(ids_written, i64),
        name!(clusters_written, i64),
        name!(people, i64),
        name!(people_refused, i64),
    ),
> {
    let people = people.zip(people_sql);
    let c = import(project, mappings, mapping_sql, people);
    TableIterator::once((
        c.mappings,
        c.joins,
        c.unchanged,
        c.invalid,
        c.mapped_twice,
        c.chains,
        c.conflicts,
        c.ids_written,
        c.clusters_written,
        c.people,
        c.people_refused,
    ))
}
