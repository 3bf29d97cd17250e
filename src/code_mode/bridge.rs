//! The tool bridge: every `tools.<server>.<tool>(args)` call of a program passes through here.
//!
//! The bridge enforces the per-run budgets that concern tools: the number of calls, calls in
//! flight, the per-call timeout (never longer than the run time left) and the characters of results
//! a run may receive. It keeps one [`CallReport`] per call for the run report and the audit. The
//! bridge lives in the gateway process in both execution modes, so a program in a child process
//! never has MCP connections or secrets. Its calls arrive here over the pipe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::mcp::{McpError, McpHub, ToolInfo, ToolOutput, truncate_chars};

/// Runs tool calls for the bridge: the MCP hub, or a test double.
#[async_trait]
pub trait ToolInvoker: Send + Sync {
    async fn invoke(
        &self,
        server: &str,
        tool: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<ToolOutput, McpError>;
}

#[async_trait]
impl ToolInvoker for McpHub {
    async fn invoke(
        &self,
        server: &str,
        tool: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<ToolOutput, McpError> {
        self.call(server, tool, arguments, timeout).await
    }
}

/// The budgets of one run that the bridge enforces.
#[derive(Debug, Clone, Copy)]
pub struct BridgeLimits {
    pub max_calls: u32,
    pub max_parallel: u32,
    pub max_call_timeout: Duration,
    pub max_result_chars: usize,
    /// A shadow run: the classic loop calls the tools again, so only tools that are safe to
    /// repeat may run.
    pub shadow: bool,
}

/// One tool call of a program, as reported to the model and kept in the audit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallReport {
    pub server: String,
    pub tool: String,
    pub arguments: Value,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The call hit its timeout: `max_call_timeout_ms`, or the run time left if that was shorter.
    pub timed_out: bool,
    /// The call was sent to the tool server; rejected calls and calls still waiting for a slot
    /// when the run ended were not.
    pub executed: bool,
    pub elapsed_ms: u64,
    /// The result was cut to fit the run's `max_result_chars` budget.
    pub truncated: bool,
    /// The call had not returned when the run ended.
    #[serde(skip)]
    pub pending: bool,
    /// The result as text, for handing a completed call to the classic loop after a fallback.
    #[serde(skip)]
    pub output: Option<String>,
    /// The tool ran and reported `isError: true`.
    #[serde(skip)]
    pub tool_error: bool,
}

/// A budget the program ran past; the run fails with it even if the program caught the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BridgeBudget {
    MaxCalls,
}

struct BridgeState {
    requested: u32,
    /// Calls past [`MAX_REJECTED_RECORDS`] rejections that were refused without a record.
    unrecorded: u64,
    result_chars_left: usize,
    calls: Vec<CallReport>,
    exceeded: Option<BridgeBudget>,
}

/// Rejected calls recorded per run. A program can loop on calls that are rejected at once, so
/// without a cap its records would grow without bound and flood the report, the reply and the
/// store; later rejections are only counted.
const MAX_REJECTED_RECORDS: usize = 16;
/// Characters of a call's arguments kept in its record; the tool itself gets them whole.
const MAX_RECORDED_ARGUMENT_CHARS: usize = 2_000;

/// The bridge of one run.
pub struct Bridge {
    invoker: Arc<dyn ToolInvoker>,
    tools: Vec<ToolInfo>,
    limits: BridgeLimits,
    deadline: Instant,
    slots: Semaphore,
    state: Mutex<BridgeState>,
}

/// The calls and exceeded budget of a finished run.
#[derive(Debug, Clone, Default)]
pub struct BridgeSummary {
    pub calls: Vec<CallReport>,
    pub exceeded: Option<BridgeBudget>,
}

impl Bridge {
    /// `tools[i]` is what binding `i` of the program's declarations calls.
    pub fn new(
        invoker: Arc<dyn ToolInvoker>,
        tools: Vec<ToolInfo>,
        limits: BridgeLimits,
        deadline: Instant,
    ) -> Self {
        Self {
            invoker,
            tools,
            slots: Semaphore::new(limits.max_parallel.max(1) as usize),
            state: Mutex::new(BridgeState {
                requested: 0,
                unrecorded: 0,
                result_chars_left: limits.max_result_chars,
                calls: Vec::new(),
                exceeded: None,
            }),
            limits,
            deadline,
        }
    }

    /// Runs one call and returns the JSON envelope the sandbox expects:
    /// `{"ok":true,"value":…}` or `{"ok":false,"error":"…"}`.
    pub async fn call_json(&self, index: usize, arguments_json: &str) -> String {
        let envelope = match self.call(index, arguments_json).await {
            Ok(value) => json!({ "ok": true, "value": value }),
            Err(error) => json!({ "ok": false, "error": error }),
        };
        envelope.to_string()
    }

    /// Runs one call; the error is the message of the `Error` the program's promise rejects with.
    pub async fn call(&self, index: usize, arguments_json: &str) -> Result<Value, String> {
        let Some(tool) = self.tools.get(index) else {
            return Err(format!("no tool has binding {index}"));
        };
        let arguments = serde_json::from_str::<Value>(arguments_json).unwrap_or(Value::Null);
        let slot = self.start(tool, &arguments)?;
        let Ok(_permit) = self.slots.acquire().await else {
            return Err("the run is over".to_owned());
        };
        self.state.lock().expect("bridge state lock").calls[slot].executed = true;
        let timeout = self
            .limits
            .max_call_timeout
            .min(self.deadline.saturating_duration_since(Instant::now()));
        let started = Instant::now();
        let result = tokio::time::timeout(
            timeout,
            self.invoker
                .invoke(&tool.server, &tool.name, arguments, timeout),
        )
        .await;
        let elapsed = started.elapsed();
        self.settle(slot, tool, result, timeout, elapsed)
    }

    /// Checks the call before it runs and records it; returns its index in the call list.
    fn start(&self, tool: &ToolInfo, arguments: &Value) -> Result<usize, String> {
        let mut state = self.state.lock().expect("bridge state lock");
        state.requested = state.requested.saturating_add(1);
        if let Some(message) = self.rejection(&state, tool, arguments) {
            if state.requested > self.limits.max_calls {
                state.exceeded = Some(BridgeBudget::MaxCalls);
            }
            let rejected = state
                .calls
                .iter()
                .filter(|c| !c.executed && !c.pending)
                .count();
            if rejected >= MAX_REJECTED_RECORDS {
                state.unrecorded += 1;
                return Err(message);
            }
            let mut report = Self::record(tool, arguments);
            report.error = Some(message.clone());
            state.calls.push(report);
            return Err(message);
        }
        let mut report = Self::record(tool, arguments);
        report.pending = true;
        state.calls.push(report);
        Ok(state.calls.len() - 1)
    }

    fn record(tool: &ToolInfo, arguments: &Value) -> CallReport {
        let text = arguments.to_string();
        let arguments = if text.chars().count() > MAX_RECORDED_ARGUMENT_CHARS {
            Value::String(truncate_chars(&text, MAX_RECORDED_ARGUMENT_CHARS).text)
        } else {
            arguments.clone()
        };
        CallReport {
            server: tool.server.clone(),
            tool: tool.name.clone(),
            arguments,
            ok: false,
            error: None,
            timed_out: false,
            executed: false,
            elapsed_ms: 0,
            truncated: false,
            pending: false,
            output: None,
            tool_error: false,
        }
    }

    fn rejection(&self, state: &BridgeState, tool: &ToolInfo, arguments: &Value) -> Option<String> {
        let name = format!("{}.{}", tool.server, tool.name);
        if state.requested > self.limits.max_calls {
            return Some(format!(
                "{name} was not called: this run may make at most {} tool calls (max_calls)",
                self.limits.max_calls
            ));
        }
        if self.limits.shadow && !super::policy::repeat_safe(tool) {
            return Some(format!(
                "{name} was not called: shadow runs call only tools marked read-only or idempotent"
            ));
        }
        if !arguments.is_object() {
            return Some(format!(
                "{name} was not called: its argument must be an object, not {}",
                crate::mcp::json_kind(arguments)
            ));
        }
        tool.check_arguments(arguments)
            .err()
            .map(|problems| format!("{name} was not called: invalid arguments: {problems}"))
    }

    fn settle(
        &self,
        slot: usize,
        tool: &ToolInfo,
        result: Result<Result<ToolOutput, McpError>, tokio::time::error::Elapsed>,
        timeout: Duration,
        elapsed: Duration,
    ) -> Result<Value, String> {
        let name = format!("{}.{}", tool.server, tool.name);
        let mut state = self.state.lock().expect("bridge state lock");
        let outcome = match result {
            Err(_) | Ok(Err(McpError::Timeout(_))) => {
                state.calls[slot].timed_out = true;
                Err(format!("{name} timed out after {} ms", timeout.as_millis()))
            }
            Ok(Err(err)) => Err(format!("{name} failed: {err}")),
            Ok(Ok(output)) if output.is_error => {
                state.calls[slot].tool_error = true;
                Err(format!(
                    "{name} reported an error: {}",
                    truncate_chars(&output.text, 1_000).text
                ))
            }
            Ok(Ok(output)) => Ok(Self::take_result(&mut state, slot, output)),
        };
        let report = &mut state.calls[slot];
        report.pending = false;
        report.elapsed_ms = elapsed.as_millis() as u64;
        report.ok = outcome.is_ok();
        report.error = outcome.as_ref().err().cloned();
        outcome
    }

    /// Charges a result to the shared result budget and returns the value the program gets. A
    /// result that does not fit arrives as a string cut on a character boundary, with a marker.
    fn take_result(state: &mut BridgeState, slot: usize, output: ToolOutput) -> Value {
        let chars = output.text.chars().count();
        if chars <= state.result_chars_left {
            state.result_chars_left -= chars;
            state.calls[slot].output = Some(output.text.clone());
            return output.structured.unwrap_or(Value::String(output.text));
        }
        let cut = truncate_chars(&output.text, state.result_chars_left);
        state.result_chars_left = 0;
        state.calls[slot].truncated = true;
        state.calls[slot].output = Some(cut.text.clone());
        Value::String(cut.text)
    }

    /// The calls of the run. A call still pending when the run ended timed out if the run ran out
    /// of time (its timeout was the time left); otherwise the program did not wait for it.
    pub fn finish(&self, run_timed_out: bool) -> BridgeSummary {
        self.slots.close();
        let mut state = self.state.lock().expect("bridge state lock");
        for report in state.calls.iter_mut().filter(|c| c.pending) {
            report.pending = false;
            report.timed_out = run_timed_out;
            report.error = Some(if run_timed_out {
                "the run's time ran out before the call returned".to_owned()
            } else {
                "the program returned without waiting for this call".to_owned()
            });
        }
        if state.unrecorded > 0 {
            tracing::info!(
                unrecorded = state.unrecorded,
                "Program kept calling tools after rejections; the extra calls were not recorded"
            );
        }
        BridgeSummary {
            calls: state.calls.clone(),
            exceeded: state.exceeded,
        }
    }
}
