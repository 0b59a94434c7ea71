//! The export and import routes of the conversation API (PROTOCOL.md section 10):
//! `GET /api/conversations/{id}/export` writes one of the caller's conversations in Sparky's
//! format (`conversation::porting::sparky`), every turn of every branch with its events, read
//! from the store a page at a time as the events API reads them, and bounded as a whole by
//! [`MAX_IMPORT_BYTES`] so that what is exported can be imported again; `POST /api/import`
//! reads a Sparky, ChatGPT or Claude export and stores it as new conversations of the caller.
//!
//! An import's body is read only once the caller's token is checked and its declared length is
//! within [`MAX_IMPORT_BYTES`] (`413` past it), and only while no other import runs (`429`
//! then). Every conversation in it is read and checked before anything is stored; then all of
//! them are stored in one transaction. One that cannot be read fails the whole import with a
//! `400` that names it and says why.
//!
//! Depends on: `common::auth`, `common::error`, `common::protocol`, `conversation::porting`, `conversation::session`, `net::file_response`, `net::http`, `net::routes`, `store`.

use std::io::{self, Read, Write};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::common::auth::Principal;
use crate::common::error::Error;
use crate::common::protocol::SessionId;
use crate::conversation::porting::sparky::{Export, ExportFile, ExportTurn, FORMAT, VERSION};
use crate::conversation::porting::{self, MAX_IMPORT_BYTES};
use crate::conversation::session::ImportRefusal;
use crate::net::file_response::content_disposition;
use crate::net::http::{Body, Framing, RequestBody, Response, StreamBody, Streamed};
use crate::net::routes::RouteContext;
use crate::store::PageSize;

/// Events read from the store per page while a turn is exported.
const EXPORT_PAGE: usize = 1_000;

/// Bytes of event bodies read from the store per page (as the events API reads them).
const PAGE_BYTES: usize = 4 << 20;

/// Why an export or import was not made: `api.rs` writes the answer.
#[derive(Debug)]
pub enum Failure {
    /// The conversation is not the caller's (`404`).
    NotFound,
    /// The store failed (`503`, or `507` when full).
    Store(Error),
    /// Refused with this status, reason phrase and message.
    Refused(u16, &'static str, String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

/// A refusal.
fn refused(status: u16, reason: &'static str, message: impl Into<String>) -> Failure {
    Failure::Refused(status, reason, message.into())
}

/// An RFC 3339 UTC time for unix seconds.
fn rfc3339(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The `seq` of an event body.
#[derive(Deserialize)]
struct Seq {
    seq: u64,
}

/// The answer to an import.
#[derive(Serialize)]
struct ImportedJson {
    imported: Vec<String>,
}

/// A document already written, handed to the socket as it is.
#[derive(Debug)]
struct Document(String);

impl StreamBody for Document {
    fn size(&self) -> usize {
        self.0.len()
    }

    fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(self.0.as_bytes())
    }
}

/// The `413` of an export or import past [`MAX_IMPORT_BYTES`].
fn too_large(what: &str) -> Failure {
    refused(
        413,
        "Content Too Large",
        format!(
            "{what} may be {} MiB at most; nothing was {}",
            MAX_IMPORT_BYTES >> 20,
            if what.starts_with("an import") {
                "imported"
            } else {
                "exported"
            }
        ),
    )
}

/// `GET /api/conversations/{id}/export`: the whole conversation as a download.
///
/// # Errors
///
/// [`Failure`]: the conversation is not the caller's, the store failed, or the export would
/// pass [`MAX_IMPORT_BYTES`].
pub fn export(
    ctx: &RouteContext,
    principal: &Principal,
    id: &SessionId,
) -> Result<Response, Failure> {
    let id = id.clone();
    let conversation = ctx
        .sessions
        .conversation(principal, &id)?
        .ok_or(Failure::NotFound)?;
    let page = ctx
        .sessions
        .turns(principal, &id)?
        .ok_or(Failure::NotFound)?;
    let persona = ctx
        .store
        .load(&id, 0, 0)?
        .and_then(|stored| stored.personality);
    let files = ctx
        .files
        .store()
        .list_files(principal.as_str(), Some(&id))?;
    let mut bytes = 0usize;
    let mut turns = Vec::with_capacity(page.turns.len());
    for turn in page.turns {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let size = PageSize {
                limit: EXPORT_PAGE,
                max_bytes: PAGE_BYTES,
            };
            let bodies = ctx
                .sessions
                .turn_events(principal, &id, turn.turn_id, after, size)?
                .unwrap_or_default();
            if bodies.is_empty() {
                break;
            }
            for body in bodies {
                let Ok(Seq { seq }) = serde_json::from_str::<Seq>(&body) else {
                    // A damaged row cannot be paged past by its seq: the turn ends here.
                    after = u64::MAX;
                    continue;
                };
                after = after.max(seq);
                bytes += body.len();
                if bytes > MAX_IMPORT_BYTES {
                    return Err(too_large("an export"));
                }
                if let Ok(raw) = RawValue::from_string(body) {
                    events.push(raw);
                }
            }
            if after == u64::MAX {
                break;
            }
        }
        bytes += turn.text.len();
        turns.push(ExportTurn {
            turn_id: turn.turn_id,
            parent: turn.parent,
            text: turn.text,
            attachments: turn.attachments,
            created_at: rfc3339(turn.created_at),
            closing: turn.closing.map(|closing| closing.as_str()),
            events,
        });
    }
    if bytes > MAX_IMPORT_BYTES {
        return Err(too_large("an export"));
    }
    let summary = conversation.summary;
    let title = summary.title.clone();
    let document = Export {
        format: FORMAT,
        version: VERSION,
        id: summary.id.as_str().to_owned(),
        title: summary.title,
        created_at: rfc3339(summary.created_at),
        updated_at: rfc3339(summary.updated_at),
        model: conversation.model,
        persona,
        leaf: page.leaf,
        turns,
        files: files
            .into_iter()
            .map(|file| ExportFile {
                id: file.id,
                name: file.name,
                content_type: file.content_type,
                size: file.size,
            })
            .collect(),
    };
    let text = serde_json::to_string(&document)
        .map_err(|e| refused(400, "Bad Request", format!("cannot be exported: {e}")))?;
    let name = format!(
        "{}.json",
        title
            .filter(|title| !title.trim().is_empty())
            .unwrap_or_else(|| format!("conversation-{}", summary.id.short()))
    );
    Ok(Response {
        body: Body::Stream(Box::new(Streamed {
            content_type: "application/json".to_owned(),
            headers: vec![("Content-Disposition", content_disposition(&name, false))],
            source: Arc::new(Document(text)),
        })),
        ..Response::text(200, "OK", "")
    })
}

/// `POST /api/import`: a Sparky, ChatGPT or Claude export as `upload` (or `body`, read
/// whole); `201` `{"imported": [ids]}`.
///
/// # Errors
///
/// [`Failure`]: another import runs (`429`), the body has no length (`411`), is too large
/// (`413`) or cannot be read (`400`, naming the conversation), the caller would keep too many
/// conversations (`507`), or the store failed. Nothing is then imported.
pub fn import(
    ctx: &RouteContext,
    principal: &Principal,
    body: &[u8],
    upload: Option<&RequestBody<'_>>,
) -> Result<Response, Failure> {
    let Some(slot) = ctx.sessions.import_slot() else {
        return Err(refused(
            429,
            "Too Many Requests",
            "another import is running; try again when it is done",
        ));
    };
    let body = read_body(body, upload)?;
    let conversations = porting::read(&body)
        .map_err(|e| refused(400, "Bad Request", format!("nothing was imported: {e}")))?;
    drop(body);
    let ids = match ctx.sessions.import(&slot, principal, conversations) {
        Ok(ids) => ids,
        Err(ImportRefusal::Quota {
            stored,
            count,
            limit,
        }) => {
            return Err(refused(
                507,
                "Insufficient Storage",
                format!(
                    "nothing was imported: you have {stored} conversations, and {count} more \
                     would pass the {limit} you may keep (deleting conversations makes room)"
                ),
            ));
        }
        Err(ImportRefusal::Store(e)) => return Err(Failure::Store(e)),
    };
    let answer = ImportedJson {
        imported: ids.iter().map(|id| id.as_str().to_owned()).collect(),
    };
    let text = serde_json::to_string(&answer).unwrap_or_else(|_| "{}".into());
    Ok(Response {
        content_type: "application/json",
        ..Response::text(201, "Created", &text)
    })
}

/// The body of an import, read whole: `411` without a length, `413` past [`MAX_IMPORT_BYTES`]
/// (checked before a byte is read), `400` when it ends early.
fn read_body(body: &[u8], upload: Option<&RequestBody<'_>>) -> Result<Vec<u8>, Failure> {
    let Some(upload) = upload else {
        if body.len() > MAX_IMPORT_BYTES {
            return Err(too_large("an import"));
        }
        return Ok(body.to_vec());
    };
    let length = match upload.framing() {
        Framing::Length(length) => length,
        Framing::Encoded => {
            return Err(refused(
                411,
                "Length Required",
                "send the export with a Content-Length: a Transfer-Encoding (chunked) is not read \
                 here",
            ));
        }
        Framing::None => {
            return Err(refused(
                400,
                "Bad Request",
                "send the export's JSON as the body, with a Content-Length",
            ));
        }
    };
    if length > MAX_IMPORT_BYTES as u64 {
        return Err(too_large("an import"));
    }
    let mut body = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    let mut stream: &RequestBody<'_> = upload;
    match stream.read_to_end(&mut body) {
        Ok(_) if body.len() as u64 == length => Ok(body),
        _ => Err(refused(
            400,
            "Bad Request",
            "the body ended before its Content-Length; nothing was imported",
        )),
    }
}
