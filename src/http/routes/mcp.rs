//! Admin routes over the MCP servers: states, tool catalog, and direct tool calls.
//!
//! They can run any configured tool, so they exist only when `channels.http.api_bearer_token` is
//! set (the router answers 404 otherwise) and sit behind the same token check as the API.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::Value;

use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::mcp::{McpError, ServerStatus, ToolInfo, ToolOutput};

#[derive(Serialize)]
pub struct Servers {
    servers: Vec<ServerStatus>,
}

#[derive(Serialize)]
pub struct Tools {
    tools: Vec<ToolInfo>,
}

#[derive(Serialize)]
pub struct CallResponse {
    server: String,
    tool: String,
    duration_ms: u64,
    #[serde(flatten)]
    output: ToolOutput,
}

pub async fn servers(State(state): State<AppState>) -> Json<Servers> {
    Json(Servers {
        servers: state.agent.hub().statuses(),
    })
}

pub async fn tools(State(state): State<AppState>) -> Json<Tools> {
    Json(Tools {
        tools: state.agent.hub().tools(),
    })
}

/// Calls a tool with the JSON object in the body as its arguments (an empty body means `{}`).
pub async fn call(
    State(state): State<AppState>,
    Path((server, tool)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<CallResponse>, ApiError> {
    let hub = state.agent.hub();
    if hub.server(&server).is_none() {
        return Err(ApiError::NotFound(format!(
            "unknown MCP server `{server}`; GET /v1/mcp/servers lists the configured ones"
        )));
    }
    let info = hub
        .tools()
        .into_iter()
        .find(|t| t.server == server && t.name == tool)
        .ok_or_else(|| ApiError::NotFound(format!("no tool `{tool}` on MCP server `{server}`")))?;
    let arguments = parse_arguments(&state, &headers, body).await?;
    info.check_arguments(&arguments).map_err(|problems| {
        ApiError::field(
            "arguments",
            format!("arguments do not match the input schema: {problems}"),
        )
    })?;
    let started = Instant::now();
    let timeout = state.agent.turn_timeout();
    let output = hub
        .call(&server, &tool, arguments, timeout)
        .await
        .map_err(|err| match err {
            McpError::UnknownServer(_) | McpError::UnknownTool { .. } => {
                ApiError::NotFound(err.to_string())
            }
            other => ApiError::Tool(other),
        })?;
    let duration_ms = started.elapsed().as_millis() as u64;
    Ok(Json(CallResponse {
        server,
        tool,
        duration_ms,
        output,
    }))
}

async fn parse_arguments(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ApiError> {
    let bytes = super::read_body(state, headers, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    super::check_content_type(headers)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(ApiError::InvalidBody(
            "the body must be a JSON object of arguments".into(),
        )),
        Err(err) => Err(ApiError::InvalidBody(format!(
            "request body is not valid JSON: {err}"
        ))),
    }
}
