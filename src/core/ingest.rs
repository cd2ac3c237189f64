//! Reading identity events out of event payloads (a row's `event` + `properties`, or a
//! Mixpanel JSON event): which events are identity events and where their ids are. Plain
//! Rust over serde_json, shared by the stamping trigger and the JSON functions.

use serde_json::Value;

use crate::core::error::IdentityError;
use crate::core::model::{Mode, Op};
use crate::core::rules::{self, Project, RuleSettings, DEVICE_PREFIX};

/// The identity operation an event name stands for, if any.
pub fn identity_op(event: &str) -> Option<Op> {
    Op::from_event_name(event)
}

/// A refusal to record: the error, the operation it refused (`identify`, `link`, `ignore`...)
/// and the ids involved when known.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub error: IdentityError,
    pub operation: &'static str,
    pub a: Option<String>,
    pub b: Option<String>,
}

impl Refusal {
    pub fn new(error: IdentityError, operation: &'static str) -> Refusal {
        Refusal {
            error,
            operation,
            a: None,
            b: None,
        }
    }
}

/// An operation an event asks for, with its ids in call order (validated when applied).
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedOp {
    pub op: Op,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// What one ingested event means for identity, decided before anything is read from or
/// written to the store: the operations to apply in order, the refusals already known (a
/// malformed field, an invalid id), a note that the event was ignored, and (Simplified) the
/// distinct_id the event implies. The glue executes the operations (`store::execute`) and
/// records every refusal the same way, whoever called.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventPlan {
    /// Recorded first, but not a failure of the event: a `$identify`, `$create_alias` or
    /// `$merge` in a Simplified project, ignored as Mixpanel ignores it.
    pub ignored: Option<Refusal>,
    pub refusals: Vec<Refusal>,
    pub ops: Vec<PlannedOp>,
    pub distinct_id: Option<String>,
}

impl EventPlan {
    /// Nothing for identity: no operation, no refusal, not ignored (an ordinary event, or a
    /// Simplified one with a single id: it only implies its distinct_id).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.refusals.is_empty() && self.ignored.is_none()
    }
}

/// A row's `properties` as JSON text (a json or text column, or a jsonb one printed), read as
/// the stamping trigger reads it: the JSON it holds; text that does not parse as a JSON
/// string (the refusal it leads to then names the problem); NULL as JSON null.
pub fn properties_from_text(text: Option<&[u8]>) -> Value {
    match text {
        None => Value::Null,
        Some(bytes) => serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())),
    }
}

/// One row of an event table, as `mp_backfill_from` reads it (its `event`, its `properties` as
/// text, and in Simplified projects its device and user id columns), planned as the stamping
/// trigger plans the same row: `plan_event`, the properties parsed only when read.
pub fn plan_row(
    project: &Project,
    event: Option<&str>,
    properties: Option<&str>,
    device_column: Option<String>,
    user_column: Option<String>,
) -> EventPlan {
    let (device_column, user_column) = match project.mode {
        Mode::Simplified => (device_column, user_column),
        Mode::Original | Mode::Legacy => (None, None),
    };
    plan_event(
        project,
        event,
        &|| properties_from_text(properties.map(str::as_bytes)),
        device_column,
        user_column,
    )
}

/// Plans one event: its name, its properties (read only when needed: a row's jsonb costs a
/// parse) and, for Simplified projects, `$device_id` / `$user_id` from the row's columns
/// when it has them (else from the properties).
impl EventPlan {
    /// A Simplified device and user pair's meaning, added to the plan: its refusals, its link,
    /// and the distinct_id of a row that has none (one rule for rows, `/track` and Segment).
    fn add_link(&mut self, linked: SimplifiedEvent) {
        for err in linked.refusals {
            self.refusals.push(Refusal::new(err, "link"));
        }
        if let Some((user, device)) = linked.link {
            self.ops.push(PlannedOp {
                op: Op::Link,
                a: Some(user),
                b: Some(device),
            });
        }
        self.distinct_id = linked.distinct_id;
    }
}

/// What one row of an `mp_backfill` history `(operation, id_a, id_b)` means in a project: the
/// operation to apply, or why it is refused. A `link` (user, device) has its raw device id
/// validated as the online path validates it, then prefixed `$device:`; it needs both ids.
/// (`split` rows are not planned here: they retract stored joins, which is the engine's.)
pub fn plan_history_row(
    project: &Project,
    operation: Option<&str>,
    a: Option<&str>,
    b: Option<&str>,
) -> Result<PlannedOp, IdentityError> {
    let op =
        operation
            .and_then(Op::from_history_name)
            .ok_or_else(|| IdentityError::MalformedEvent {
                field: "operation".into(),
                problem: format!(
                    "{:?} is not identify, alias, merge, link or split",
                    operation.unwrap_or("NULL")
                ),
            })?;
    if !project.mode.allows(op) {
        return Err(IdentityError::WrongMode {
            op: "this operation",
            token: project.token.clone(),
            mode: project.mode,
        });
    }
    if op != Op::Link {
        return Ok(PlannedOp {
            op,
            a: a.map(str::to_string),
            b: b.map(str::to_string),
        });
    }
    let linked = simplified_event(
        &project.settings,
        b.map(str::to_string),
        a.map(str::to_string),
    );
    match (linked.refusals.into_iter().next(), linked.link) {
        (Some(err), _) => Err(err),
        (None, Some((user, device))) => Ok(PlannedOp {
            op,
            a: Some(user),
            b: Some(device),
        }),
        (None, None) => Err(IdentityError::NullId {
            field: if a.is_none() {
                "$user_id"
            } else {
                "$device_id"
            },
        }),
    }
}

pub fn plan_event(
    project: &Project,
    event: Option<&str>,
    properties: &dyn Fn() -> Value,
    device_column: Option<String>,
    user_column: Option<String>,
) -> EventPlan {
    let mut plan = EventPlan::default();
    let named = event.and_then(identity_op);
    if let Some(op) = named {
        if !project.mode.allows(op) {
            plan.ignored = Some(Refusal::new(
                IdentityError::Ignored {
                    event: event.unwrap_or_default().to_string(),
                    token: project.token.clone(),
                    mode: project.mode,
                },
                "ignore",
            ));
        }
    }
    match project.mode {
        Mode::Original | Mode::Legacy => {
            let Some(op) = named.filter(|op| project.mode.allows(*op)) else {
                return plan;
            };
            match event_ids(op, &properties()) {
                Ok((a, b)) => plan.ops.push(PlannedOp { op, a, b }),
                Err(err) => plan.refusals.push(Refusal::new(err, op.as_str())),
            }
        }
        Mode::Simplified => {
            let props = if device_column.is_none() || user_column.is_none() {
                properties()
            } else {
                Value::Null
            };
            let (device, user, errors) = simplified_ids(&props, device_column, user_column);
            for err in errors {
                plan.refusals.push(Refusal::new(err, "link"));
            }
            plan.add_link(simplified_event(&project.settings, device, user));
        }
    }
    plan
}

/// An id field as Mixpanel reads it: strings as they are, numbers as their decimal text.
/// `Ok(None)` for JSON null (validation reports it as a NULL id); an absent field ("is missing")
/// and anything else (booleans, objects, arrays) is malformed.
pub fn id_field(props: &Value, field: &str) -> Result<Option<String>, IdentityError> {
    id_value(props.get(field), &format!("properties.{field}"))
}

fn id_value(v: Option<&Value>, path: &str) -> Result<Option<String>, IdentityError> {
    match v {
        None => Err(IdentityError::MalformedEvent {
            field: path.to_string(),
            problem: "is missing".into(),
        }),
        Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(IdentityError::MalformedEvent {
            field: path.to_string(),
            problem: format!("must be a string, not {}", json_type(other)),
        }),
    }
}

pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The two ids of an identity event, in the order the operation takes them.
pub fn event_ids(op: Op, props: &Value) -> Result<(Option<String>, Option<String>), IdentityError> {
    if !props.is_object() {
        return Err(IdentityError::MalformedEvent {
            field: "properties".into(),
            problem: format!("must be an object, not {}", json_type(props)),
        });
    }
    match op {
        Op::Identify => Ok((
            id_field(props, "$identified_id")?,
            id_field(props, "$anon_id")?,
        )),
        Op::Alias => Ok((id_field(props, "alias")?, id_field(props, "distinct_id")?)),
        Op::Merge => distinct_ids_pair(props.get("$distinct_ids"), "properties.$distinct_ids"),
        Op::Link => Err(IdentityError::MalformedEvent {
            field: "event".into(),
            problem: "is not an identity event".into(),
        }),
    }
}

/// An optional id field: absent or null gives None; strings and numbers as in `id_field`.
fn optional_id(v: Option<&Value>, path: &str) -> Result<Option<String>, IdentityError> {
    match v {
        None => Ok(None),
        some => id_value(some, path),
    }
}

/// `$device_id` and `$user_id` of a Simplified ID Merge event: from the row's columns of those
/// names when given, else from its properties. A malformed field is dropped (and returned as
/// an error to record) without losing the other.
pub fn simplified_ids(
    props: &Value,
    device_column: Option<String>,
    user_column: Option<String>,
) -> (Option<String>, Option<String>, Vec<IdentityError>) {
    let mut errors = Vec::new();
    let mut field = |column: Option<String>, name: &str| match column {
        Some(v) => Some(v),
        None => optional_id(props.get(name), &format!("properties.{name}")).unwrap_or_else(|e| {
            errors.push(e);
            None
        }),
    };
    let device = field(device_column, "$device_id");
    let user = field(user_column, "$user_id");
    (device, user, errors)
}

/// What a Simplified ID Merge event means for identity.
#[derive(Debug, Default, PartialEq)]
pub struct SimplifiedEvent {
    /// The distinct_id Mixpanel sets: `$user_id`, else `'$device:' || $device_id`.
    pub distinct_id: Option<String>,
    /// (user, `$device:` device) to link, when the event carries both.
    pub link: Option<(String, String)>,
    /// Ids refused on the way (recorded; the event is kept).
    pub refusals: Vec<IdentityError>,
}

pub fn simplified_event(
    settings: &RuleSettings,
    device: Option<String>,
    user: Option<String>,
) -> SimplifiedEvent {
    let mut out = SimplifiedEvent::default();
    let device = device.filter(|d| match settings.validate_id("$device_id", Some(d)) {
        Ok(()) => true,
        Err(e) => {
            out.refusals.push(e);
            false
        }
    });
    let device_id = device.map(|d| format!("{DEVICE_PREFIX}{d}"));
    let user = user.filter(|u| {
        if let Err(e) = settings.validate_id("$user_id", Some(u)) {
            out.refusals.push(e);
            return false;
        }
        if let Err(e) = rules::check_user_id(u, device_id.as_deref().unwrap_or("")) {
            out.refusals.push(e);
            return false;
        }
        true
    });
    out.link = match (&user, &device_id) {
        (Some(u), Some(d)) => Some((u.clone(), d.clone())),
        _ => None,
    };
    out.distinct_id = user.or(device_id);
    out
}

/// A Mixpanel event object as /track and /import take it.
#[derive(Debug)]
pub struct TrackedEvent {
    pub name: String,
    pub token: String,
    pub properties: Value,
}

pub fn tracked_event(v: &Value) -> Result<TrackedEvent, IdentityError> {
    let bad = |field: &str, problem: String| IdentityError::MalformedEvent {
        field: field.into(),
        problem,
    };
    let Value::Object(obj) = v else {
        return Err(bad(
            "event object",
            format!("must be an object, not {}", json_type(v)),
        ));
    };
    let name = match obj.get("event") {
        Some(Value::String(s)) => s.clone(),
        None => return Err(bad("event", "is missing".into())),
        Some(other) => {
            return Err(bad(
                "event",
                format!("must be a string, not {}", json_type(other)),
            ))
        }
    };
    let properties = match obj.get("properties") {
        Some(p @ Value::Object(_)) => p.clone(),
        None => return Err(bad("properties", "is missing".into())),
        Some(other) => {
            return Err(bad(
                "properties",
                format!("must be an object, not {}", json_type(other)),
            ))
        }
    };
    let token = string_field(&properties, "token", "properties.token")?;
    Ok(TrackedEvent {
        name,
        token,
        properties,
    })
}

/// A required string field (tokens are never numbers).
pub fn string_field(obj: &Value, field: &str, path: &str) -> Result<String, IdentityError> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        None => Err(IdentityError::MalformedEvent {
            field: path.into(),
            problem: "is missing".into(),
        }),
        Some(other) => Err(IdentityError::MalformedEvent {
            field: path.into(),
            problem: format!("must be a string, not {}", json_type(other)),
        }),
    }
}

/// A Segment / RudderStack spec message (`identify`, `track`, `page`, `screen`, `group`,
/// `alias`): the ids it carries. Ids may be strings or numbers, as in Mixpanel's payloads.
#[derive(Debug, Default, PartialEq)]
pub struct SegmentMessage {
    pub kind: String,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub previous_id: Option<String>,
    /// The message's own `writeKey`, when it carries one (a batch carries it in its envelope).
    pub write_key: Option<String>,
}

/// The message types of the Segment spec (RudderStack's are the same).
pub const SEGMENT_TYPES: [&str; 6] = ["identify", "track", "page", "screen", "group", "alias"];

pub fn segment_message(v: &Value) -> Result<SegmentMessage, IdentityError> {
    let Value::Object(obj) = v else {
        return Err(IdentityError::MalformedEvent {
            field: "message".into(),
            problem: format!("must be an object, not {}", json_type(v)),
        });
    };
    let kind = string_field(v, "type", "type")?;
    if !SEGMENT_TYPES.contains(&kind.as_str()) {
        return Err(IdentityError::MalformedEvent {
            field: "type".into(),
            problem: format!("{kind:?} is not one of {}", SEGMENT_TYPES.join(", ")),
        });
    }
    Ok(SegmentMessage {
        user_id: optional_id(obj.get("userId"), "userId")?,
        anonymous_id: optional_id(obj.get("anonymousId"), "anonymousId")?,
        previous_id: optional_id(obj.get("previousId"), "previousId")?,
        write_key: match obj.get("writeKey") {
            Some(Value::String(k)) => Some(k.clone()),
            _ => None,
        },
        kind,
    })
}

/// What a Segment message means for identity in the project's mode. Simplified (the default
/// of new Mixpanel projects, and how Segment's Mixpanel destination maps ids): `anonymousId` is
/// the device, `userId` the user; a message carrying both links them, and an `alias` links its
/// `previousId` as the device. Original: an `identify` carrying both is `$identify` (userId,
/// anonymousId), an `alias` is `$create_alias` (alias userId, distinct_id previousId); other
/// messages join nothing. Legacy: only `alias`, as `$create_alias`.
pub fn plan_segment(project: &Project, msg: &SegmentMessage) -> EventPlan {
    let mut plan = EventPlan::default();
    let required = |v: &Option<String>, field: &str| -> Result<(), IdentityError> {
        match v {
            Some(_) => Ok(()),
            None => Err(IdentityError::MalformedEvent {
                field: field.into(),
                problem: "is missing".into(),
            }),
        }
    };
    if msg.kind == "alias" {
        if let Err(e) =
            required(&msg.previous_id, "previousId").and(required(&msg.user_id, "userId"))
        {
            plan.refusals.push(Refusal::new(e, "alias"));
            return plan;
        }
    }
    match project.mode {
        Mode::Simplified => {
            let device = if msg.kind == "alias" {
                msg.previous_id.clone()
            } else {
                msg.anonymous_id.clone()
            };
            plan.add_link(simplified_event(
                &project.settings,
                device,
                msg.user_id.clone(),
            ));
        }
        Mode::Original | Mode::Legacy => {
            let op = match msg.kind.as_str() {
                "alias" => Some((Op::Alias, msg.user_id.clone(), msg.previous_id.clone())),
                "identify" if msg.user_id.is_some() && msg.anonymous_id.is_some() => {
                    Some((Op::Identify, msg.user_id.clone(), msg.anonymous_id.clone()))
                }
                _ => None,
            };
            match op {
                Some((op, a, b)) if project.mode.allows(op) => {
                    plan.ops.push(PlannedOp { op, a, b })
                }
                Some((op, _, _)) => {
                    plan.ignored = Some(Refusal::new(
                        IdentityError::Ignored {
                            event: msg.kind.clone(),
                            token: project.token.clone(),
                            mode: project.mode,
                        },
                        op.as_str(),
                    ))
                }
                None => {}
            }
            plan.distinct_id = msg.user_id.clone().or_else(|| msg.anonymous_id.clone());
        }
    }
    plan
}

/// The token and the two ids of an Identity API request body (POST /identity/create,
/// /identity/create-alias, /identity/merge).
pub fn identity_request(
    op: Op,
    body: &Value,
) -> Result<(String, Option<String>, Option<String>), IdentityError> {
    if !body.is_object() {
        return Err(IdentityError::MalformedEvent {
            field: "body".into(),
            problem: format!("must be an object, not {}", json_type(body)),
        });
    }
    let (a, b) = match op {
        Op::Identify => (
            id_value(body.get("$identified_id"), "$identified_id")?,
            id_value(body.get("$anon_id"), "$anon_id")?,
        ),
        Op::Alias => (
            id_value(body.get("alias"), "alias")?,
            id_value(body.get("distinct_id"), "distinct_id")?,
        ),
        Op::Merge => distinct_ids_pair(body.get("$distinct_ids"), "$distinct_ids")?,
        Op::Link => unreachable!("no Identity API endpoint links devices"),
    };
    let token = string_field(body, "$token", "$token")?;
    Ok((token, a, b))
}

/// `$distinct_ids`: an array of exactly two ids.
pub fn distinct_ids_pair(
    v: Option<&Value>,
    path: &str,
) -> Result<(Option<String>, Option<String>), IdentityError> {
    match v {
        None => Err(IdentityError::MalformedEvent {
            field: path.into(),
            problem: "is missing".into(),
        }),
        Some(Value::Array(items)) if items.len() == 2 => Ok((
            id_value(Some(&items[0]), &format!("{path}[0]"))?,
            id_value(Some(&items[1]), &format!("{path}[1]"))?,
        )),
        Some(Value::Array(items)) => Err(IdentityError::MalformedEvent {
            field: path.into(),
            problem: format!("must hold exactly 2 ids, not {}", items.len()),
        }),
        Some(other) => Err(IdentityError::MalformedEvent {
            field: path.into(),
            problem: format!("must be an array of 2 ids, not {}", json_type(other)),
        }),
    }
}

/// Text and jsonb cannot hold NUL: a recorded value shows it as U+FFFD instead.
pub fn scrub_nul_str(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// `scrub_nul_str` over every string and key of a JSON value.
pub fn scrub_nul(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(scrub_nul_str(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (scrub_nul_str(&k), scrub_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::AnonIdFormat;
    use serde_json::json;

    fn project(mode: Mode) -> Project {
        Project {
            id: 1,
            token: "t".into(),
            mode,
            keep_fresh: false,
            anon_id_format: AnonIdFormat::Any,
            settings: RuleSettings::default(),
        }
    }

    #[test]
    fn segment_messages_mean_what_the_mode_says() {
        let msg = |v: serde_json::Value| segment_message(&v).unwrap();
        let identify =
            msg(json!({"type": "identify", "userId": "u1", "anonymousId": "a1", "traits": {}}));
        let track =
            msg(json!({"type": "track", "event": "x", "userId": "u1", "anonymousId": "a1"}));
        let alias = msg(json!({"type": "alias", "previousId": "a1", "userId": 42}));
        assert_eq!(alias.user_id.as_deref(), Some("42"));
        // Simplified: any message with both ids links the device; alias links previousId.
        let simplified = project(Mode::Simplified);
        assert_eq!(
            plan_segment(&simplified, &track).ops,
            vec![PlannedOp {
                op: Op::Link,
                a: Some("u1".into()),
                b: Some("$device:a1".into())
            }]
        );
        assert_eq!(
            plan_segment(&simplified, &alias).ops[0].b.as_deref(),
            Some("$device:a1")
        );
        // Original: identify is $identify; track joins nothing; alias is $create_alias.
        let original = project(Mode::Original);
        assert_eq!(
            plan_segment(&original, &identify).ops,
            vec![PlannedOp {
                op: Op::Identify,
                a: Some("u1".into()),
                b: Some("a1".into())
            }]
        );
        assert!(plan_segment(&original, &track).ops.is_empty());
        assert_eq!(
            plan_segment(&original, &alias).ops,
            vec![PlannedOp {
                op: Op::Alias,
                a: Some("42".into()),
                b: Some("a1".into())
            }]
        );
        // Legacy: identify is ignored (noted), alias applies.
        let legacy = project(Mode::Legacy);
        assert!(plan_segment(&legacy, &identify).ignored.is_some());
        assert_eq!(plan_segment(&legacy, &alias).ops.len(), 1);
        // Bad messages: an unknown type, an alias without previousId.
        assert!(segment_message(&json!({"type": "boom"})).is_err());
        let bad_alias = msg(json!({"type": "alias", "userId": "u"}));
        assert_eq!(plan_segment(&original, &bad_alias).refusals.len(), 1);
    }

    #[test]
    fn plans_say_what_an_event_means() {
        let original = project(Mode::Original);
        let props = json!({"$identified_id": "U1", "$anon_id": "A1"});
        let plan = plan_event(&original, Some("$identify"), &|| props.clone(), None, None);
        assert_eq!(
            plan.ops,
            vec![PlannedOp {
                op: Op::Identify,
                a: Some("U1".into()),
                b: Some("A1".into())
            }]
        );
        assert!(plan.refusals.is_empty() && plan.ignored.is_none());
        // Ordinary events mean nothing for identity, and their properties are never read.
        let plan = plan_event(&original, Some("Page View"), &|| panic!("read"), None, None);
        assert_eq!(plan, EventPlan::default());
        // A malformed identity event is a refusal to record, not an operation.
        let plan = plan_event(
            &original,
            Some("$merge"),
            &|| json!({"$distinct_ids": true}),
            None,
            None,
        );
        assert!(plan.ops.is_empty());
        assert_eq!(plan.refusals[0].operation, "merge");
        // Simplified: $identify is ignored (noted, not a failure); the columns link.
        let simplified = project(Mode::Simplified);
        let plan = plan_event(
            &simplified,
            Some("$identify"),
            &|| json!({}),
            Some("d1".into()),
            Some("u1".into()),
        );
        assert_eq!(
            plan.ignored
                .as_ref()
                .unwrap()
                .error
                .reason()
                .unwrap()
                .code(),
            "errIgnoredInSimplified"
        );
        assert_eq!(
            plan.ops,
            vec![PlannedOp {
                op: Op::Link,
                a: Some("u1".into()),
                b: Some("$device:d1".into())
            }]
        );
        assert_eq!(plan.distinct_id.as_deref(), Some("u1"));
        // Legacy: $create_alias is planned, $identify ignored (noted), nothing else read.
        let legacy = project(Mode::Legacy);
        let plan = plan_event(
            &legacy,
            Some("$create_alias"),
            &|| json!({"alias": "U", "distinct_id": "A"}),
            None,
            None,
        );
        assert_eq!(
            plan.ops,
            vec![PlannedOp {
                op: Op::Alias,
                a: Some("U".into()),
                b: Some("A".into())
            }]
        );
        let plan = plan_event(&legacy, Some("$identify"), &|| panic!("read"), None, None);
        assert!(plan.ops.is_empty());
        assert_eq!(
            plan.ignored.unwrap().error.reason().unwrap().code(),
            "errIgnoredInLegacy"
        );
        // A $user_id that is a device id: refused, and the distinct_id is the device.
        let plan = plan_event(
            &simplified,
            Some("x"),
            &|| json!({}),
            Some("d2".into()),
            Some("$device:x".into()),
        );
        assert!(plan.ops.is_empty());
        assert_eq!(
            plan.refusals[0].error.reason().unwrap().code(),
            "errUserIdIsDevice"
        );
        assert_eq!(plan.distinct_id.as_deref(), Some("$device:d2"));
    }

    #[test]
    fn event_table_rows_are_planned_as_the_trigger_plans_them() {
        let original = project(Mode::Original);
        // properties as text (a json/text column, or jsonb printed), parsed as the trigger does.
        let plan = plan_row(
            &original,
            Some("$identify"),
            Some(r#"{"$identified_id": "U1", "$anon_id": 7}"#),
            None,
            None,
        );
        assert_eq!(
            plan.ops,
            vec![PlannedOp {
                op: Op::Identify,
                a: Some("U1".into()),
                b: Some("7".into())
            }]
        );
        // Ordinary events mean nothing; an empty plan is not an identity event.
        assert!(plan_row(&original, Some("Page View"), Some("{}"), None, None).is_empty());
        assert!(plan_row(&original, None, None, None, None).is_empty());
        assert!(!plan.is_empty());
        // What the old SQL mapping read differently: a $merge of 3 ids, a missing field, a
        // boolean id, properties that are not JSON or NULL: refused as malformed.
        for (event, props) in [
            ("$merge", Some(r#"{"$distinct_ids": ["a", "b", "c"]}"#)),
            ("$merge", Some(r#"{"$distinct_ids": "a"}"#)),
            ("$identify", Some(r#"{"$identified_id": "U"}"#)),
            (
                "$create_alias",
                Some(r#"{"alias": true, "distinct_id": "D"}"#),
            ),
            ("$identify", Some("not json")),
            ("$identify", None),
        ] {
            let plan = plan_row(&original, Some(event), props, None, None);
            assert!(plan.ops.is_empty(), "{event} {props:?}");
            assert_eq!(
                plan.refusals[0].error.reason().unwrap().code(),
                "errMalformedEvent",
                "{event} {props:?}"
            );
        }
        // A JSON null id is an operation with a NULL id (refused when applied, as online).
        let plan = plan_row(
            &original,
            Some("$merge"),
            Some(r#"{"$distinct_ids": ["a", null]}"#),
            None,
            None,
        );
        assert_eq!(plan.ops[0].b, None);
        // Legacy: $identify is ignored (noted: a refusal to record), $create_alias planned.
        let legacy = project(Mode::Legacy);
        let plan = plan_row(&legacy, Some("$identify"), Some("{}"), None, None);
        assert!(plan.ops.is_empty() && plan.ignored.is_some() && !plan.is_empty());
        // Original ignores device and user columns.
        let plan = plan_row(
            &original,
            Some("x"),
            None,
            Some("d".into()),
            Some("u".into()),
        );
        assert!(plan.is_empty());
        // Simplified: the columns link; a missing one is read from properties (as the trigger
        // reads it); a row with one id implies its distinct_id only.
        let simplified = project(Mode::Simplified);
        let plan = plan_row(
            &simplified,
            None,
            None,
            Some("d1".into()),
            Some("u1".into()),
        );
        assert_eq!(
            plan.ops,
            vec![PlannedOp {
                op: Op::Link,
                a: Some("u1".into()),
                b: Some("$device:d1".into())
            }]
        );
        let plan = plan_row(
            &simplified,
            Some("Login"),
            Some(r#"{"$user_id": "u2"}"#),
            Some("d2".into()),
            None,
        );
        assert_eq!(plan.ops[0].a.as_deref(), Some("u2"));
        let plan = plan_row(&simplified, Some("Page"), None, Some("d3".into()), None);
        assert!(plan.is_empty());
        assert_eq!(plan.distinct_id.as_deref(), Some("$device:d3"));
        // An invalid device without a user is still a refusal (the trigger records it).
        let plan = plan_row(&simplified, None, None, Some("undefined".into()), None);
        assert_eq!(plan.refusals.len(), 1);
        // Both ids invalid: two refusals.
        let plan = plan_row(
            &simplified,
            None,
            None,
            Some("undefined".into()),
            Some("null".into()),
        );
        assert_eq!(plan.refusals.len(), 2);
        // An identity event in Simplified: ignored (noted), and its ids still link.
        let plan = plan_row(
            &simplified,
            Some("$identify"),
            None,
            Some("d4".into()),
            Some("u4".into()),
        );
        assert!(plan.ignored.is_some());
        assert_eq!(plan.ops.len(), 1);
    }

    #[test]
    fn properties_text_as_the_trigger_reads_it() {
        assert_eq!(properties_from_text(None), Value::Null);
        assert_eq!(properties_from_text(Some(br#"{"a": 1}"#)), json!({"a": 1}));
        assert_eq!(
            properties_from_text(Some(b"{oops")),
            Value::String("{oops".into())
        );
        let names: Vec<&str> = Op::event_names().collect();
        assert_eq!(names, ["$identify", "$create_alias", "$merge"]);
        assert!(names.iter().all(|n| identity_op(n).is_some()));
    }

    #[test]
    fn identify_fields() {
        let p = json!({"$identified_id": "U1", "$anon_id": "A", "token": "t"});
        assert_eq!(
            event_ids(Op::Identify, &p).unwrap(),
            (Some("U1".into()), Some("A".into()))
        );
    }

    #[test]
    fn numbers_are_ids_booleans_are_not() {
        let p = json!({"alias": 42, "distinct_id": "D"});
        assert_eq!(
            event_ids(Op::Alias, &p).unwrap(),
            (Some("42".into()), Some("D".into()))
        );
        let p = json!({"alias": true, "distinct_id": "D"});
        let e = event_ids(Op::Alias, &p).unwrap_err();
        assert!(e.message().contains("properties.alias") && e.message().contains("boolean"));
    }

    #[test]
    fn missing_and_wrong_length() {
        let e = event_ids(Op::Identify, &json!({"$identified_id": "U"})).unwrap_err();
        assert!(e.message().contains("properties.$anon_id is missing"));
        let e = event_ids(Op::Merge, &json!({"$distinct_ids": ["a", "b", "c"]})).unwrap_err();
        assert!(e.message().contains("exactly 2"));
        let e = event_ids(Op::Merge, &json!({"$distinct_ids": ["a"]})).unwrap_err();
        assert!(e.message().contains("not 1"));
        assert_eq!(
            event_ids(Op::Merge, &json!({"$distinct_ids": ["a", null]})).unwrap(),
            (Some("a".into()), None)
        );
        let e = event_ids(Op::Merge, &json!([1, 2])).unwrap_err();
        assert!(e.message().contains("properties must be an object"));
    }

    #[test]
    fn nul_is_scrubbed_everywhere() {
        let v = scrub_nul(json!({"a\u{0}": ["x\u{0}y", 1]}));
        assert_eq!(v, json!({"a\u{FFFD}": ["x\u{FFFD}y", 1]}));
    }

    #[test]
    fn simplified_distinct_id_and_link() {
        let s = RuleSettings::default();
        let e = simplified_event(&s, Some("D1".into()), None);
        assert_eq!(e.distinct_id.as_deref(), Some("$device:D1"));
        assert_eq!(e.link, None);
        let e = simplified_event(&s, Some("D1".into()), Some("U1".into()));
        assert_eq!(e.distinct_id.as_deref(), Some("U1"));
        assert_eq!(e.link, Some(("U1".into(), "$device:D1".into())));
        let e = simplified_event(&s, Some("D1".into()), Some("$device:X".into()));
        assert_eq!(e.distinct_id.as_deref(), Some("$device:D1"));
        assert_eq!(e.refusals[0].reason().unwrap().code(), "errUserIdIsDevice");
        let e = simplified_event(&s, Some("undefined".into()), Some("U1".into()));
        assert_eq!(e.distinct_id.as_deref(), Some("U1"));
        assert_eq!(e.link, None);
        assert_eq!(e.refusals[0].reason().unwrap().code(), "errInvalidID");
        let (d, u, errs) = simplified_ids(&json!({"$device_id": 77, "$user_id": "U"}), None, None);
        assert_eq!(
            (d.as_deref(), u.as_deref(), errs.len()),
            (Some("77"), Some("U"), 0)
        );
        let (d, _, _) = simplified_ids(&json!({"$device_id": "P"}), Some("C".into()), None);
        assert_eq!(d.as_deref(), Some("C"), "a column wins over properties");
        let (d, u, errs) = simplified_ids(
            &json!({"$device_id": "D", "$user_id": {"a": 1}}),
            None,
            None,
        );
        assert_eq!(
            (d.as_deref(), u, errs.len()),
            (Some("D"), None, 1),
            "the good field survives"
        );
    }

    #[test]
    fn request_bodies() {
        let (t, a, b) = identity_request(
            Op::Identify,
            &json!({"$identified_id": "U", "$anon_id": "A", "$token": "t"}),
        )
        .unwrap();
        assert_eq!(
            (t.as_str(), a.as_deref(), b.as_deref()),
            ("t", Some("U"), Some("A"))
        );
        let e = identity_request(
            Op::Identify,
            &json!({"$identified_id": "U", "$anon_id": "A"}),
        )
        .unwrap_err();
        assert!(e.message().contains("$token is missing"), "{}", e.message());
        let e = identity_request(
            Op::Identify,
            &json!({"$identified_id": "U", "$anon_id": "A", "$token": 5}),
        )
        .unwrap_err();
        assert!(e.message().contains("$token must be a string"));
        let e = identity_request(
            Op::Merge,
            &json!({"$distinct_ids": ["a", "b", "c"], "$token": "t"}),
        )
        .unwrap_err();
        assert!(e.message().contains("$distinct_ids must hold exactly 2"));
        let (_, a, _) = identity_request(
            Op::Alias,
            &json!({"alias": 12, "distinct_id": "d", "$token": "t"}),
        )
        .unwrap();
        assert_eq!(a.as_deref(), Some("12"));
        let ev = tracked_event(&json!({"event": "x", "properties": {"token": "t"}})).unwrap();
        assert_eq!(ev.token, "t");
        assert!(tracked_event(&json!({"event": "x", "properties": {}}))
            .unwrap_err()
            .message()
            .contains("properties.token is missing"));
        assert!(tracked_event(&json!({"event": 1, "properties": {"token": "t"}})).is_err());
    }

    #[test]
    fn history_rows_mean_what_the_mode_allows() {
        let original = project(Mode::Original);
        let simplified = project(Mode::Simplified);
        let p = plan_history_row(&original, Some("identify"), Some("u"), Some("a")).unwrap();
        assert_eq!(
            (p.op, p.a.as_deref(), p.b.as_deref()),
            (Op::Identify, Some("u"), Some("a"))
        );
        assert!(matches!(
            plan_history_row(&original, Some("link"), Some("u"), Some("d")),
            Err(IdentityError::WrongMode { .. })
        ));
        assert!(matches!(
            plan_history_row(&original, Some("hug"), Some("u"), Some("d")),
            Err(IdentityError::MalformedEvent { .. })
        ));
        assert!(matches!(
            plan_history_row(&original, None, Some("u"), Some("d")),
            Err(IdentityError::MalformedEvent { .. })
        ));
        let l = plan_history_row(&simplified, Some("link"), Some("u"), Some("d1")).unwrap();
        assert_eq!(
            (l.op, l.a.as_deref(), l.b.as_deref()),
            (Op::Link, Some("u"), Some("$device:d1"))
        );
        assert!(matches!(
            plan_history_row(&simplified, Some("link"), None, Some("d1")),
            Err(IdentityError::NullId { field: "$user_id" })
        ));
        assert!(matches!(
            plan_history_row(&simplified, Some("link"), Some("u"), None),
            Err(IdentityError::NullId {
                field: "$device_id"
            })
        ));
        assert!(matches!(
            plan_history_row(&simplified, Some("link"), Some("u"), Some("undefined")),
            Err(IdentityError::InvalidId { .. })
        ));
    }

    #[test]
    fn identity_event_names() {
        assert_eq!(identity_op("$identify"), Some(Op::Identify));
        assert_eq!(identity_op("$create_alias"), Some(Op::Alias));
        assert_eq!(identity_op("$merge"), Some(Op::Merge));
        assert_eq!(identity_op("Page View"), None);
    }
}
