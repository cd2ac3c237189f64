//! People profiles (Mixpanel's Engage API): what an `/engage` update says, and a person's
//! profile as the fold of the updates sent to any of the person's ids, in the order they were
//! sent. Profiles are not stored per cluster: every update stays with the id it was sent to, so a
//! merge combines two people's profiles and a split separates them again with no data moved,
//! by the one rule the fold applies: the newest `$set` wins, the oldest `$set_once` wins, `$add`
//! counters sum, `$append` lists concatenate in time order, `$union` lists union, `$remove` and
//! `$unset` take away what came before, and `$delete` clears what came before.

use serde_json::{Map, Value};

use crate::core::error::IdentityError;
use crate::core::ingest::{id_field, json_type, string_field};

/// The operations of an `/engage` update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfileOp {
    Set,
    SetOnce,
    Add,
    Append,
    Union,
    Remove,
    Unset,
    Delete,
}

impl ProfileOp {
    pub const ALL: [ProfileOp; 8] = [
        ProfileOp::Set,
        ProfileOp::SetOnce,
        ProfileOp::Add,
        ProfileOp::Append,
        ProfileOp::Union,
        ProfileOp::Remove,
        ProfileOp::Unset,
        ProfileOp::Delete,
    ];

    /// The key Mixpanel's API gives the operation (also what profile_updates.operation stores).
    pub fn key(self) -> &'static str {
        match self {
            ProfileOp::Set => "$set",
            ProfileOp::SetOnce => "$set_once",
            ProfileOp::Add => "$add",
            ProfileOp::Append => "$append",
            ProfileOp::Union => "$union",
            ProfileOp::Remove => "$remove",
            ProfileOp::Unset => "$unset",
            ProfileOp::Delete => "$delete",
        }
    }

    pub fn parse(key: &str) -> Option<ProfileOp> {
        ProfileOp::ALL.into_iter().find(|o| o.key() == key)
    }
}

/// One `/engage` update.
#[derive(Clone, Debug, PartialEq)]
pub struct Engage {
    pub token: String,
    pub distinct_id: String,
    /// `$time`, in milliseconds since the epoch (the SDKs send milliseconds), when given.
    pub time_ms: Option<f64>,
    pub op: ProfileOp,
    pub value: Value,
}

/// Reads one update: `$token`, `$distinct_id`, optional `$time`, and exactly one operation, whose
/// value has the shape Mixpanel's API gives it. Every problem names the field.
pub fn engage_update(v: &Value) -> Result<Engage, IdentityError> {
    let bad = |field: &str, problem: String| IdentityError::MalformedEvent {
        field: field.into(),
        problem,
    };
    let Value::Object(obj) = v else {
        return Err(bad(
            "update",
            format!("must be an object, not {}", json_type(v)),
        ));
    };
    let token = string_field(v, "$token", "$token")?;
    let distinct_id = match obj.get("$distinct_id") {
        None => return Err(bad("$distinct_id", "is missing".into())),
        Some(_) => id_field(v, "$distinct_id")
            .map_err(|_| bad("$distinct_id", "must be a string or a number".into()))?
            .ok_or(IdentityError::NullId {
                field: "$distinct_id",
            })?,
    };
    let time_ms = match obj.get("$time") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(other) => {
            return Err(bad(
                "$time",
                format!("must be a number, not {}", json_type(other)),
            ))
        }
    };
    let ops: Vec<(ProfileOp, &Value)> = obj
        .iter()
        .filter_map(|(k, v)| ProfileOp::parse(k).map(|op| (op, v)))
        .collect();
    let (op, value) = match ops.as_slice() {
        [one] => *one,
        [] => return Err(bad(
            "operation",
            "is missing: one of $set, $set_once, $add, $append, $union, $remove, $unset, $delete"
                .into(),
        )),
        _ => {
            return Err(bad(
                "operation",
                format!("must be one per update, not {}", ops.len()),
            ))
        }
    };
    let object = |what: &str| -> Result<&Map<String, Value>, IdentityError> {
        value.as_object().ok_or_else(|| {
            bad(
                op.key(),
                format!("must be an object of {what}, not {}", json_type(value)),
            )
        })
    };
    match op {
        ProfileOp::Set | ProfileOp::SetOnce | ProfileOp::Append | ProfileOp::Remove => {
            object("properties")?;
        }
        ProfileOp::Add => {
            for (k, n) in object("numbers")? {
                if !n.is_number() {
                    return Err(bad(
                        &format!("$add.{k}"),
                        format!("must be a number, not {}", json_type(n)),
                    ));
                }
            }
        }
        ProfileOp::Union => {
            for (k, l) in object("lists")? {
                if !l.is_array() {
                    return Err(bad(
                        &format!("$union.{k}"),
                        format!("must be a list, not {}", json_type(l)),
                    ));
                }
            }
        }
        ProfileOp::Unset => {
            let names = value.as_array().ok_or_else(|| {
                bad(
                    "$unset",
                    format!("must be a list of property names, not {}", json_type(value)),
                )
            })?;
            if let Some(n) = names.iter().find(|n| !n.is_string()) {
                return Err(bad(
                    "$unset",
                    format!("must hold property names, not {}", json_type(n)),
                ));
            }
        }
        ProfileOp::Delete => {}
    }
    Ok(Engage {
        token,
        distinct_id,
        time_ms,
        op,
        value: value.clone(),
    })
}

/// Adds two JSON numbers (integers stay integers while they fit).
fn add(a: Option<&Value>, b: &Value) -> Value {
    let a = a.filter(|v| v.is_number());
    match (a.and_then(Value::as_i64), b.as_i64()) {
        (Some(x), Some(y)) if x.checked_add(y).is_some() => Value::from(x + y),
        (None, Some(y)) if a.is_none() => Value::from(y),
        _ => {
            let x = a.and_then(Value::as_f64).unwrap_or(0.0);
            serde_json::Number::from_f64(x + b.as_f64().unwrap_or(0.0))
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
    }
}

/// The profile the updates make, applied in the order given (the caller sorts them by time).
pub fn fold<'a>(updates: impl IntoIterator<Item = (ProfileOp, &'a Value)>) -> Map<String, Value> {
    let mut profile = Map::new();
    for (op, value) in updates {
        match op {
            ProfileOp::Set => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    profile.insert(k.clone(), v.clone());
                }
            }
            ProfileOp::SetOnce => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    profile.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            ProfileOp::Add => {
                for (k, n) in value.as_object().into_iter().flatten() {
                    let sum = add(profile.get(k), n);
                    profile.insert(k.clone(), sum);
                }
            }
            ProfileOp::Append => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    let list = profile
                        .entry(k.clone())
                        .or_insert_with(|| Value::Array(vec![]));
                    match list {
                        Value::Array(items) => items.push(v.clone()),
                        other => *other = Value::Array(vec![v.clone()]),
                    }
                }
            }
            ProfileOp::Union => {
                for (k, l) in value.as_object().into_iter().flatten() {
                    let list = profile
                        .entry(k.clone())
                        .or_insert_with(|| Value::Array(vec![]));
                    if !list.is_array() {
                        *list = Value::Array(vec![]);
                    }
                    if let Value::Array(items) = list {
                        for v in l.as_array().into_iter().flatten() {
                            if !items.contains(v) {
                                items.push(v.clone());
                            }
                        }
                    }
                }
            }
            ProfileOp::Remove => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    if let Some(Value::Array(items)) = profile.get_mut(k) {
                        items.retain(|x| x != v);
                    }
                }
            }
            ProfileOp::Unset => {
                for name in value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    profile.remove(name);
                }
            }
            ProfileOp::Delete => profile.clear(),
        }
    }
    profile
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn updates_are_read_as_the_api_gives_them() {
        let u = engage_update(
            &json!({"$token": "t", "$distinct_id": 7, "$time": 1700000000000u64,
                                      "$set": {"plan": "pro"}}),
        )
        .unwrap();
        assert_eq!((u.distinct_id.as_str(), u.op), ("7", ProfileOp::Set));
        assert!(engage_update(&json!({"$token": "t", "$distinct_id": "u"})).is_err());
        assert!(engage_update(
            &json!({"$token": "t", "$distinct_id": "u", "$set": {}, "$add": {}})
        )
        .is_err());
        let e = engage_update(&json!({"$token": "t", "$distinct_id": "u", "$add": {"n": "x"}}))
            .unwrap_err();
        assert!(e.message().contains("$add.n"));
        assert!(
            engage_update(&json!({"$token": "t", "$distinct_id": "u", "$unset": "plan"})).is_err()
        );
        assert!(engage_update(&json!({"$token": "t", "$distinct_id": null, "$set": {}})).is_err());
    }

    #[test]
    fn the_fold_combines_by_the_documented_rule() {
        let v = |x: serde_json::Value| x;
        let updates = [
            (ProfileOp::Set, v(json!({"plan": "free", "city": "Paris"}))),
            (
                ProfileOp::SetOnce,
                v(json!({"first_seen": "monday", "plan": "ignored"})),
            ),
            (ProfileOp::Add, v(json!({"visits": 2}))),
            (ProfileOp::Set, v(json!({"plan": "pro"}))),
            (ProfileOp::SetOnce, v(json!({"first_seen": "tuesday"}))),
            (ProfileOp::Add, v(json!({"visits": 3, "spent": 1.5}))),
            (ProfileOp::Append, v(json!({"tags": "a"}))),
            (ProfileOp::Union, v(json!({"tags": ["a", "b"]}))),
            (ProfileOp::Remove, v(json!({"tags": "a"}))),
            (ProfileOp::Unset, v(json!(["city"]))),
        ];
        let p = fold(updates.iter().map(|(o, v)| (*o, v)));
        assert_eq!(
            Value::Object(p),
            json!({"plan": "pro", "first_seen": "monday", "visits": 5, "spent": 1.5, "tags": ["b"]})
        );
        let p = fold([
            (ProfileOp::Set, &json!({"a": 1})),
            (ProfileOp::Delete, &json!("")),
            (ProfileOp::Set, &json!({"b": 2})),
        ]);
        assert_eq!(Value::Object(p), json!({"b": 2}));
    }
}
