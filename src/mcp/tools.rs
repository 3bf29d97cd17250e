//! The tools a server offers, with their schemas and MCP annotations.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

/// MCP tool annotations, kept as the server sent them (absent hints stay `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ToolHints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub idempotent: Option<bool>,
    pub open_world: Option<bool>,
}

/// One tool of one server.
#[derive(Clone, Serialize)]
pub struct ToolInfo {
    pub server: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub input_schema: Value,
    pub annotations: ToolHints,
    /// The compiled input schema; `None` when the server's schema does not compile, in which
    /// case arguments are passed through unchecked.
    #[serde(skip)]
    pub validator: Option<Arc<jsonschema::Validator>>,
}

impl std::fmt::Debug for ToolInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolInfo")
            .field("server", &self.server)
            .field("name", &self.name)
            .finish()
    }
}

impl ToolInfo {
    pub(crate) fn from_mcp(server: &str, tool: rmcp::model::Tool) -> Self {
        let input_schema = Value::Object((*tool.input_schema).clone());
        let validator = match jsonschema::validator_for(&input_schema) {
            Ok(validator) => Some(Arc::new(validator)),
            Err(err) => {
                tracing::warn!(
                    server,
                    tool = %tool.name,
                    error = %err,
                    "Tool input schema does not compile; its arguments will not be checked"
                );
                None
            }
        };
        let annotations = tool.annotations.map(|a| ToolHints {
            title: a.title,
            read_only: a.read_only_hint,
            destructive: a.destructive_hint,
            idempotent: a.idempotent_hint,
            open_world: a.open_world_hint,
        });
        Self {
            server: server.to_owned(),
            name: tool.name.into_owned(),
            description: tool.description.map(|d| d.into_owned()),
            input_schema,
            annotations: annotations.unwrap_or_default(),
            validator,
        }
    }

    /// Checks `arguments` against the input schema; the error lists every violation.
    pub fn check_arguments(&self, arguments: &Value) -> Result<(), String> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let problems: Vec<String> = validator
            .iter_errors(arguments)
            .take(5)
            .map(|error| {
                let path = error.instance_path().to_string();
                let at = if path.is_empty() {
                    "the arguments".to_owned()
                } else {
                    format!("`{path}`")
                };
                format!("{at}: {error}")
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}
