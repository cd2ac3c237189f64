//! Identity records in SQL (`mp_identity_record_create`): validates the body (core::record),
//! hashes its canonical content with PostgreSQL's sha256, stores the record once per content,
//! and answers the seed's Identity object, or its 400 "Bad Request" naming the field, or a 409
//! "Conflict" when the content already describes another person.

use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::core::error::IdentityError;
use crate::core::record::{
    canonical_content, record_body, uuid_from_digest, BadRequest, RecordBody,
};
use crate::pg::{as_owner, OrBug, OrRaise};

fn bad_request(b: &BadRequest) -> Value {
    json!({
        "status": 400,
        "error": "Bad Request",
        "field": b.field,
        "message": format!("{} {}", b.field, b.problem),
    })
}

fn sha256_hex(text: &str) -> String {
    Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to($1, 'UTF8')), 'hex')",
        &[text.into()],
    )
    .or_bug("hashing a record")
    .or_bug("hashing a record")
}

/// The seed's Identity object for a stored record.
fn identity_object(row: &Value, created: bool) -> Value {
    let wallet = row["creator"].as_str().unwrap_or_default().to_string();
    let creator_id = uuid_from_digest(&sha256_hex(&wallet));
    json!({
        "id": row["id"],
        "identity_id": row["identity_id"],
        "identity_hash": row["identity_hash"],
        "display_name": row["display_name"],
        "description": row["description"],
        "image": row["image"],
        "external_reference": row["external_reference"],
        "creator": {
            "id": creator_id,
            "wallet": wallet,
            "role": "User",
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        },
        "status": "complete",
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "num_positions": 0,
        "vault_id": "0",
        "assets_sum": "0",
        "conviction_sum": "0",
        "conviction_price": "0",
        "created": created,
    })
}

/// The 409 of a record whose content already describes another person: a record describes one
/// person (its content is its identity), so it is not silently left with the first.
fn conflict(body: &RecordBody, row: &Value) -> Value {
    let held = |k: &str| row[k].as_str().unwrap_or_default().to_string();
    let (held_id, held_token) = (held("held_distinct_id"), held("held_token"));
    json!({
        "status": 409,
        "error": "Conflict",
        "field": "distinct_id",
        "message": format!(
            "distinct_id {:?} (project {:?}): a record with this content already exists and describes \
             distinct_id {held_id:?} (project {held_token:?}); a record describes one person: give this \
             one other content (e.g. its description), or no distinct_id to read the existing record",
            body.distinct_id.as_deref().unwrap_or_default(),
            body.token.as_deref().unwrap_or_default(),
        ),
        "identity_id": row["identity_id"],
        "held_by": {"distinct_id": held_id, "$token": held_token},
    })
}

/// The Identity object of the new or existing record, or the answer refusing the body.
fn create(body: &RecordBody) -> Result<Value, Value> {
    let project = match &body.token {
        Some(t) => Some(crate::engine::project(Some(t)).map_err(|e| {
            bad_request(&BadRequest {
                field: "$token".into(),
                problem: e.message(),
            })
        })?),
        None => None,
    };
    // The person's id is checked as the identity path checks ids (blank, placeholders, longer
    // than the 255 characters the index takes).
    if let Some(p) = &project {
        p.settings
            .validate_id("distinct_id", body.distinct_id.as_deref())
            .map_err(|e| {
                bad_request(&BadRequest {
                    field: "distinct_id".into(),
                    problem: format!("is refused: {}", e.message()),
                })
            })?;
    }
    let project_id = project.as_ref().map(|p| p.id);
    let hash = sha256_hex(&canonical_content(body));
    let id = uuid_from_digest(&hash);
    let identity_id = format!("did:identity_merge:sha256:{hash}");
    let (row, created) = as_owner(|| {
        Spi::connect_mut(|c| -> Result<(Value, bool), pgrx::spi::SpiError> {
            // A new record, or the one with this content (it gains the person when it had none).
            let columns = "pg_catalog.jsonb_build_object('id', id, 'identity_id', identity_id, 'identity_hash', identity_hash, \
                 'display_name', display_name, 'description', description, 'image', image, \
                 'external_reference', external_reference, 'creator', creator, \
                 'created_at', pg_catalog.to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                 'updated_at', pg_catalog.to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))";
            let inserted = c.update(
                &format!(
                    "INSERT INTO identity_merge.identity_records (id, identity_id, identity_hash, display_name, description, \
                     image, external_reference, creator, project_id, distinct_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (identity_hash) DO NOTHING RETURNING {columns}"
                ),
                None,
                &[
                    id.as_str().into(),
                    identity_id.as_str().into(),
                    hash.as_str().into(),
                    body.display_name.as_str().into(),
                    body.description.as_deref().into(),
                    body.image.as_deref().into(),
                    body.external_reference.as_deref().into(),
                    body.creator.as_str().into(),
                    project_id.into(),
                    body.distinct_id.as_deref().into(),
                ],
            )?;
            if !inserted.is_empty() {
                let row = inserted.first().get::<pgrx::JsonB>(1)?.map(|j| j.0).unwrap_or(Value::Null);
                return Ok((row, true));
            }
            // With the person it describes (another one than asked is a 409).
            let existing = c.update(
                &format!(
                    "UPDATE identity_merge.identity_records r SET project_id = coalesce(project_id, $2), \
                     distinct_id = coalesce(distinct_id, $3), updated_at = CASE WHEN distinct_id IS NULL AND $3 IS NOT NULL \
                     THEN pg_catalog.now() ELSE updated_at END WHERE identity_hash OPERATOR(pg_catalog.=) $1 \
                     RETURNING {columns} OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('held_project_id', project_id, \
                       'held_distinct_id', distinct_id, 'held_token', (SELECT p.token FROM identity_merge.projects p \
                                                                        WHERE p.project_id OPERATOR(pg_catalog.=) r.project_id))"
                ),
                None,
                &[hash.as_str().into(), project_id.into(), body.distinct_id.as_deref().into()],
            )?;
            let row = existing.first().get::<pgrx::JsonB>(1)?.map(|j| j.0).unwrap_or(Value::Null);
            Ok((row, false))
        })
    })
    .or_bug("storing an identity record");
    if !created && body.distinct_id.is_some() {
        let held = (
            row["held_project_id"].as_i64(),
            row["held_distinct_id"].as_str(),
        );
        // Another id of the same person is the same person: the record already describes it.
        let same_person = |pid: i32, a: &str, b: &str| {
            let resolve = |id| crate::store::probe::resolve(pid, id).or_raise();
            a == b || resolve(a) == resolve(b)
        };
        let same = match (project_id, held, body.distinct_id.as_deref()) {
            (Some(pid), (Some(held_pid), Some(held_id)), Some(id))
                if i64::from(pid) == held_pid =>
            {
                same_person(pid, held_id, id)
            }
            _ => false,
        };
        if !same {
            return Err(conflict(body, &row));
        }
    }
    Ok(identity_object(&row, created))
}

/// The records describing the person of `ids` (for mp_profile): their identity_ids.
pub fn records_of(project_id: i32, ids: &[String]) -> Vec<String> {
    as_owner(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT identity_id FROM identity_merge.identity_records WHERE project_id OPERATOR(pg_catalog.=) $1 \
                 AND distinct_id OPERATOR(pg_catalog.=) ANY ($2::text[]) ORDER BY created_at, identity_id",
                None,
                &[project_id.into(), ids.to_vec().into()],
            )
            .or_bug("reading identity records")
            .filter_map(|r| r.get::<String>(1).ok().flatten())
            .collect()
        })
    })
}

#[pg_schema]
mod identity_merge {
    use super::*;

    /// The seed's "Create an Identity" (`POST /identity`) body, as text (mp_identity_record_create).
    #[pg_extern(volatile, parallel_unsafe)]
    fn _identity_record_create(body: Option<&str>) -> pgrx::JsonB {
        // Parsed as every JSON API body is; its refusals name the field like a 400 does.
        let parsed = crate::api::http::parse(body, "body").map_err(|e| match e {
            IdentityError::MalformedEvent { field, problem } => BadRequest { field, problem },
            other => BadRequest {
                field: "body".into(),
                problem: other.message(),
            },
        });
        let answer = parsed
            .and_then(|v| record_body(&v))
            .map_err(|b| bad_request(&b))
            .and_then(|r| create(&r));
        pgrx::JsonB(answer.unwrap_or_else(|refusal| refusal))
    }
}
