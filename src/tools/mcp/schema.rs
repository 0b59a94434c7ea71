//! A minimal JSON Schema check for a tool's `structuredContent` against its `outputSchema`:
//! `type` (one or a list), `required`, `properties`, `items` and `enum`, recursively. Every
//! other keyword is ignored, so a schema using more is checked only as far as these go. Written
//! here rather than taken from a crate: the JSON Schema crates are large (regex engines, format
//! checkers, remote references) for the few keywords MCP servers use in practice, and a
//! mismatch is only reported, never trusted.
//!
//! Depends on nothing in the crate.

use std::fmt;

use serde_json::Value;

/// Nesting followed at most, so that a deep value or schema cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

/// The first place where a value does not match its schema, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Mismatch {
    /// The place, as a JSON pointer (`/items/0/name`; `/` for the value itself).
    pub at: String,
    /// What is wrong there.
    pub problem: Problem,
}

/// How a value does not match its schema.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// It is not of the type (`type`) the schema asks for.
    Type {
        /// The types allowed.
        expected: Vec<String>,
        /// What it is instead (`an array`).
        found: &'static str,
    },
    /// It is not one of the values `enum` allows.
    NotAllowed {
        /// The value.
        value: Value,
        /// The values allowed.
        allowed: Vec<Value>,
    },
    /// An object lacks a member `required` names.
    Missing(String),
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = &self.at;
        match &self.problem {
            Problem::Type { expected, found } => {
                write!(f, "{at}: expected {}, found {found}", expected.join(" or "))
            }
            Problem::NotAllowed { value, allowed } => write!(
                f,
                "{at}: {value} is not one of {}",
                Value::from(allowed.clone())
            ),
            Problem::Missing(name) => write!(f, "{at}: {name:?} is required"),
        }
    }
}

impl std::error::Error for Mismatch {}

/// Checks `value` against `schema`; the error names the first place that does not match.
pub(super) fn check(value: &Value, schema: &Value) -> Result<(), Mismatch> {
    check_at(value, schema, "", 0)
}

fn check_at(value: &Value, schema: &Value, at: &str, depth: usize) -> Result<(), Mismatch> {
    let Some(schema) = schema.as_object() else {
        // `true`, `{}` or anything else this check does not read: every value matches.
        return Ok(());
    };
    if depth > MAX_DEPTH {
        return Ok(());
    }
    let mismatch = |problem| Mismatch {
        at: if at.is_empty() { "/" } else { at }.to_owned(),
        problem,
    };
    if let Some(wanted) = schema.get("type") {
        let types: Vec<&str> = match wanted {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|kind| is_type(value, kind)) {
            return Err(mismatch(Problem::Type {
                expected: types.into_iter().map(str::to_owned).collect(),
                found: type_of(value),
            }));
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum")
        && !allowed.contains(value)
    {
        return Err(mismatch(Problem::NotAllowed {
            value: value.clone(),
            allowed: allowed.clone(),
        }));
    }
    if let Value::Object(object) = value {
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !object.contains_key(name) {
                    return Err(mismatch(Problem::Missing(name.to_owned())));
                }
            }
        }
        if let Some(Value::Object(properties)) = schema.get("properties") {
            for (name, property) in properties {
                if let Some(member) = object.get(name) {
                    check_at(member, property, &format!("{at}/{name}"), depth + 1)?;
                }
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check_at(item, item_schema, &format!("{at}/{i}"), depth + 1)?;
        }
    }
    Ok(())
}

/// True when `value` is of the JSON Schema type `kind` (an unknown type name matches nothing).
fn is_type(value: &Value, kind: &str) -> bool {
    match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|n| n.fract() == 0.0)
        }
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Object(_) => "an object",
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn types_required_properties_items_and_enums_are_checked() {
        let schema = json!({
            "type": "object",
            "required": ["temperature", "readings"],
            "properties": {
                "temperature": {"type": "number"},
                "unit": {"enum": ["C", "F"]},
                "readings": {"type": "array", "items": {"type": "integer"}},
                "note": {"type": ["string", "null"]},
            },
        });
        let good = json!({"temperature": 21.5, "unit": "C", "readings": [1, 2], "note": null});
        assert_eq!(check(&good, &schema), Ok(()));
        let cases = [
            (json!([]), "/: expected object, found an array"),
            (json!({"readings": []}), "/: \"temperature\" is required"),
            (
                json!({"temperature": "warm", "readings": []}),
                "/temperature: expected number, found a string",
            ),
            (
                json!({"temperature": 1, "readings": [1, 2.5]}),
                "/readings/1: expected integer, found a number",
            ),
            (
                json!({"temperature": 1, "readings": [], "unit": "K"}),
                "/unit: \"K\" is not one of [\"C\",\"F\"]",
            ),
            (
                json!({"temperature": 1, "readings": [], "note": 3}),
                "/note: expected string or null, found a number",
            ),
        ];
        for (value, error) in cases {
            let found = check(&value, &schema).map_err(|mismatch| mismatch.to_string());
            assert_eq!(found, Err(error.to_owned()), "{value}");
        }
        assert_eq!(
            check(&json!({"temperature": 1, "readings": [true]}), &schema),
            Err(Mismatch {
                at: "/readings/0".into(),
                problem: Problem::Type {
                    expected: vec!["integer".into()],
                    found: "a boolean",
                },
            })
        );
        // Keywords it does not read, and schemas that are not objects, accept anything.
        assert_eq!(check(&json!(1), &json!({"minimum": 5})), Ok(()));
        assert_eq!(check(&json!(1), &json!(true)), Ok(()));
        // Extra members are allowed (no additionalProperties check).
        assert_eq!(
            check(&json!({"temperature": 1, "readings": [], "x": 1}), &schema),
            Ok(())
        );
    }
}
