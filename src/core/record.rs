//! Identity records (the seed's "Create an Identity", `POST /identity`): which bodies are valid,
//! and the content that identifies a record. A record's identity is its content: the same
//! content always gives the same `identity_hash` (SHA-256, computed by PostgreSQL, of
//! `canonical_content`), hence the same `identity_id`, so creating it twice finds the first.

use serde_json::{Map, Value};

use crate::core::ingest::json_type;

/// A valid body: what a record holds.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordBody {
    pub display_name: String,
    /// The creator's Ethereum address, lower-cased (addresses are case-insensitive).
    pub creator: String,
    pub description: Option<String>,
    pub image: Option<String>,
    pub external_reference: Option<String>,
    /// Optional: the person the record describes.
    pub distinct_id: Option<String>,
    pub token: Option<String>,
}

/// Why a body is a 400: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq)]
pub struct BadRequest {
    pub field: String,
    pub problem: String,
}

const FIELDS: [&str; 8] = [
    "display_name",
    "creator",
    "description",
    "image",
    "image_url",
    "external_reference",
    "distinct_id",
    "$token",
];

/// `0x` and 40 hex digits.
pub fn is_ethereum_address(s: &str) -> bool {
    s.len() == 42 && s.starts_with("0x") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// An absolute http(s) URL with a host and no spaces.
pub fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(r) => {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty()
                && !s.chars().any(char::is_whitespace)
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]@".contains(c))
        }
        None => false,
    }
}

pub fn record_body(v: &Value) -> Result<RecordBody, BadRequest> {
    let bad = |field: &str, problem: String| BadRequest {
        field: field.into(),
        problem,
    };
    let Value::Object(obj) = v else {
        return Err(bad(
            "body",
            format!("must be an object, not {}", json_type(v)),
        ));
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(bad(k, "is not a field of an Identity".into()));
    }
    let text = |obj: &Map<String, Value>, field: &str| -> Result<Option<String>, BadRequest> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.contains('\0') => Err(bad(
                field,
                "contains a NUL character (\\u0000), which text cannot hold".into(),
            )),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(
                field,
                format!("must be a string, not {}", json_type(other)),
            )),
        }
    };
    let display_name = text(obj, "display_name")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| bad("display_name", "is required and may not be empty".into()))?;
    let creator = text(obj, "creator")?.ok_or_else(|| bad("creator", "is required".into()))?;
    if !is_ethereum_address(&creator) {
        return Err(bad(
            "creator",
            format!("{creator:?} is not an Ethereum address (0x and 40 hex digits)"),
        ));
    }
    let image = match (text(obj, "image")?, text(obj, "image_url")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(bad(
                "image_url",
                "differs from image (they name the same field)".into(),
            ))
        }
        (a, b) => a.or(b),
    };
    for (field, url) in [
        ("image", &image),
        ("external_reference", &text(obj, "external_reference")?),
    ] {
        if let Some(u) = url {
            if !is_http_url(u) {
                return Err(bad(field, format!("{u:?} is not an http(s) URL")));
            }
        }
    }
    let distinct_id = match obj.get("distinct_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(bad(
                "distinct_id",
                format!("must be a string, not {}", json_type(other)),
            ))
        }
    };
    let token = text(obj, "$token")?;
    if distinct_id.is_some() != token.is_some() {
        return Err(bad(
            if token.is_none() {
                "$token"
            } else {
                "distinct_id"
            },
            "distinct_id and $token go together (the person and its project)".into(),
        ));
    }
    Ok(RecordBody {
        display_name,
        creator: creator.to_lowercase(),
        description: text(obj, "description")?,
        image,
        external_reference: text(obj, "external_reference")?,
        distinct_id,
        token,
    })
}

/// The content that identifies a record, as JSON with its keys in a fixed order: hashed into
/// `identity_hash`. The person a record describes is not part of its identity.
pub fn canonical_content(r: &RecordBody) -> String {
    // serde_json's Map keeps keys sorted (no preserve_order feature): a stable text.
    let mut m = Map::new();
    m.insert("creator".into(), Value::String(r.creator.clone()));
    m.insert(
        "description".into(),
        r.description
            .clone()
            .map(Value::String)
            .unwrap_or(Value::Null),
    );
    m.insert("display_name".into(), Value::String(r.display_name.clone()));
    m.insert(
        "external_reference".into(),
        r.external_reference
            .clone()
            .map(Value::String)
            .unwrap_or(Value::Null),
    );
    m.insert(
        "image".into(),
        r.image.clone().map(Value::String).unwrap_or(Value::Null),
    );
    Value::Object(m).to_string()
}

/// A UUID (version 8, RFC 9562's custom layout) from the first 16 bytes of a hex digest: the
/// record's `id` and its creator's, stable with the content.
pub fn uuid_from_digest(hex: &str) -> String {
    let mut bytes = [0u8; 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("00"), 16).unwrap_or(0);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ADDR: &str = "0x00000000000000000000000000000000000000Ab";

    #[test]
    fn bodies_are_checked_field_by_field() {
        let ok = record_body(
            &json!({"display_name": "JP", "creator": ADDR, "image": "https://my-image.com/me.jpg"}),
        )
        .unwrap();
        assert_eq!(ok.creator, ADDR.to_lowercase());
        let field = |v: serde_json::Value| record_body(&v).unwrap_err().field;
        assert_eq!(field(json!({"creator": ADDR})), "display_name");
        assert_eq!(
            field(json!({"display_name": " ", "creator": ADDR})),
            "display_name"
        );
        assert_eq!(
            field(json!({"display_name": "JP", "creator": "0x...81"})),
            "creator"
        );
        assert_eq!(
            field(json!({"display_name": "JP", "creator": ADDR, "image_url": "ftp://x"})),
            "image"
        );
        assert_eq!(
            field(json!({"display_name": "JP", "creator": ADDR, "external_reference": "github"})),
            "external_reference"
        );
        assert_eq!(
            field(json!({"display_name": 5, "creator": ADDR})),
            "display_name"
        );
        assert_eq!(
            field(json!({"display_name": "JP", "creator": ADDR, "colour": "red"})),
            "colour"
        );
        assert_eq!(
            field(json!({"display_name": "JP", "creator": ADDR, "distinct_id": "u"})),
            "$token"
        );
        assert_eq!(field(json!([])), "body");
        assert_eq!(
            field(json!({"display_name": "J\u{0}P", "creator": ADDR})),
            "display_name"
        );
    }

    #[test]
    fn the_same_content_is_the_same_text() {
        let a = record_body(
            &json!({"display_name": "JP", "creator": ADDR, "image": "https://x.io/a.jpg"}),
        )
        .unwrap();
        let b = record_body(&json!({"image_url": "https://x.io/a.jpg", "creator": ADDR.to_uppercase().replace("0X", "0x"), "display_name": "JP"})).unwrap();
        assert_eq!(canonical_content(&a), canonical_content(&b));
        let u =
            uuid_from_digest("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
        assert_eq!(uuid::Uuid::parse_str(&u).unwrap().get_version_num(), 8);
    }
}
