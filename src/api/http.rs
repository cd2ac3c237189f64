//! The seed's HTTP API shapes as SQL functions: the Identity API request bodies
//! (`/identity/create`, `/identity/create-alias`, `/identity/merge`) and Mixpanel event
//! payloads (`/track`, `/import`), answered with `IdentityResponse` (`{"status": 1}` or
//! `{"status": 0, "error": "<reason code>: <message>"}`). Bad content never raises.
//! The SQL-facing `mp_*` wrappers (sql/api.sql) pass the jsonb as text, so that parsing, and
//! its limits (nesting depth), are ours to answer rather than a conversion error.

use pgrx::prelude::*;
use serde_json::{json, Value};

use crate::core::error::IdentityError;
use crate::core::ingest;
use crate::core::Op;
use crate::pg::raise;
use crate::store::{self, Rejection};

/// Most events one `mp_track` call takes (Mixpanel's /import batch limit).
pub const MAX_BATCH: usize = 2000;

fn ok() -> Value {
    json!({"status": 1})
}

fn failed(err: &IdentityError) -> Value {
    json!({"status": 0, "error": ingest::scrub_nul_str(&err.message())})
}

/// A JSON body passed as text (NULL and unreadable text refused, naming `what`).
pub(crate) fn parse(body: Option<&str>, what: &str) -> Result<Value, IdentityError> {
    let body = body.ok_or_else(|| IdentityError::MalformedEvent {
        field: what.into(),
        problem: "is NULL".into(),
    })?;
    serde_json::from_str(body).map_err(|e| IdentityError::MalformedEvent {
        field: what.into(),
        problem: format!("cannot be read: {e}"),
    })
}

/// Transient conflicts are raised (retry the transaction); everything else is an answer.
fn respond(result: Result<(), IdentityError>) -> pgrx::JsonB {
    match result {
        Ok(()) => pgrx::JsonB(ok()),
        Err(err) if err.is_retryable() => raise(err),
        Err(err) => pgrx::JsonB(failed(&err)),
    }
}

fn identity_call(op: Op, endpoint: &'static str, body: Option<&str>) -> pgrx::JsonB {
    respond((|| {
        let v = parse(body, "body")?;
        let (token, a, b) = ingest::identity_request(op, &v)?;
        let project = crate::engine::project(Some(&token))?;
        if !project.mode.allows(op) {
            return Err(IdentityError::WrongMode {
                op: endpoint,
                token,
                mode: project.mode,
            });
        }
        let source = crate::store::Source {
            kind: "identity_api",
            detail: json!({ "endpoint": endpoint }),
        };
        crate::engine::apply(&project, op, a.as_deref(), b.as_deref(), &source).map(|_| ())
    })())
}

fn record(
    project_id: Option<i32>,
    err: &IdentityError,
    op: Option<&str>,
    a: Option<&str>,
    b: Option<&str>,
    event: &Value,
) {
    store::record_rejection(Rejection {
        project_id,
        reason: err
            .reason()
            .unwrap_or(crate::core::error::Reason::MalformedEvent),
        message: err.message(),
        operation: op,
        id_a: a,
        id_b: b,
        source_table: None,
        source_row: Some(pgrx::JsonB(event.clone())),
    });
}

/// The answer to a batch: one IdentityResponse per item under `results`, status 1 when all
/// succeeded (a retryable conflict is raised: the whole call is retried).
fn batch_answer(items: &[Value], one: impl Fn(&Value) -> Result<(), IdentityError>) -> pgrx::JsonB {
    let mut all_ok = true;
    let results: Vec<Value> = items
        .iter()
        .map(|e| match one(e) {
            Ok(()) => ok(),
            Err(err) if err.is_retryable() => raise(err),
            Err(err) => {
                all_ok = false;
                failed(&err)
            }
        })
        .collect();
    let failures = results.iter().filter(|r| r["status"] == 0).count();
    let mut out = json!({"status": if all_ok { 1 } else { 0 }, "results": results});
    if !all_ok {
        out["error"] = json!(format!(
            "{failures} of {} events failed; see results",
            items.len()
        ));
    }
    pgrx::JsonB(out)
}

/// The answer to a JSON payload of one item or an array of them (at most MAX_BATCH), each
/// handled by `one`: never an exception for bad content.
pub fn answer(
    payload: Option<&str>,
    what: &str,
    one: impl Fn(&Value) -> Result<(), IdentityError>,
) -> pgrx::JsonB {
    let v = match parse(payload, what) {
        Ok(v) => v,
        Err(err) => return pgrx::JsonB(failed(&err)),
    };
    match &v {
        Value::Array(items) if items.len() > MAX_BATCH => {
            pgrx::JsonB(failed(&IdentityError::MalformedEvent {
                field: what.into(),
                problem: format!(
                    "holds {} items, more than the {MAX_BATCH} one call takes",
                    items.len()
                ),
            }))
        }
        Value::Array(items) => batch_answer(items, one),
        _ => respond(one(&v)),
    }
}

/// One Segment / RudderStack message of `mp_segment`, for the project named by `token` (the
/// call's `project`, else the batch's or the message's `writeKey`).
fn segment_one(message: &Value, token: Option<&str>) -> Result<(), IdentityError> {
    let fail = |project_id: Option<i32>, err: IdentityError| {
        if !err.is_retryable() {
            record(project_id, &err, None, None, None, message);
        }
        Err(err)
    };
    let msg = match ingest::segment_message(message) {
        Ok(m) => m,
        Err(err) => return fail(None, err),
    };
    let Some(token) = token.map(str::to_string).or_else(|| msg.write_key.clone()) else {
        return fail(
            None,
            IdentityError::MalformedEvent {
                field: "writeKey".into(),
                problem: "is missing: pass the project to mp_segment, or send the writeKey".into(),
            },
        );
    };
    let project = match crate::engine::project(Some(&token)) {
        Ok(p) => p,
        Err(err) => return fail(None, err),
    };
    let plan = ingest::plan_segment(&project, &msg);
    let source = crate::store::Source {
        kind: "segment",
        detail: json!({ "type": msg.kind, "messageId": message.get("messageId") }),
    };
    let done = crate::engine::ingest(&project, plan, &source, None, || (None, message.clone()))?;
    done.failed.map_or(Ok(()), Err)
}

/// One event of `mp_track`: applies what it means for identity, records what is refused.
fn track_one(event: &Value) -> Result<(), IdentityError> {
    let fail = |project_id: Option<i32>,
                err: IdentityError,
                op: Option<&str>,
                a: Option<&str>,
                b: Option<&str>| {
        if !err.is_retryable() {
            record(project_id, &err, op, a, b, event);
        }
        Err(err)
    };
    let ev = match ingest::tracked_event(event) {
        Ok(ev) => ev,
        Err(err) => return fail(None, err, None, None, None),
    };
    let project = match crate::engine::project(Some(&ev.token)) {
        Ok(p) => p,
        Err(err) => return fail(None, err, None, None, None),
    };
    let plan = ingest::plan_event(
        &project,
        Some(&ev.name),
        &|| ev.properties.clone(),
        None,
        None,
    );
    let source = crate::store::Source {
        kind: "track",
        detail: json!({ "event": ev.name, "distinct_id": ev.properties.get("distinct_id") }),
    };
    let done = crate::engine::ingest(&project, plan, &source, None, || (None, event.clone()))?;
    done.failed.map_or(Ok(()), Err)
}

#[pg_schema]
mod identity_merge {
    use super::*;

    #[pg_extern(volatile, parallel_unsafe)]
    fn _identity_create(body: Option<&str>) -> pgrx::JsonB {
        identity_call(Op::Identify, "/identity/create", body)
    }

    #[pg_extern(volatile, parallel_unsafe)]
    fn _identity_create_alias(body: Option<&str>) -> pgrx::JsonB {
        identity_call(Op::Alias, "/identity/create-alias", body)
    }

    #[pg_extern(volatile, parallel_unsafe)]
    fn _identity_merge(body: Option<&str>) -> pgrx::JsonB {
        identity_call(Op::Merge, "/identity/merge", body)
    }

    /// Segment / RudderStack payloads: one message, or `{"batch": [...]}` as their SDKs post to
    /// /v1/batch (`writeKey` in the envelope names the project unless `project` is given).
    #[pg_extern(volatile, parallel_unsafe)]
    fn _segment(payload: Option<&str>, project: Option<&str>) -> pgrx::JsonB {
        let v = match parse(payload, "payload") {
            Ok(v) => v,
            Err(err) => return pgrx::JsonB(failed(&err)),
        };
        match v.get("batch") {
            Some(Value::Array(messages)) if messages.len() > MAX_BATCH => {
                pgrx::JsonB(failed(&IdentityError::MalformedEvent {
                    field: "batch".into(),
                    problem: format!(
                        "holds {} messages, more than the {MAX_BATCH} one call takes",
                        messages.len()
                    ),
                }))
            }
            Some(Value::Array(messages)) => {
                let envelope_key = v.get("writeKey").and_then(Value::as_str);
                let token = project.or(envelope_key);
                batch_answer(messages, |m| segment_one(m, token))
            }
            Some(other) => pgrx::JsonB(failed(&IdentityError::MalformedEvent {
                field: "batch".into(),
                problem: format!(
                    "must be an array of messages, not {}",
                    ingest::json_type(other)
                ),
            })),
            None => respond(segment_one(&v, project)),
        }
    }

    #[pg_extern(volatile, parallel_unsafe)]
    fn _track(payload: Option<&str>) -> pgrx::JsonB {
        let v = match parse(payload, "payload") {
            Ok(v) => v,
            Err(err) => return pgrx::JsonB(failed(&err)),
        };
        match &v {
            Value::Array(events) if events.len() > MAX_BATCH => {
                pgrx::JsonB(failed(&IdentityError::MalformedEvent {
                    field: "payload".into(),
                    problem: format!(
                        "holds {} events, more than the {MAX_BATCH} one call takes",
                        events.len()
                    ),
                }))
            }
            Value::Array(events) => batch_answer(events, track_one),
            Value::Object(_) => respond(track_one(&v)),
            other => pgrx::JsonB(failed(&IdentityError::MalformedEvent {
                field: "payload".into(),
                problem: format!(
                    "must be an event object or an array of them, not {}",
                    ingest::json_type(other)
                ),
            })),
        }
    }
}
