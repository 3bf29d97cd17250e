//! The tools offered to the model in one turn, under names every provider accepts.
//!
//! OpenAI-compatible servers require function names matching `^[A-Za-z0-9_-]{1,64}$`, so each MCP
//! tool is offered as `server__tool` with other characters replaced by `_`, and names longer than
//! 64 characters shortened with a hash suffix. The mapping is deterministic for a given tool list,
//! and [`ToolCatalog::lookup`] maps a name the model sends back to its server and tool.

use std::collections::HashMap;

use serde_json::json;

use crate::mcp::ToolInfo;
use crate::provider::wire::{FunctionSpec, ToolSpec};

const MAX_FUNCTION_NAME: usize = 64;

pub struct ToolCatalog {
    entries: Vec<(String, ToolInfo)>,
    by_name: HashMap<String, usize>,
}

impl ToolCatalog {
    /// Builds the catalog from tools sorted by server and name.
    pub fn new(tools: Vec<ToolInfo>) -> Self {
        let mut entries = Vec::with_capacity(tools.len());
        let mut by_name = HashMap::with_capacity(tools.len());
        for tool in tools {
            let base = function_name(&tool.server, &tool.name);
            let mut name = base.clone();
            let mut suffix = 2;
            while by_name.contains_key(&name) {
                name = with_suffix(&base, &format!("_{suffix}"));
                suffix += 1;
            }
            by_name.insert(name.clone(), entries.len());
            entries.push((name, tool));
        }
        Self { entries, by_name }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn lookup(&self, function_name: &str) -> Option<&ToolInfo> {
        self.by_name
            .get(function_name)
            .map(|&index| &self.entries[index].1)
    }

    /// The function name under which `server`'s `tool` is offered.
    pub fn function_name_of(&self, server: &str, tool: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, info)| info.server == server && info.name == tool)
            .map(|(name, _)| name.as_str())
    }

    /// Every tool in the catalog, ordered by server and name.
    pub fn tools(&self) -> Vec<ToolInfo> {
        self.entries.iter().map(|(_, tool)| tool.clone()).collect()
    }

    /// The function names on offer, for telling the model what exists.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(name, _)| name.as_str())
    }

    /// The `tools` array of a chat-completions request.
    pub fn specs(&self) -> Vec<ToolSpec> {
        self.entries
            .iter()
            .map(|(name, tool)| ToolSpec {
                kind: "function",
                function: FunctionSpec {
                    name: name.clone(),
                    description: tool.description.clone(),
                    parameters: parameters(&tool.input_schema),
                },
            })
            .collect()
    }
}

/// A schema the provider accepts: MCP allows a missing `properties`, OpenAI wants an object.
fn parameters(schema: &serde_json::Value) -> serde_json::Value {
    match schema {
        serde_json::Value::Object(map) if !map.is_empty() => schema.clone(),
        _ => json!({ "type": "object", "properties": {} }),
    }
}

/// `server__tool` with every character outside `[A-Za-z0-9_-]` replaced by `_`.
pub fn function_name(server: &str, tool: &str) -> String {
    let raw = format!("{server}__{tool}");
    let clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= MAX_FUNCTION_NAME {
        return clean;
    }
    with_suffix(&clean, &format!("_{:08x}", fnv1a(&raw)))
}

fn with_suffix(base: &str, suffix: &str) -> String {
    let keep = MAX_FUNCTION_NAME
        .saturating_sub(suffix.len())
        .min(base.len());
    format!("{}{suffix}", &base[..keep])
}

/// 32-bit FNV-1a: a stable hash, unlike `DefaultHasher`, whose output may change between releases.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_provider_safe() {
        assert_eq!(
            function_name("everything", "get-sum"),
            "everything__get-sum"
        );
        assert_eq!(function_name("fs", "read.file v2"), "fs__read_file_v2");
        let long = function_name("server", &"x".repeat(100));
        assert_eq!(long.len(), 64);
        assert_eq!(
            long,
            function_name("server", &"x".repeat(100)),
            "deterministic"
        );
        assert_ne!(long, function_name("server", &"x".repeat(101)));
    }
}
