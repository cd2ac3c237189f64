//! People profiles in SQL: `mp_engage` stores each Engage update with the id it was sent to
//! (`identity_merge.profile_updates`), and `mp_profile` folds the updates sent to any id of the
//! person (`core::profile::fold`), in the order they were sent. Merges and splits need nothing
//! here: a profile is always the fold over the person's ids as the graph says now.
//!
//! Simplified ID Merge: as Mixpanel documents, what was set on a `$device:` id before the device
//! was linked to a user is not carried over to the user's profile (the device's own profile,
//! while it is unlinked, has it), unless the project setting carry_device_profile is 'on'.

use pgrx::prelude::*;
use serde_json::Value;

use crate::core::error::IdentityError;
use crate::core::profile::{fold, ProfileOp};
use crate::core::Mode;
use crate::pg::{as_owner, OrBug, OrRaise};

/// Stores one update for its project. The refusal, when there is one, names the field.
pub fn engage_one(update: &Value) -> Result<(), IdentityError> {
    let u = crate::core::profile::engage_update(update)?;
    let project = crate::engine::project(Some(&u.token))?;
    // The ids the identity path refuses (blank, too long for the index, placeholders) are no
    // profile either: every broken client would write into one shared profile.
    project
        .settings
        .validate_id("$distinct_id", Some(&u.distinct_id))?;
    // On Citus, update ids follow the order of the writes (sql/scaling.sql).
    if !crate::sync::locks::hold_cluster_wide(project.id) {
        return Err(IdentityError::project_contention(&u.distinct_id));
    }
    as_owner(|| {
        Spi::run_with_args(
            "INSERT INTO identity_merge.profile_updates (project_id, distinct_id, operation, value, sent_at) \
             VALUES ($1, $2, $3, $4, coalesce(pg_catalog.to_timestamp($5 OPERATOR(pg_catalog./) 1000.0), pg_catalog.now()))",
            &[
                project.id.into(),
                u.distinct_id.as_str().into(),
                u.op.key().into(),
                pgrx::JsonB(u.value.clone()).into(),
                u.time_ms.into(),
            ],
        )
    })
    .or_bug("storing a profile update");
    Ok(())
}

/// The person `distinct_id` belongs to: its canonical id and every id of it (the id alone when
/// the graph does not hold it).
fn person_of(project_id: i32, distinct_id: &str) -> (String, Vec<String>) {
    as_owner(|| {
        Spi::connect(|c| {
            let row = c
                .select(
                    "WITH person AS (SELECT coalesce((SELECT i.canonical_id::text FROM identity_merge.identities i \
                                       WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.distinct_id OPERATOR(pg_catalog.=) $2), $2) AS canonical) \
                     SELECT person.canonical, ARRAY(SELECT i.distinct_id::text FROM identity_merge.identities i \
                                                     WHERE i.project_id OPERATOR(pg_catalog.=) $1 AND i.canonical_id OPERATOR(pg_catalog.=) person.canonical \
                                                    UNION SELECT person.canonical) \
                       FROM person",
                    None,
                    &[project_id.into(), distinct_id.into()],
                )
                .or_bug("reading a person's ids")
                .first();
            let canonical = row
                .get::<String>(1)
                .or_bug("reading a person's ids")
                .unwrap_or_else(|| distinct_id.to_string());
            let ids = row
                .get::<Vec<String>>(2)
                .or_bug("reading a person's ids")
                .unwrap_or_default();
            (canonical, ids)
        })
    })
}

/// The profile of the person `distinct_id` belongs to in `project`.
pub fn profile_of(project: &crate::core::rules::Project, distinct_id: &str) -> Value {
    let (canonical, ids) = person_of(project.id, distinct_id);
    let rows: Vec<(bool, String, Value, Option<bool>)> = as_owner(|| {
        Spi::connect(|c| {
            c.select(
                // The person's updates in the order sent, and for a device whether each update
                // came before the link that made it part of this person.
                "SELECT (u.distinct_id OPERATOR(pg_catalog.=) $3 \
                         OR pg_catalog.left(u.distinct_id, 8) OPERATOR(pg_catalog.<>) '$device:'), \
                        u.operation, u.value, \
                        u.sent_at OPERATOR(pg_catalog.<) (SELECT pg_catalog.max(l.merged_at) FROM identity_merge.merge_log l \
                                       WHERE l.project_id OPERATOR(pg_catalog.=) $1 AND l.id_b OPERATOR(pg_catalog.=) u.distinct_id \
                                         AND l.operation OPERATOR(pg_catalog.=) 'link' AND l.retracted_by IS NULL) \
                   FROM identity_merge.profile_updates u \
                  WHERE u.project_id OPERATOR(pg_catalog.=) $1 AND u.distinct_id OPERATOR(pg_catalog.=) ANY ($2::text[]) \
                  ORDER BY u.sent_at, u.update_id",
                None,
                &[project.id.into(), ids.clone().into(), canonical.as_str().into()],
            )
            .or_bug("reading a profile")
            .map(|r| {
                (
                    r.get::<bool>(1).or_bug("reading a profile").unwrap_or(true),
                    r.get::<String>(2).or_bug("reading a profile").unwrap_or_default(),
                    r.get::<pgrx::JsonB>(3).or_bug("reading a profile").map(|j| j.0).unwrap_or(Value::Null),
                    r.get::<bool>(4).or_bug("reading a profile"),
                )
            })
            .collect()
        })
    });
    // Simplified: a device's updates from before its link to this person stay with the device
    // (unless the device is the person: an unlinked device's own profile), unless the project's
    // carry_device_profile says to carry them over.
    let drop_device_before_link =
        project.mode == Mode::Simplified && !crate::store::carry_device_profile(project.id);
    let updates = rows
        .iter()
        .filter_map(|(own_or_not_device, op, value, before_link)| {
            if drop_device_before_link && !own_or_not_device && before_link.unwrap_or(true) {
                return None;
            }
            // A long fold answers a cancel or statement_timeout between updates.
            pgrx::check_for_interrupts!();
            ProfileOp::parse(op).map(|op| (op, value))
        });
    let mut profile = fold(updates);
    // Identity records describing any id of the person follow it like its properties.
    let records = crate::api::records::records_of(project.id, &ids);
    if !records.is_empty() {
        profile.insert("$identity_records".into(), Value::from(records));
    }
    Value::Object(profile)
}

/// The profile of a person: the fold of the Engage updates sent to any of the person's ids.
/// `{}` for a person with none.
#[pg_extern(stable, strict, parallel_safe)]
fn mp_profile(distinct_id: &str, project: default!(&str, "'default'")) -> pgrx::JsonB {
    let project = crate::engine::project(Some(project)).or_raise();
    pgrx::JsonB(profile_of(&project, distinct_id))
}

#[pg_schema]
mod identity_merge {
    use super::*;

    /// Mixpanel `/engage` bodies: one update or an array of them (mp_engage).
    #[pg_extern(volatile, parallel_unsafe)]
    fn _engage(payload: Option<&str>) -> pgrx::JsonB {
        crate::api::http::answer(payload, "payload", engage_one)
    }
}
