//! MCP tool servers: connections, tool catalogs, and tool calls.
//!
//! [`McpHub`] owns one [`ServerHandle`] per configured server. All servers connect concurrently
//! at startup; one that fails is reported and retried without affecting the others.

mod connection;
mod output;
mod server;
mod tools;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use output::{ToolOutput, Truncated, truncate_chars};
pub use server::{ServerHandle, ServerPhase, ServerStatus};
pub use tools::{ToolHints, ToolInfo};

use crate::config::McpConfig;

#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("cannot start `{command}`: {source}; check the command and PATH")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("initialize failed: {0}")]
    Initialize(String),
    #[error("server process exited ({0})")]
    Exited(String),
    #[error("server returned JSON-RPC error {code}: {message}")]
    Rpc { code: i32, message: String },
    #[error("connection lost: {0}")]
    Disconnected(String),
    #[error("{0}")]
    Config(String),
    #[error("unknown MCP server `{0}`")]
    UnknownServer(String),
    #[error("server `{server}` has no tool `{tool}`")]
    UnknownTool { server: String, tool: String },
    #[error("server `{server}` is unavailable: {reason}")]
    Unavailable { server: String, reason: String },
}

/// All configured MCP servers.
pub struct McpHub {
    servers: BTreeMap<String, Arc<ServerHandle>>,
    shutdown: CancellationToken,
}

impl McpHub {
    /// Creates a handle per server and starts a supervisor for each enabled one.
    pub fn start(config: &McpConfig) -> Self {
        let shutdown = CancellationToken::new();
        let mut servers = BTreeMap::new();
        for (name, server) in &config.servers {
            let handle = ServerHandle::new(name, server.clone());
            if server.enabled {
                tokio::spawn(handle.clone().supervise(shutdown.clone()));
            }
            servers.insert(name.clone(), handle);
        }
        Self { servers, shutdown }
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn server(&self, name: &str) -> Option<&Arc<ServerHandle>> {
        self.servers.get(name)
    }

    pub fn statuses(&self) -> Vec<ServerStatus> {
        self.servers.values().map(|s| s.status()).collect()
    }

    /// Every tool of every ready server, ordered by server then tool name.
    pub fn tools(&self) -> Vec<ToolInfo> {
        let mut tools: Vec<ToolInfo> = self
            .servers
            .values()
            .flat_map(|s| s.tools().as_ref().clone())
            .collect();
        tools.sort_by(|a, b| (&a.server, &a.name).cmp(&(&b.server, &b.name)));
        tools
    }

    /// Waits until every enabled server is ready or failed, for at most `timeout` in all.
    pub async fn settled(&self, timeout: Duration) {
        let waits = self.servers.values().map(|s| s.settled(timeout));
        futures_util::future::join_all(waits).await;
    }

    /// Calls one tool once, with the server's timeout capped by `max_timeout`.
    pub async fn call(
        &self,
        server: &str,
        tool: &str,
        arguments: Value,
        max_timeout: Duration,
    ) -> Result<ToolOutput, McpError> {
        let handle = self
            .server(server)
            .ok_or_else(|| McpError::UnknownServer(server.into()))?;
        let arguments = match arguments {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(McpError::Config(format!(
                    "tool arguments must be a JSON object, got {}",
                    json_kind(&other)
                )));
            }
        };
        handle
            .call(tool, arguments, handle.timeout().min(max_timeout))
            .await
    }

    /// Stops every supervisor; stdio children are killed when their sessions drop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for McpHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
