//! The capability policy: which tools code mode may expose, and which a shadow run may call.
//!
//! A tool's capabilities come from its MCP annotations unless the server's `capabilities` setting
//! replaces them. `openWorldHint` means network access, and it is true when absent, which is the
//! MCP specification's default. A tool that needs a capability the operator did not allow is left out of the
//! declarations entirely, so a program cannot even name it.

use std::collections::BTreeSet;

use crate::config::{Capability, CodeModeConfig, McpConfig};
use crate::mcp::ToolInfo;

/// Returns the capabilities `tool` needs.
pub fn capabilities(tool: &ToolInfo, mcp: &McpConfig) -> BTreeSet<Capability> {
    let configured = mcp
        .servers
        .get(&tool.server)
        .and_then(|server| server.capabilities.as_ref());
    if let Some(list) = configured {
        return list.iter().copied().collect();
    }
    let mut needed = BTreeSet::new();
    if tool.annotations.open_world.unwrap_or(true) {
        needed.insert(Capability::Network);
    }
    needed
}

/// Returns whether the settings grant every capability `tool` needs.
pub fn allowed(tool: &ToolInfo, mcp: &McpConfig, settings: &CodeModeConfig) -> bool {
    capabilities(tool, mcp)
        .iter()
        .all(|capability| match capability {
            Capability::Network => settings.allow_network,
            Capability::Filesystem => settings.allow_filesystem,
            Capability::Env => settings.allow_env,
        })
}

/// Returns whether calling `tool` twice is harmless, because the classic loop repeats the calls
/// of a shadow run.
pub fn repeat_safe(tool: &ToolInfo) -> bool {
    tool.annotations.read_only == Some(true) || tool.annotations.idempotent == Some(true)
}
