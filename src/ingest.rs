//! Reading identity events out of event payloads (a row's `event` + `properties`, or a
//! Mixpanel JSON event): which events are identity events and where their ids are. Plain
//! Rust over serde_json, shared by the stamping trigger and the JSON functions.

use serde_json::Value;

use crate::error::IdentityError;
use crate::rules::Op;

/// The identity operation an event name stands for, if any.
pub fn identity_op(event: &str) -> Option<Op> {
    match event {
        "$identify" => Some(Op::Identify),
        "$create_alias" => Some(Op::Alias),
        "$merge" => Some(Op::Merge),
        _ => None,
    }
}

/// An id field as Mixpanel reads it: strings as they are, numbers as their decimal text.
/// `Ok(None)` when absent or JSON null (validation reports it as a NULL id); anything else
/// (booleans, objects, arrays) is malformed.
pub fn id_field(props: &Value, field: &str) -> Result<Option<String>, IdentityError> {
    id_value(props.get(field), &format!("properties.{field}"))
}

fn id_value(v: Option<&Value>, path: &str) -> Result<Option<String>, IdentityError> {
    match v {
        None => Err(IdentityError::MalformedEvent { field: path.to_string(), problem: "is missing".into() }),
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
        Op::Identify => Ok((id_field(props, "$identified_id")?, id_field(props, "$anon_id")?)),
        Op::Alias => Ok((id_field(props, "alias")?, id_field(props, "distinct_id")?)),
        Op::Merge => distinct_ids_pair(props.get("$distinct_ids"), "properties.$distinct_ids"),
    }
}

/// `$distinct_ids`: an array of exactly two ids.
pub fn distinct_ids_pair(v: Option<&Value>, path: &str) -> Result<(Option<String>, Option<String>), IdentityError> {
    match v {
        None => Err(IdentityError::MalformedEvent { field: path.into(), problem: "is missing".into() }),
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
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (scrub_nul_str(&k), scrub_nul(v))).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identify_fields() {
        let p = json!({"$identified_id": "U1", "$anon_id": "A", "token": "t"});
        assert_eq!(event_ids(Op::Identify, &p).unwrap(), (Some("U1".into()), Some("A".into())));
    }

    #[test]
    fn numbers_are_ids_booleans_are_not() {
        let p = json!({"alias": 42, "distinct_id": "D"});
        assert_eq!(event_ids(Op::Alias, &p).unwrap(), (Some("42".into()), Some("D".into())));
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
        assert_eq!(event_ids(Op::Merge, &json!({"$distinct_ids": ["a", null]})).unwrap(), (Some("a".into()), None));
        let e = event_ids(Op::Merge, &json!([1, 2])).unwrap_err();
        assert!(e.message().contains("properties must be an object"));
    }

    #[test]
    fn nul_is_scrubbed_everywhere() {
        let v = scrub_nul(json!({"a\u{0}": ["x\u{0}y", 1]}));
        assert_eq!(v, json!({"a\u{FFFD}": ["x\u{FFFD}y", 1]}));
    }

    #[test]
    fn identity_event_names() {
        assert_eq!(identity_op("$identify"), Some(Op::Identify));
        assert_eq!(identity_op("$create_alias"), Some(Op::Alias));
        assert_eq!(identity_op("$merge"), Some(Op::Merge));
        assert_eq!(identity_op("Page View"), None);
    }
}
