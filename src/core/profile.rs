//! People profiles (Mixpanel's Engage API): what an `/engage` update says, and a person's
//! profile as the fold of the updates sent to any of the person's ids, in the order they were
//! sent. Profiles are not stored per cluster: every update stays with the id it was sent to, so a
//! merge combines two people's profiles and a split separates them again with no data moved,
//! by the one rule the fold applies: the newest `$set` wins, the oldest `$set_once` wins, `$add`
//! counters sum, `$append` lists concatenate in time order, `$union` lists union, `$remove` and
//! `$unset` take away what came before, and `$delete` clears what came before.
//!
//! Numbers: what an update says must be representable, or the update is refused when it is
//! sent (`engage_update`): `$time` a finite number of milliseconds within years 1 to 9999, and
//! each `$add` a number within ±(2^127 - 1). The fold adds integers exactly (i128) and anything
//! else as f64; a sum that cannot be represented (beyond i128 for integers, beyond f64 for the
//! others) is not made: the property keeps its previous value (a counter stops at the last sum
//! it could hold, never becomes null and never restarts), and later `$add`s go on from it.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};

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
    if token.contains('\0') {
        return Err(bad("$token", NUL_PROBLEM.into()));
    }
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
        Some(Value::Number(n)) => match n.as_f64() {
            Some(ms) if (MIN_TIME_MS..=MAX_TIME_MS).contains(&ms) => Some(ms),
            _ => {
                return Err(bad(
                    "$time",
                    format!(
                        "{} is out of range: milliseconds since 1970-01-01 from {MIN_TIME_MS} \
                         (0001-01-01) to {MAX_TIME_MS} (9999-12-31)",
                        short(n)
                    ),
                ))
            }
        },
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
                let Value::Number(num) = n else {
                    return Err(bad(
                        &format!("$add.{k}"),
                        format!("must be a number, not {}", json_type(n)),
                    ));
                };
                // Within ±(2^127 - 1) as a float too: jsonb stores 1e300 as its 301 digits,
                // which the fold could only add rounded.
                let fits = match Num::of(n) {
                    Some(Num::Int(_)) => true,
                    Some(Num::Float(f)) => f.abs() < ADD_LIMIT,
                    None => false,
                };
                if !fits {
                    return Err(bad(
                        &format!("$add.{k}"),
                        format!(
                            "{} is beyond the numbers $add counts: within ±{} (integers are \
                             counted exactly, other numbers as f64)",
                            short(num),
                            i128::MAX
                        ),
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
    // jsonb cannot hold NUL: storing it would fail the whole call, batch and all.
    if let Some(at) = nul_at(value, op.key()) {
        return Err(bad(&at, NUL_PROBLEM.into()));
    }
    Ok(Engage {
        token,
        distinct_id,
        time_ms,
        op,
        value: value.clone(),
    })
}

/// Earliest `$time` accepted: 0001-01-01T00:00:00Z, in milliseconds since the epoch.
pub const MIN_TIME_MS: f64 = -62_135_596_800_000.0;
/// Latest `$time` accepted: 9999-12-31T23:59:59.999Z (PostgreSQL's timestamps go further; no
/// SDK means a later time, and a date beyond it is a unit error, not a date).
pub const MAX_TIME_MS: f64 = 253_402_300_799_999.0;

const NUL_PROBLEM: &str = "contains a NUL character (\\u0000), which text and jsonb cannot hold";

/// Where `v` (at `path`) has a string or key holding NUL, if anywhere.
fn nul_at(v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_at(x, &format!("{path}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, x)| {
            let at = format!("{path}.{}", k.replace('\0', "\\u0000"));
            if k.contains('\0') {
                Some(at)
            } else {
                nul_at(x, &at)
            }
        }),
        _ => None,
    }
}

/// The bound of what `$add` takes (exclusive): 2^127, where i128 ends.
const ADD_LIMIT: f64 = 170_141_183_460_469_231_731_687_303_715_884_105_728.0;

/// A number for messages: its text, cut when long (a 400-digit integer is not read anyway).
fn short(n: &Number) -> String {
    let s = n.as_str();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}... ({} characters)", &s[..i], s.len()),
        None => s.to_string(),
    }
}

/// A number `$add` can count: an integer, exactly, or a finite f64.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    /// None for what is not a number, or cannot be represented (checked at ingest; updates
    /// stored before that check are skipped by the fold).
    fn of(v: &Value) -> Option<Num> {
        let Value::Number(n) = v else { return None };
        // An integer beyond i128 would only be counted rounded: not a number $add takes.
        if n.as_str().contains(['.', 'e', 'E']) {
            n.as_f64().map(Num::Float)
        } else {
            n.as_i128().map(Num::Int)
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn to_value(self) -> Option<Value> {
        match self {
            Num::Int(i) => Some(Value::Number(Number::from(i))),
            Num::Float(f) => Number::from_f64(f).map(Value::Number),
        }
    }
}

/// The sum `$add` makes of a property's value and an addend, or None when there is none to make
/// (the property keeps its value): integers add exactly, anything else as f64, a previous value
/// that is not a number counts as absent, and a sum beyond what can be represented is not made.
fn add(previous: Option<&Value>, addend: &Value) -> Option<Value> {
    let b = Num::of(addend)?;
    let a = match previous {
        Some(v @ Value::Number(_)) => Num::of(v)?,
        _ => return Some(addend.clone()),
    };
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.checked_add(y).map(Num::Int),
        _ => Some(Num::Float(a.as_f64() + b.as_f64())),
    }?
    .to_value()
}

/// A list property while the fold works on it: `$remove` leaves holes (filled in by `into_value`),
/// and the positions of each item, by a text equal values share (keys sorted, numbers keeping
/// their own text), make `$union` and `$remove` constant time per item, so the fold is linear.
#[derive(Default)]
struct List {
    items: Vec<Option<Value>>,
    at: HashMap<String, Vec<usize>>,
}

impl List {
    fn from_items(items: Vec<Value>) -> List {
        let mut list = List::default();
        for v in items {
            list.push(v);
        }
        list
    }

    fn push(&mut self, v: Value) {
        self.at
            .entry(v.to_string())
            .or_default()
            .push(self.items.len());
        self.items.push(Some(v));
    }

    fn contains(&self, v: &Value) -> bool {
        self.at.contains_key(&v.to_string())
    }

    /// Takes every item equal to `v` away.
    fn remove(&mut self, v: &Value) {
        for i in self.at.remove(&v.to_string()).into_iter().flatten() {
            self.items[i] = None;
        }
    }

    fn into_value(self) -> Value {
        Value::Array(self.items.into_iter().flatten().collect())
    }
}

/// The profile the updates make, applied in the order given (the caller sorts them by time).
/// Linear in the size of the updates (a 100k-item `$union` is folded in milliseconds): lists
/// that `$append`, `$union` or `$remove` touch are kept as `List`s until the end.
pub fn fold<'a>(updates: impl IntoIterator<Item = (ProfileOp, &'a Value)>) -> Map<String, Value> {
    let mut profile = Map::new();
    // Properties held as Lists (never also in `profile`).
    let mut lists: HashMap<String, List> = HashMap::new();
    // The List of property k: the list it holds, or a new one (`reset`: `[]` when it holds no
    // list), or None when it holds no list and `reset` is false.
    fn list_of<'l>(
        profile: &mut Map<String, Value>,
        lists: &'l mut HashMap<String, List>,
        k: &str,
        reset: bool,
    ) -> Option<&'l mut List> {
        if !lists.contains_key(k) {
            let list = match profile.remove(k) {
                Some(Value::Array(items)) => List::from_items(items),
                Some(other) if !reset => {
                    profile.insert(k.to_string(), other);
                    return None;
                }
                None if !reset => return None,
                _ => List::default(),
            };
            lists.insert(k.to_string(), list);
        }
        lists.get_mut(k)
    }
    for (op, value) in updates {
        match op {
            ProfileOp::Set => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    lists.remove(k);
                    profile.insert(k.clone(), v.clone());
                }
            }
            ProfileOp::SetOnce => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    if !profile.contains_key(k) && !lists.contains_key(k) {
                        profile.insert(k.clone(), v.clone());
                    }
                }
            }
            ProfileOp::Add => {
                for (k, n) in value.as_object().into_iter().flatten() {
                    // A list is not a number: the addend replaces it.
                    let previous = if lists.contains_key(k) {
                        None
                    } else {
                        profile.get(k)
                    };
                    if let Some(sum) = add(previous, n) {
                        lists.remove(k);
                        profile.insert(k.clone(), sum);
                    }
                }
            }
            ProfileOp::Append => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    // What is not a list becomes a list of this item.
                    if let Some(list) = list_of(&mut profile, &mut lists, k, true) {
                        list.push(v.clone());
                    }
                }
            }
            ProfileOp::Union => {
                for (k, l) in value.as_object().into_iter().flatten() {
                    if let Some(list) = list_of(&mut profile, &mut lists, k, true) {
                        for v in l.as_array().into_iter().flatten() {
                            if !list.contains(v) {
                                list.push(v.clone());
                            }
                        }
                    }
                }
            }
            ProfileOp::Remove => {
                for (k, v) in value.as_object().into_iter().flatten() {
                    if let Some(list) = list_of(&mut profile, &mut lists, k, false) {
                        list.remove(v);
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
                    lists.remove(name);
                    profile.remove(name);
                }
            }
            ProfileOp::Delete => {
                lists.clear();
                profile.clear();
            }
        }
    }
    for (k, list) in lists {
        profile.insert(k, list.into_value());
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

    #[test]
    fn times_out_of_range_are_refused_naming_time() {
        let time = |t: &str| {
            let v: Value = serde_json::from_str(&format!(
                r#"{{"$token": "t", "$distinct_id": "u", "$time": {t}, "$set": {{}}}}"#
            ))
            .unwrap();
            engage_update(&v).map(|u| u.time_ms)
        };
        assert_eq!(time("1700000000000").unwrap(), Some(1.7e12));
        assert_eq!(
            time("-1000").unwrap(),
            Some(-1000.0),
            "before 1970 is a time"
        );
        assert_eq!(time("253402300799999").unwrap(), Some(MAX_TIME_MS));
        for t in [
            "1e20",
            "1e400",
            "-1e400",
            "253402300800000",
            "-62135596800001",
        ] {
            let e = time(t).unwrap_err();
            assert!(
                e.message().starts_with("errMalformedEvent: $time ")
                    && e.message().contains("out of range"),
                "{t}: {}",
                e.message()
            );
        }
        let long = format!("1{}", "0".repeat(400));
        assert!(
            time(&long).unwrap_err().message().len() < 300,
            "a long number is cut"
        );
    }

    #[test]
    fn add_numbers_that_cannot_be_counted_are_refused() {
        let add = |n: &str| {
            let v: Value = serde_json::from_str(&format!(
                r#"{{"$token": "t", "$distinct_id": "u", "$add": {{"n": {n}}}}}"#
            ))
            .unwrap();
            engage_update(&v)
        };
        for n in [
            "1",
            "-5",
            "1.5",
            "1e38",
            "-2.5e-300",
            "170141183460469231731687303715884105727",
            "123456789012345678901234",
        ] {
            assert!(add(n).is_ok(), "{n}");
        }
        for n in [
            "1e400",
            "-1e309",
            "1e308",
            "1.7014118346046923e38",
            "170141183460469231731687303715884105728",
            &format!("1{}", "0".repeat(308)),
        ] {
            let e = add(n).unwrap_err();
            assert!(
                e.message().starts_with("errMalformedEvent: $add.n "),
                "{n}: {}",
                e.message()
            );
        }
    }

    #[test]
    fn add_is_exact_for_integers_and_never_null() {
        let num = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let fold_adds = |adds: &[&str]| {
            let values: Vec<Value> = adds.iter().map(|a| json!({"n": num(a)})).collect();
            fold(values.iter().map(|v| (ProfileOp::Add, v))).remove("n")
        };
        // Integers beyond f64's 53 bits and beyond i64 stay exact.
        assert_eq!(
            fold_adds(&["9007199254740993", "1"]),
            Some(num("9007199254740994"))
        );
        assert_eq!(
            fold_adds(&["9223372036854775807", "9223372036854775807", "2"]),
            Some(num("18446744073709551616"))
        );
        let f = |adds: &[&str]| fold_adds(adds).and_then(|v| v.as_f64());
        assert_eq!(f(&["2", "1.5"]), Some(3.5));
        // A sum beyond f64 is not made: the counter keeps its value, and goes on from it.
        assert_eq!(f(&["1e308", "1e308"]), Some(1e308));
        assert_eq!(f(&["1e308", "1e308", "-1e308"]), Some(0.0));
        // An integer sum beyond i128 likewise.
        assert_eq!(
            fold_adds(&["170141183460469231731687303715884105727", "1", "-7"]),
            Some(num("170141183460469231731687303715884105720"))
        );
        // What ingest refuses, stored before the check, is skipped; a value that is no number
        // (or a number nothing can add to) is not a counter to restart.
        assert_eq!(fold_adds(&["5", "1e400", "1"]), Some(num("6")));
        let p = fold([
            (ProfileOp::Set, &json!({"n": num("1e400")})),
            (ProfileOp::Add, &json!({"n": 1})),
        ]);
        assert_eq!(p["n"], num("1e400"));
    }

    #[test]
    fn a_large_union_folds_in_linear_time() {
        let items: Vec<Value> = (0..50_000).map(|i| json!(format!("item-{i}"))).collect();
        let union = json!({"tags": items});
        let again = json!({"tags": ["item-7", "new", {"b": 1, "a": 2}]});
        let object = json!({"tags": [{"a": 2, "b": 1}]});
        let removed = json!({"tags": "item-3"});
        let appended = json!({"tags": "item-3"});
        let started = std::time::Instant::now();
        let p = fold([
            (ProfileOp::Union, &union),
            (ProfileOp::Union, &again),
            (ProfileOp::Union, &object),
            (ProfileOp::Remove, &removed),
            (ProfileOp::Append, &appended),
            (ProfileOp::Union, &again),
        ]);
        let took = started.elapsed();
        let tags = p["tags"].as_array().unwrap();
        assert_eq!(
            tags.len(),
            50_000 + 2,
            "item-3 removed then appended, new and one object"
        );
        assert_eq!(tags[3], json!("item-4"));
        assert_eq!(
            tags[49_999..],
            [json!("new"), json!({"a": 2, "b": 1}), json!("item-3")]
        );
        assert!(took < std::time::Duration::from_secs(3), "took {took:?}");
    }

    #[test]
    fn lists_keep_the_rule_whatever_held_the_property_before() {
        let p = fold([
            (ProfileOp::Set, &json!({"a": 1, "b": [1, 2, 1], "c": "x"})),
            (ProfileOp::Append, &json!({"a": "first"})),
            (ProfileOp::Remove, &json!({"b": 1, "c": "x", "d": 1})),
            (ProfileOp::SetOnce, &json!({"b": "ignored", "e": [9]})),
            (ProfileOp::Union, &json!({"e": [9, 10], "c": [1]})),
            (ProfileOp::Add, &json!({"e": 3})),
            (ProfileOp::Union, &json!({"f": [1]})),
            (ProfileOp::Unset, &json!(["f"])),
        ]);
        assert_eq!(
            Value::Object(p),
            json!({"a": ["first"], "b": [2], "c": [1], "e": 3})
        );
    }

    #[test]
    fn nul_is_refused_naming_where() {
        let e = |v: Value| engage_update(&v).unwrap_err().message();
        assert!(
            e(json!({"$token": "t", "$distinct_id": "u", "$set": {"a": ["x", "b\u{0}"]}}))
                .starts_with("errMalformedEvent: $set.a[1] contains a NUL")
        );
        assert!(
            e(json!({"$token": "t", "$distinct_id": "u", "$unset": ["\u{0}"]}))
                .starts_with("errMalformedEvent: $unset[0] ")
        );
        assert!(
            e(json!({"$token": "t", "$distinct_id": "u", "$set": {"k\u{0}": 1}}))
                .starts_with("errMalformedEvent: $set.k\\u0000 ")
        );
        assert!(
            e(json!({"$token": "t\u{0}", "$distinct_id": "u", "$set": {}}))
                .starts_with("errMalformedEvent: $token ")
        );
    }
}
