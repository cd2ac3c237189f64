//! The writes of `mp_import_mixpanel` beyond the graph's bulk writes (bulk.rs): the refused rows
//! of an export, recorded once however often it is imported, and people rows as `$set` updates.

use pgrx::prelude::*;

use crate::core::error::{IdentityError, Reason};
use crate::pg::OrBug;
use crate::store::bulk::{write_chunk, CHUNK};

/// One refused row of an export table: its position as read, its two values (the mapping's
/// distinct_id and resolved_distinct_id; a people row's distinct_id), and why.
pub struct ImportRefusal {
    pub ordinal: i64,
    pub a: Option<String>,
    pub b: Option<String>,
    pub err: IdentityError,
}

/// Records refused rows of `table` as rejections (operation `operation`, the table as their
/// source_table, so that a role sees those of tables it may read), once per project, operation,
/// reason and ids: the first of identical refused rows (its row number), and none already
/// recorded by an earlier import of the same export, which then changes nothing.
pub fn write_import_refusals(
    c: &mut pgrx::spi::SpiClient<'_>,
    pid: i32,
    table: pg_sys::Oid,
    operation: &str,
    refusals: &[ImportRefusal],
) {
    for chunk in refusals.chunks(CHUNK) {
        let reason: Vec<Option<String>> = chunk
            .iter()
            .map(|r| {
                Some(
                    r.err
                        .reason()
                        .unwrap_or(Reason::MalformedEvent)
                        .code()
                        .to_string(),
                )
            })
            .collect();
        let message: Vec<Option<String>> = chunk
            .iter()
            .map(|r| Some(crate::core::ingest::scrub_nul_str(&r.err.message())))
            .collect();
        let a: Vec<Option<String>> = chunk.iter().map(|r| r.a.clone()).collect();
        let b: Vec<Option<String>> = chunk.iter().map(|r| r.b.clone()).collect();
        let ordinal: Vec<Option<i64>> = chunk.iter().map(|r| Some(r.ordinal)).collect();
        write_chunk(
            c,
            "INSERT INTO identity_merge.rejections (project_id, reason_code, message, operation, id_a, id_b, source_table, source_row) \
             SELECT $1, u.r, u.m, $7, u.a, u.b, $8::pg_catalog.oid::pg_catalog.regclass, \
                    pg_catalog.jsonb_build_object('imported_from', 'Mixpanel', 'table', $8::pg_catalog.oid::pg_catalog.regclass::pg_catalog.text, 'row', u.n) \
             FROM (SELECT DISTINCT ON (u.r, u.a, u.b) u.* \
                     FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[]), pg_catalog.unnest($5::text[]), pg_catalog.unnest($6::int8[])) u(r, m, a, b, n) \
                    ORDER BY u.r, u.a, u.b, u.n) u \
             WHERE NOT EXISTS (SELECT 1 FROM identity_merge.rejections x \
                                WHERE x.project_id OPERATOR(pg_catalog.=) $1 AND x.operation OPERATOR(pg_catalog.=) $7 \
                                  AND x.reason_code OPERATOR(pg_catalog.=) u.r \
                                  AND x.id_a IS NOT DISTINCT FROM u.a AND x.id_b IS NOT DISTINCT FROM u.b) \
             ORDER BY u.n",
            pid,
            |args| {
                args.extend([
                    reason.into(),
                    message.into(),
                    a.into(),
                    b.into(),
                    ordinal.into(),
                    operation.into(),
                    table.into(),
                ])
            },
        );
    }
}

/// Stores people rows (distinct_id, properties as JSON object text) as `$set` updates sent at
/// the import's time, skipping a row whose `$set` of the same properties the id already has
/// (an earlier import of the same export). Returns how many were stored.
pub fn insert_people(
    c: &mut pgrx::spi::SpiClient<'_>,
    pid: i32,
    rows: Vec<(String, String)>,
) -> i64 {
    let mut stored = 0;
    let mut rows = rows;
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(CHUNK));
        let (ids, values): (Vec<Option<String>>, Vec<Option<String>>) =
            rows.into_iter().map(|(d, v)| (Some(d), Some(v))).unzip();
        let mut scratch = pgrx::PgMemoryContexts::new("identity_merge people chunk");
        // SAFETY: the arguments are built and used inside the scratch context and dropped
        // before it is freed; the count read out is a plain integer.
        let n = unsafe {
            scratch.switch_to(|_| {
                c.update(
                    "WITH ins AS (INSERT INTO identity_merge.profile_updates (project_id, distinct_id, operation, value, sent_at) \
                     SELECT $1, u.d, '$set', u.v::pg_catalog.jsonb, pg_catalog.now() \
                       FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[])) WITH ORDINALITY u(d, v, n) \
                      WHERE NOT EXISTS (SELECT 1 FROM identity_merge.profile_updates x \
                                         WHERE x.project_id OPERATOR(pg_catalog.=) $1 AND x.distinct_id OPERATOR(pg_catalog.=) u.d \
                                           AND x.operation OPERATOR(pg_catalog.=) '$set' \
                                           AND x.value OPERATOR(pg_catalog.=) u.v::pg_catalog.jsonb) \
                      ORDER BY u.n RETURNING 1) \
                     SELECT pg_catalog.count(*) FROM ins",
                    None,
                    &[pid.into(), ids.into(), values.into()],
                )
                .or_bug("storing people rows")
                .first()
                .get_one::<i64>()
                .or_bug("storing people rows")
                .unwrap_or(0)
            })
        };
        stored += n;
        rows = rest;
    }
    stored
}
