//! The tools that read a conversation's files (PROTOCOL.md section 9, `/files` and `/read`):
//! `files` lists what the conversation's messages carried and its tools returned, and
//! `read_file` gives one file's text, a page at a time, so that the model can read more of a
//! long document than the passages a turn is given.
//!
//! Depends on: `files`, `model`, `store::files`, `tools`, `tools::error`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::files::Library;
use crate::store::TextState;
use crate::tools::error::ToolError;
use crate::tools::{Tool, ToolContext, string_arg};

/// Chunks one page of `read_file` holds (about 6,000 characters).
pub const PAGE_CHUNKS: u32 = 4;

/// How long `read_file` waits for a file's text still being read.
const TEXT_WAIT: Duration = Duration::from_secs(30);

/// The file tools over `library`.
pub fn all(library: &Library) -> Vec<Arc<dyn Tool>> {
    vec![
        Arc::new(Files {
            library: library.clone(),
        }),
        Arc::new(ReadFile {
            library: library.clone(),
        }),
    ]
}

/// `files`: the files of the calling conversation.
#[derive(Debug)]
pub struct Files {
    library: Library,
}

impl Tool for Files {
    fn name(&self) -> &str {
        "files"
    }
    fn description(&self) -> &str {
        "List the files of this conversation: those the user attached and those tools returned, \
         with the id that read_file takes."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {}})
    }
    fn call(&self, _args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let Some(conversation) = ctx.conversation else {
            return Ok("This conversation has no files.".to_owned());
        };
        let files = self
            .library
            .store()
            .list_files(ctx.principal.as_str(), Some(conversation))
            .map_err(ToolError::Store)?;
        if files.is_empty() {
            return Ok("This conversation has no files.".to_owned());
        }
        let lines: Vec<String> = files
            .iter()
            .map(|file| {
                format!(
                    "- {} ({}, {}), id {}",
                    file.name,
                    file.content_type,
                    crate::model::describe_bytes(usize::try_from(file.size).unwrap_or(usize::MAX)),
                    file.id
                )
            })
            .collect();
        Ok(format!(
            "{} file{}:\n{}",
            files.len(),
            if files.len() == 1 { "" } else { "s" },
            lines.join("\n")
        ))
    }
}

/// `read_file`: one page of a file's text.
#[derive(Debug)]
pub struct ReadFile {
    library: Library,
}

impl Tool for ReadFile {
    fn name(&self) -> &str {
        "read_file"
    }
    fn description(&self) -> &str {
        "Read the text of one of this conversation's files (PDF, HTML, DOCX and text files), \
         a page at a time. Give the id the files tool lists, and a page number for more."
    }
    fn parameters(&self) -> Value {
        json!({"type": "object",
               "properties": {
                   "id": {"type": "string", "description": "the file's id"},
                   "page": {"type": "integer", "minimum": 1, "description": "the page, from 1"}},
               "required": ["id"]})
    }
    fn call(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let id = string_arg(args, "id")?.trim();
        let page = match args.get("page") {
            None | Some(Value::Null) => 1,
            Some(value) => value
                .as_u64()
                .filter(|page| *page >= 1)
                .and_then(|page| u32::try_from(page).ok())
                .ok_or_else(|| ToolError::Arguments("page must be a whole number from 1".into()))?,
        };
        let owner = ctx.principal.as_str();
        let store = self.library.store();
        let Some(file) = store.file(owner, id).map_err(ToolError::Store)? else {
            return Err(ToolError::NotFound(format!("file with the id {id:?}")));
        };
        let state = self
            .library
            .text_state(owner, id, TEXT_WAIT, Some(ctx.cancel))
            .map_err(ToolError::Store)?;
        if ctx.cancel.is_cancelled() {
            return Err(ToolError::Cancelled);
        }
        let chunks = match state {
            None => return Err(ToolError::NotFound(format!("file with the id {id:?}"))),
            Some(TextState::Pending) => {
                return Ok(format!(
                    "{}: its text is still being read; try again in a moment.",
                    file.name
                ));
            }
            Some(TextState::Failed(note)) => {
                return Ok(format!("{}: its text could not be read: {note}", file.name));
            }
            Some(TextState::Ready { chunks, .. }) => chunks,
        };
        let pages = chunks.div_ceil(PAGE_CHUNKS).max(1);
        if page > pages {
            return Err(ToolError::Arguments(format!(
                "{} has {pages} page{} of text",
                file.name,
                if pages == 1 { "" } else { "s" }
            )));
        }
        let read = store
            .chunks(owner, id, (page - 1) * PAGE_CHUNKS, PAGE_CHUNKS)
            .map_err(ToolError::Store)?;
        let text: Vec<String> = read
            .iter()
            .map(|chunk| format!("[{}]\n{}", chunk.label, chunk.text))
            .collect();
        let more = if page < pages {
            format!(" Call read_file with page {} for more.", page + 1)
        } else {
            String::new()
        };
        Ok(format!(
            "{}, page {page} of {pages}.{more}\n\n{}",
            file.name,
            text.join("\n\n")
        ))
    }
}
