//! The form of an `elicitation_request` (its `schema`: MCP's restricted JSON Schema, an
//! object of flat primitive properties) read as a list of [`Field`]s, and the check of an
//! `elicit` frame's `content` against it: types, `required`, enums, lengths and ranges. The
//! server checks every answer with [`check`]; the terminal client asks field by field and
//! reads each typed line with [`Field::read`].
//!
//! Depends on nothing in the crate.

use serde_json::{Map, Value};

/// The most fields a form may have; a schema with more is refused as a whole.
pub const MAX_FORM_FIELDS: usize = 64;

/// One field of a form.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// The property's name: the key of its answer in `content`.
    pub name: String,
    /// What to show as its label: its `title`, else its name.
    pub title: String,
    /// Its `description`, when it has one.
    pub description: Option<String>,
    /// What it takes.
    pub kind: FieldKind,
    /// True when the schema's `required` names it.
    pub required: bool,
    /// Its `default`, when it has one.
    pub default: Option<Value>,
}

/// What a field takes.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldKind {
    /// A string, `min..=max` characters long when given; `format` (`email`, `uri`, `date`,
    /// `date-time`) is a hint for the input, not checked.
    Text {
        /// The fewest characters.
        min: Option<u64>,
        /// The most characters.
        max: Option<u64>,
        /// The `format` hint.
        format: Option<String>,
    },
    /// A number, or with `integer` a whole number, within `min..=max` when given.
    Number {
        /// True for `"type": "integer"`.
        integer: bool,
        /// The least value.
        min: Option<f64>,
        /// The greatest value.
        max: Option<f64>,
    },
    /// True or false.
    Boolean,
    /// One of these strings (`enum`, or `oneOf` of `const`s), each with its label.
    Choice(Vec<Choice>),
    /// Several of these strings (an array of enum items), `min..=max` of them when given.
    Choices {
        /// What may be chosen.
        options: Vec<Choice>,
        /// The fewest choices.
        min: Option<u64>,
        /// The most choices.
        max: Option<u64>,
    },
}

/// One option of an enum field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The value the answer carries.
    pub value: String,
    /// What to show: its title (or `enumNames` entry), else the value.
    pub label: String,
}

/// The fields of the form `schema` describes, in the order of their names (a JSON object's
/// members have no order; `serde_json` keeps them sorted).
///
/// # Errors
///
/// What is wrong with a schema that is not an object of supported properties.
pub fn fields(schema: &Value) -> Result<Vec<Field>, String> {
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .ok_or("the form has no \"properties\" object")?;
    if properties.len() > MAX_FORM_FIELDS {
        return Err(format!("the form has more than {MAX_FORM_FIELDS} fields"));
    }
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    properties
        .iter()
        .map(|(name, property)| {
            Ok(Field {
                name: name.clone(),
                title: text(property, "title").unwrap_or_else(|| name.clone()),
                description: text(property, "description"),
                kind: kind(name, property)?,
                required: required.contains(&name.as_str()),
                default: property.get("default").cloned(),
            })
        })
        .collect()
}

/// Checks `content` (an `elicit` frame's answers) against the form `schema`: every key a
/// field, every value of its field's kind, every required field present.
///
/// # Errors
///
/// The first problem found, for the person who filled in the form.
pub fn check(schema: &Value, content: &Map<String, Value>) -> Result<(), String> {
    let fields = fields(schema)?;
    for name in content.keys() {
        if !fields.iter().any(|field| &field.name == name) {
            return Err(format!("the form has no field {name:?}"));
        }
    }
    for field in &fields {
        match content.get(&field.name) {
            None | Some(Value::Null) if field.required => {
                return Err(format!("{} is required", field.title));
            }
            None | Some(Value::Null) => {}
            Some(value) => field.check(value)?,
        }
    }
    Ok(())
}

impl Field {
    /// Checks one answer against this field.
    ///
    /// # Errors
    ///
    /// What is wrong with it, for a person.
    pub fn check(&self, value: &Value) -> Result<(), String> {
        let title = &self.title;
        match &self.kind {
            FieldKind::Text { min, max, .. } => {
                let text = value
                    .as_str()
                    .ok_or_else(|| format!("{title} must be text"))?;
                let length = text.chars().count() as u64;
                if min.is_some_and(|min| length < min) || max.is_some_and(|max| length > max) {
                    return Err(format!("{title} has the wrong length"));
                }
            }
            FieldKind::Number { integer, min, max } => {
                let number = value
                    .as_f64()
                    .ok_or_else(|| format!("{title} must be a number"))?;
                if *integer && !(value.is_i64() || value.is_u64()) {
                    return Err(format!("{title} must be a whole number"));
                }
                if min.is_some_and(|min| number < min) || max.is_some_and(|max| number > max) {
                    return Err(format!("{title} is out of range"));
                }
            }
            FieldKind::Boolean => {
                if !value.is_boolean() {
                    return Err(format!("{title} must be true or false"));
                }
            }
            FieldKind::Choice(options) => {
                if !value.as_str().is_some_and(|v| offered(options, v)) {
                    return Err(format!("{title} must be one of the options"));
                }
            }
            FieldKind::Choices { options, min, max } => {
                let chosen = value
                    .as_array()
                    .ok_or_else(|| format!("{title} must be a list of options"))?;
                if !chosen
                    .iter()
                    .all(|v| v.as_str().is_some_and(|v| offered(options, v)))
                {
                    return Err(format!("{title} must hold only the options"));
                }
                let count = chosen.len() as u64;
                if min.is_some_and(|min| count < min) || max.is_some_and(|max| count > max) {
                    return Err(format!("{title} has the wrong number of choices"));
                }
            }
        }
        Ok(())
    }

    /// Reads a line a person typed for this field as its JSON value: a number, `y`/`n` (or
    /// `true`/`false`), an option's value or label (or its number, from 1), several of them
    /// separated by commas. Empty text reads as `None` (the field left out).
    ///
    /// # Errors
    ///
    /// What is wrong with the text, for the person.
    pub fn read(&self, text: &str) -> Result<Option<Value>, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let value = match &self.kind {
            FieldKind::Text { .. } => Value::from(text),
            FieldKind::Number { integer: true, .. } => text
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("{} must be a whole number", self.title))?,
            FieldKind::Number { .. } => text
                .parse::<f64>()
                .ok()
                .and_then(|n| serde_json::Number::from_f64(n).map(Value::Number))
                .ok_or_else(|| format!("{} must be a number", self.title))?,
            FieldKind::Boolean => match text.to_ascii_lowercase().as_str() {
                "y" | "yes" | "true" => Value::Bool(true),
                "n" | "no" | "false" => Value::Bool(false),
                _ => return Err(format!("{}: answer y or n", self.title)),
            },
            FieldKind::Choice(options) => Value::from(pick(options, text, &self.title)?),
            FieldKind::Choices { options, .. } => {
                let chosen: Result<Vec<Value>, String> = text
                    .split(',')
                    .map(|part| pick(options, part.trim(), &self.title).map(Value::from))
                    .collect();
                Value::Array(chosen?)
            }
        };
        self.check(&value)?;
        Ok(Some(value))
    }
}

/// The option `text` names: by value, by label, or by its number from 1.
fn pick(options: &[Choice], text: &str, title: &str) -> Result<String, String> {
    let by_number = text
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| options.get(i));
    options
        .iter()
        .find(|option| option.value == text || option.label.eq_ignore_ascii_case(text))
        .or(by_number)
        .map(|option| option.value.clone())
        .ok_or_else(|| format!("{title}: {text:?} is not one of the options"))
}

fn offered(options: &[Choice], value: &str) -> bool {
    options.iter().any(|option| option.value == value)
}

/// What the property `name` takes.
fn kind(name: &str, property: &Value) -> Result<FieldKind, String> {
    let number = |key| property.get(key).and_then(Value::as_f64);
    let count = |key| property.get(key).and_then(Value::as_u64);
    match property.get("type").and_then(Value::as_str) {
        Some("string") => Ok(match options(property) {
            Some(options) => FieldKind::Choice(options),
            None => FieldKind::Text {
                min: count("minLength"),
                max: count("maxLength"),
                format: text(property, "format"),
            },
        }),
        Some(kind @ ("number" | "integer")) => Ok(FieldKind::Number {
            integer: kind == "integer",
            min: number("minimum"),
            max: number("maximum"),
        }),
        Some("boolean") => Ok(FieldKind::Boolean),
        Some("array") => {
            let options = property.get("items").and_then(options).ok_or_else(|| {
                format!("field {name:?} is a list of something other than options")
            })?;
            Ok(FieldKind::Choices {
                options,
                min: count("minItems"),
                max: count("maxItems"),
            })
        }
        other => Err(format!("field {name:?} has an unsupported type {other:?}")),
    }
}

/// The options of an enum property: `enum` (labelled by `enumNames` when given), or a
/// `oneOf`/`anyOf` list of `{const, title}`.
fn options(property: &Value) -> Option<Vec<Choice>> {
    if let Some(values) = property.get("enum").and_then(Value::as_array) {
        let names = property.get("enumNames").and_then(Value::as_array);
        return Some(
            values
                .iter()
                .enumerate()
                .filter_map(|(i, value)| {
                    let value = value.as_str()?.to_owned();
                    let label = names
                        .and_then(|names| names.get(i))
                        .and_then(Value::as_str)
                        .map_or_else(|| value.clone(), str::to_owned);
                    Some(Choice { value, label })
                })
                .collect(),
        );
    }
    let listed = property
        .get("oneOf")
        .or_else(|| property.get("anyOf"))
        .and_then(Value::as_array)?;
    Some(
        listed
            .iter()
            .filter_map(|option| {
                let value = option.get("const")?.as_str()?.to_owned();
                let label = text(option, "title").unwrap_or_else(|| value.clone());
                Some(Choice { value, label })
            })
            .collect(),
    )
}

/// A string member of `value`, when present.
fn text(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "title": "Name", "maxLength": 5},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "ok": {"type": "boolean"},
                "color": {"type": "string", "enum": ["r", "g"], "enumNames": ["Red", "Green"]},
                "hero": {"type": "string", "oneOf": [{"const": "h1", "title": "Superman"}]},
                "tools": {"type": "array", "maxItems": 2,
                          "items": {"type": "string", "enum": ["a", "b", "c"]}}
            },
            "required": ["name"]
        })
    }

    fn content(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn a_schema_reads_as_fields_in_name_order() {
        let fields = fields(&schema()).unwrap();
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["age", "color", "hero", "name", "ok", "tools"]);
        assert!(fields[3].required && !fields[0].required);
        assert_eq!(fields[3].title, "Name");
        assert_eq!(
            fields[1].kind,
            FieldKind::Choice(vec![
                Choice {
                    value: "r".into(),
                    label: "Red".into()
                },
                Choice {
                    value: "g".into(),
                    label: "Green".into()
                }
            ])
        );
        assert!(super::fields(&json!({"type": "object"})).is_err());
        let nested = json!({"properties": {"x": {"type": "object"}}});
        assert!(super::fields(&nested).is_err());
    }

    #[test]
    fn answers_are_checked_for_type_required_and_enum() {
        let schema = schema();
        let good = json!({"name": "Ann", "age": 30, "ok": true, "color": "g", "hero": "h1",
                          "tools": ["a", "c"]});
        assert_eq!(check(&schema, &content(good)), Ok(()));
        assert_eq!(check(&schema, &content(json!({"name": "Bo"}))), Ok(()));
        for bad in [
            json!({}),
            json!({"name": 3}),
            json!({"name": "toolong"}),
            json!({"name": "a", "age": 1.5}),
            json!({"name": "a", "age": 200}),
            json!({"name": "a", "ok": "yes"}),
            json!({"name": "a", "color": "Red"}),
            json!({"name": "a", "tools": ["a", "b", "c"]}),
            json!({"name": "a", "tools": ["z"]}),
            json!({"name": "a", "extra": 1}),
        ] {
            assert!(check(&schema, &content(bad.clone())).is_err(), "{bad}");
        }
    }

    #[test]
    fn typed_lines_read_as_values() {
        let fields = fields(&schema()).unwrap();
        let field = |name: &str| fields.iter().find(|f| f.name == name).unwrap();
        assert_eq!(field("name").read(" Ann "), Ok(Some(json!("Ann"))));
        assert_eq!(field("name").read(""), Ok(None));
        assert_eq!(field("age").read("42"), Ok(Some(json!(42))));
        assert!(field("age").read("4.2").is_err());
        assert_eq!(field("ok").read("y"), Ok(Some(json!(true))));
        assert_eq!(field("color").read("green"), Ok(Some(json!("g"))));
        assert_eq!(field("color").read("1"), Ok(Some(json!("r"))));
        assert_eq!(field("tools").read("a, c"), Ok(Some(json!(["a", "c"]))));
        assert!(field("tools").read("a,b,c").is_err());
    }
}
