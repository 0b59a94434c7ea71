//! `FormFill`: an `elicitation_request` answered in the terminal, one field at a time. Each
//! typed line is read as its field's value ([`Field::read`]); `-` leaves an optional field
//! out, `.` takes its default, `/decline` and `/cancel` answer the whole request so. A URL
//! request shows its URL (never opened) and takes `y` (accept) or `n` (decline).
//!
//! Depends on: `common::protocol`.

use serde_json::{Map, Value};

use crate::common::protocol::form::{Field, FieldKind, fields};
use crate::common::protocol::{ClientFrame, ElicitAction, ElicitData};

/// One elicitation being answered.
#[derive(Debug)]
pub struct FormFill {
    /// The request's id.
    pub request_id: String,
    /// The tool call it came with: its `tool_result` ends it.
    pub call_id: String,
    /// The fields still to ask, next first; empty in URL mode.
    fields: Vec<Field>,
    /// How many fields have been asked.
    asked: usize,
    /// The answers so far.
    content: Map<String, Value>,
    /// True in URL mode.
    url: bool,
}

/// What a typed line did to a form.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Ask this next (a prompt line).
    Ask(String),
    /// The line was not a value of the field: say this, and ask again.
    Again(String),
    /// The form is answered: send this frame.
    Done(ClientFrame),
}

impl FormFill {
    /// A form for the request; `Err` (what to say) when its schema cannot be asked in the
    /// terminal, in which case the request is declined.
    ///
    /// # Errors
    ///
    /// Why the form cannot be asked.
    pub fn new(
        request_id: String,
        call_id: String,
        schema: Option<&Value>,
        url: bool,
    ) -> Result<Self, String> {
        let fields = match schema {
            Some(schema) if !url => fields(schema)?,
            _ => Vec::new(),
        };
        Ok(FormFill {
            request_id,
            call_id,
            fields,
            asked: 0,
            content: Map::new(),
            url,
        })
    }

    /// The first prompt.
    pub fn first(&self) -> String {
        if self.url {
            return "open it yourself if you trust it; then accept? [y/n, /cancel]".into();
        }
        self.prompt()
    }

    /// The answer for `action`, with no content.
    pub fn answer(&self, action: ElicitAction) -> ClientFrame {
        ClientFrame::Elicit(ElicitData {
            request_id: self.request_id.clone(),
            action,
            content: None,
        })
    }

    /// Takes one typed line.
    pub fn take(&mut self, line: &str) -> Step {
        let line = line.trim();
        match line {
            "/decline" => return Step::Done(self.answer(ElicitAction::Decline)),
            "/cancel" => return Step::Done(self.answer(ElicitAction::Cancel)),
            _ => {}
        }
        if self.url {
            return match line {
                "y" | "Y" | "yes" => Step::Done(self.answer(ElicitAction::Accept)),
                "n" | "N" | "no" => Step::Done(self.answer(ElicitAction::Decline)),
                _ => Step::Again("answer y or n (or /cancel)".into()),
            };
        }
        let Some(field) = self.fields.get(self.asked) else {
            return Step::Done(self.submit());
        };
        let value = match line {
            "-" if field.required => return Step::Again(format!("{} is required", field.title)),
            "-" => None,
            "." if field.default.is_some() => field.default.clone(),
            _ => match field.read(line) {
                Ok(Some(value)) => Some(value),
                Ok(None) | Err(_) if field.required && line.is_empty() => {
                    return Step::Again(format!("{} is required", field.title));
                }
                Ok(None) => None,
                Err(why) => return Step::Again(why),
            },
        };
        if let Some(value) = value {
            self.content.insert(field.name.clone(), value);
        }
        self.asked += 1;
        if self.asked >= self.fields.len() {
            Step::Done(self.submit())
        } else {
            Step::Ask(self.prompt())
        }
    }

    fn submit(&self) -> ClientFrame {
        ClientFrame::Elicit(ElicitData {
            request_id: self.request_id.clone(),
            action: ElicitAction::Accept,
            content: Some(self.content.clone()),
        })
    }

    /// The prompt of the next field.
    fn prompt(&self) -> String {
        let Some(field) = self.fields.get(self.asked) else {
            return "press Enter to send".into();
        };
        let what = match &field.kind {
            FieldKind::Text { format, .. } => format.clone().unwrap_or_else(|| "text".into()),
            FieldKind::Number { integer: true, .. } => "whole number".into(),
            FieldKind::Number { .. } => "number".into(),
            FieldKind::Boolean => "y/n".into(),
            FieldKind::Choice(options) | FieldKind::Choices { options, .. } => {
                let listed: Vec<String> = options
                    .iter()
                    .enumerate()
                    .map(|(i, option)| format!("{}={}", i + 1, option.label))
                    .collect();
                let several = matches!(field.kind, FieldKind::Choices { .. });
                format!(
                    "{}{}",
                    listed.join(" "),
                    if several { ", comma-separated" } else { "" }
                )
            }
        };
        let mut hints = vec![what];
        if let Some(default) = &field.default {
            hints.push(format!(". = {default}"));
        }
        if !field.required {
            hints.push("- to skip".into());
        }
        let about = field
            .description
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        format!("{}{about} [{}]:", field.title, hints.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_form_is_asked_field_by_field_and_sent_as_one_elicit() {
        let schema = json!({"properties": {
            "name": {"type": "string", "title": "Name"},
            "age": {"type": "integer", "default": 7},
            "ok": {"type": "boolean"}
        }, "required": ["name"]});
        let mut form = FormFill::new("r".into(), "c".into(), Some(&schema), false).unwrap();
        // The fields come in name order: age, name, ok.
        assert!(
            form.first().starts_with("age [whole number"),
            "{}",
            form.first()
        );
        assert!(matches!(form.take("old"), Step::Again(_)));
        assert!(matches!(form.take("."), Step::Ask(_)));
        assert!(matches!(form.take("-"), Step::Again(_)), "name is required");
        assert!(matches!(form.take("Ann"), Step::Ask(_)));
        let Step::Done(ClientFrame::Elicit(data)) = form.take("-") else {
            panic!("not done");
        };
        assert_eq!(data.action, ElicitAction::Accept);
        assert_eq!(
            Value::Object(data.content.unwrap()),
            json!({"name": "Ann", "age": 7})
        );
        let mut url = FormFill::new("u".into(), "c".into(), None, true).unwrap();
        assert_eq!(url.take("n"), Step::Done(url.answer(ElicitAction::Decline)));
    }
}
