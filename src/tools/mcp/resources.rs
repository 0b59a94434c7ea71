//! `mcp_read_resource`: the built-in tool that reads a resource (`resources/read`) from any
//! connected server that declares the resources capability, so that the resource links and
//! URIs tools return lead somewhere. The catalog offers it while at least one such server is
//! up.
//!
//! Depends on: `common::cancel`, `tools`, `tools::error`, `tools::mcp::error`.

use serde_json::{Value, json};

use super::error::McpError;
use crate::common::cancel::CancelFlag;
use crate::tools::error::ToolError;
use crate::tools::{Tool, ToolContext};

/// The tool's name in the ToolChain. Server tools are always `<server>__<tool>`, so it cannot
/// clash with one.
pub const READ_RESOURCE_TOOL: &str = "mcp_read_resource";

/// Reads one resource (by URI) from a server, within the server's timeout, or `None` once the
/// server is gone. The supervisor makes one per server, so that this tool needs to know nothing
/// of servers.
pub(super) type Reader =
    Box<dyn Fn(&str, &CancelFlag) -> Option<Result<String, McpError>> + Send + Sync>;

/// Reads a resource from one of the servers that offer resources.
pub(super) struct ResourceTool {
    /// The servers that declared resources, by name, in name order.
    servers: Vec<(String, Reader)>,
    description: String,
}

impl ResourceTool {
    /// The tool over `servers` (those that declared the resources capability).
    pub(super) fn new(servers: Vec<(String, Reader)>) -> Self {
        let names: Vec<&str> = servers.iter().map(|(name, _)| name.as_str()).collect();
        let description = format!(
            "Read a resource (a file, a document, a record) from an MCP server by its URI, as \
             tools' resource links give it. Servers with resources: {}.",
            names.join(", ")
        );
        ResourceTool {
            servers,
            description,
        }
    }
}

impl Tool for ResourceTool {
    fn name(&self) -> &str {
        READ_RESOURCE_TOOL
    }

    fn description(&self) -> &str {
        &self.description
    }

    fn parameters(&self) -> Value {
        let names: Vec<&str> = self.servers.iter().map(|(name, _)| name.as_str()).collect();
        json!({
            "type": "object",
            "properties": {
                "server": {"type": "string", "enum": names,
                           "description": "The MCP server that has the resource."},
                "uri": {"type": "string", "description": "The resource's URI."}
            },
            "required": ["server", "uri"]
        })
    }

    fn call(&self, args: &Value, ctx: &ToolContext<'_>) -> Result<String, ToolError> {
        let field = |key: &str| {
            args.get(key)
                .and_then(Value::as_str)
                .filter(|value| !value.trim().is_empty())
                .ok_or_else(|| {
                    ToolError::Arguments(format!("{READ_RESOURCE_TOOL} needs a \"{key}\" string"))
                })
        };
        let (name, uri) = (field("server")?, field("uri")?);
        let read = self
            .servers
            .iter()
            .find(|(known, _)| known == name)
            .and_then(|(_, read)| read(uri, ctx.cancel));
        match read {
            Some(text) => Ok(text?),
            None => {
                let names: Vec<&str> = self.servers.iter().map(|(n, _)| n.as_str()).collect();
                Err(ToolError::Arguments(format!(
                    "no MCP server {name:?} offers resources; these do: {}",
                    names.join(", ")
                )))
            }
        }
    }
}
