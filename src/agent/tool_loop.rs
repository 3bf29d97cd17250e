//! The classic tool loop: native function calling, bounded by `max_tool_iterations`.
//!
//! Each model request offers the tools. The tool calls of one assistant message run concurrently,
//! at most `max_parallel_tool_calls` at a time, and their results go back as `tool` messages.
//! Calls that cannot be run (unknown tool, arguments that are not JSON or fail the input schema)
//! are not executed: the model gets a tool message naming the problem so it can correct itself.
//! After the last iteration one request without tools asks for the answer.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::catalog::ToolCatalog;
use crate::mcp::{McpHub, truncate_chars};
use crate::provider::wire::{ChatMessage, Role, ToolArguments, ToolCall};

/// The outcome of a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallStatus {
    /// The tool ran and succeeded.
    Ok,
    /// The tool ran and reported `isError: true`.
    ToolError,
    /// The call was sent but failed: timeout, server exit, JSON-RPC error, server unavailable.
    Failed,
    /// The call was not sent: unknown tool, invalid arguments, or no time left.
    Rejected,
}

/// One tool call of a turn, as stored and returned to the client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallRecord {
    /// The function name the model used.
    pub name: String,
    pub server: Option<String>,
    pub tool: Option<String>,
    pub arguments: Value,
    pub status: ToolCallStatus,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Whether the result given to the model was cut to `max_tool_result_chars`.
    pub truncated: bool,
    pub origin: ToolCallOrigin,
}

/// What made a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolCallOrigin {
    /// The model, through native function calling.
    ToolLoop,
    /// A code-mode program.
    CodeMode,
}

impl ToolCallRecord {
    pub fn ok(&self) -> bool {
        self.status == ToolCallStatus::Ok
    }
}

/// The result of one call: its record and the content sent back to the model.
pub struct CallResult {
    pub record: ToolCallRecord,
    pub content: String,
}

/// Settings of the loop.
#[derive(Debug, Clone, Copy)]
pub struct LoopLimits {
    pub max_iterations: u32,
    pub max_parallel: usize,
    pub max_result_chars: usize,
}

/// Runs the tool calls of one assistant message and returns results in the calls' order.
pub async fn execute_calls(
    hub: &Arc<McpHub>,
    catalog: &ToolCatalog,
    calls: &[ToolCall],
    finish_reason: Option<&str>,
    limits: LoopLimits,
    deadline: Instant,
) -> Vec<CallResult> {
    let slots = tokio::sync::Semaphore::new(limits.max_parallel.max(1));
    let mut runs = Vec::with_capacity(calls.len());
    for call in calls {
        let slots = &slots;
        runs.push(async move {
            let _slot = slots
                .acquire()
                .await
                .expect("the semaphore is never closed");
            execute_call(hub, catalog, call, finish_reason, limits, deadline).await
        });
    }
    futures_util::future::join_all(runs).await
}

async fn execute_call(
    hub: &Arc<McpHub>,
    catalog: &ToolCatalog,
    call: &ToolCall,
    finish_reason: Option<&str>,
    limits: LoopLimits,
    deadline: Instant,
) -> CallResult {
    let started = Instant::now();
    let name = call.function.name.clone();
    let mut record = ToolCallRecord {
        name: name.clone(),
        server: None,
        tool: None,
        arguments: arguments_for_record(&call.function.arguments),
        status: ToolCallStatus::Rejected,
        error: None,
        duration_ms: 0,
        truncated: false,
        origin: ToolCallOrigin::ToolLoop,
    };
    let prepared = prepare(catalog, call, finish_reason);
    let (tool, arguments) = match prepared {
        Ok(prepared) => prepared,
        Err(problem) => return rejected(record, problem),
    };
    record.server = Some(tool.server.clone());
    record.tool = Some(tool.name.clone());
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining < Duration::from_millis(1) {
        return rejected(
            record,
            "the turn's deadline was reached before the call".to_owned(),
        );
    }
    let result = hub
        .call(&tool.server, &tool.name, arguments, remaining)
        .await;
    record.duration_ms = started.elapsed().as_millis() as u64;
    let content = match result {
        Ok(output) => {
            let cut = truncate_chars(&output.text, limits.max_result_chars);
            record.truncated = cut.truncated;
            if output.is_error {
                record.status = ToolCallStatus::ToolError;
                record.error = Some(first_chars(&output.text, 500));
                format!("The tool reported an error: {}", cut.text)
            } else {
                record.status = ToolCallStatus::Ok;
                cut.text
            }
        }
        Err(err) => {
            record.status = ToolCallStatus::Failed;
            record.error = Some(err.to_string());
            format!("The tool call failed: {err}")
        }
    };
    tracing::info!(
        tool = %name,
        status = ?record.status,
        duration_ms = record.duration_ms,
        truncated = record.truncated,
        "Tool call finished"
    );
    CallResult { record, content }
}

/// Finds the tool and checks the arguments; the error is the message for the model.
fn prepare<'a>(
    catalog: &'a ToolCatalog,
    call: &ToolCall,
    finish_reason: Option<&str>,
) -> Result<(&'a crate::mcp::ToolInfo, Value), String> {
    let name = &call.function.name;
    let Some(tool) = catalog.lookup(name) else {
        let available: Vec<&str> = catalog.names().collect();
        return Err(format!(
            "Unknown tool `{name}`. Available tools: {}.",
            available.join(", ")
        ));
    };
    let arguments = match &call.function.arguments {
        ToolArguments::Json(Value::Object(map)) => Value::Object(map.clone()),
        ToolArguments::Json(Value::Null) => Value::Object(Default::default()),
        ToolArguments::Json(other) => {
            return Err(format!(
                "The arguments of `{name}` must be a JSON object, not {}.",
                crate::mcp::json_kind(other)
            ));
        }
        ToolArguments::Invalid(text) => {
            let cut_off = if finish_reason == Some("length") {
                " The reply was cut off by the token limit (finish_reason = length); send shorter arguments."
            } else {
                ""
            };
            return Err(format!(
                "The arguments of `{name}` are not valid JSON: {}.{cut_off}",
                first_chars(text, 200)
            ));
        }
    };
    tool.check_arguments(&arguments).map_err(|problems| {
        format!("The arguments of `{name}` do not match its input schema: {problems}. Fix them and call again.")
    })?;
    Ok((tool, arguments))
}

fn rejected(mut record: ToolCallRecord, problem: String) -> CallResult {
    tracing::info!(tool = %record.name, problem = %problem, "Tool call rejected before execution");
    record.status = ToolCallStatus::Rejected;
    record.error = Some(problem.clone());
    CallResult {
        record,
        content: problem,
    }
}

fn arguments_for_record(arguments: &ToolArguments) -> Value {
    match arguments {
        ToolArguments::Json(value) => value.clone(),
        ToolArguments::Invalid(text) => Value::String(first_chars(text, 2_000)),
    }
}

fn first_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}

/// The assistant message that carries tool calls, with ids filled in where the model left
/// them empty (each `tool` message must name the id of the call it replies to).
pub fn assistant_with_calls(content: &str, calls: &mut [ToolCall], iteration: u32) -> ChatMessage {
    let mut seen = std::collections::HashSet::new();
    for (index, call) in calls.iter_mut().enumerate() {
        // Each `tool` message names the call it replies to, so ids must be present and distinct.
        if call.id.is_empty() || !seen.insert(call.id.clone()) {
            call.id = format!("call_{iteration}_{index}");
            seen.insert(call.id.clone());
        }
    }
    ChatMessage {
        role: Role::Assistant,
        content: (!content.is_empty()).then(|| content.to_owned()),
        tool_calls: calls.to_vec(),
        tool_call_id: None,
    }
}

pub fn tool_message(call_id: &str, content: String) -> ChatMessage {
    ChatMessage {
        role: Role::Tool,
        content: Some(content),
        tool_calls: Vec::new(),
        tool_call_id: Some(call_id.to_owned()),
    }
}
