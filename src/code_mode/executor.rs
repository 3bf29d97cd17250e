//! Runs one program against the selected tools and produces the run report.
//!
//! The executor joins the pieces of a run: a [`Bridge`] holding the tool budgets, the engine
//! (in this process or in a child), and the [`RunReport`] that goes back to the model and into the
//! audit. The report the model reads is rendered here too, cut to the result budget.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::audit::FallbackReason;
use super::bridge::{Bridge, BridgeBudget, BridgeLimits, CallReport, ToolInvoker};
use super::declarations::{ApiDeclarations, ToolSource, declare};
use super::sandbox::{CallSink, EngineLimits, ProgramFailure, ProgramRun};
use super::subprocess::EngineCommand;
use crate::config::{CodeModeConfig, ExecutionMode};
use crate::mcp::{ToolInfo, truncate_chars};

/// The tools one turn exposes to code mode, with their declarations.
pub struct Selection {
    pub tools: Vec<ToolInfo>,
    pub declarations: ApiDeclarations,
}

impl Selection {
    /// `tools` must be sorted by server and name, as the hub lists them.
    pub fn new(tools: Vec<ToolInfo>) -> Self {
        let sources: Vec<ToolSource<'_>> = tools
            .iter()
            .map(|tool| ToolSource {
                server: &tool.server,
                tool: &tool.name,
                description: tool.description.as_deref(),
                input_schema: &tool.input_schema,
                output_schema: None,
            })
            .collect();
        let declarations = declare(&sources);
        Self {
            tools,
            declarations,
        }
    }

    fn identifiers(&self) -> Vec<(String, String)> {
        self.declarations
            .bindings
            .iter()
            .map(|binding| (binding.server_ident.clone(), binding.tool_ident.clone()))
            .collect()
    }

    /// Tools in binding order, so that binding `i` calls `tools[i]`.
    fn bound_tools(&self) -> Vec<ToolInfo> {
        self.declarations
            .bindings
            .iter()
            .map(|binding| self.tools[binding.source].clone())
            .collect()
    }
}

/// Everything one program run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub result: Result<Value, ProgramFailure>,
    pub calls: Vec<CallReport>,
    pub console: String,
    pub console_truncated: bool,
    pub elapsed_ms: u64,
    pub exceeded: Option<BridgeBudget>,
}

impl RunReport {
    fn not_started(failure: ProgramFailure) -> Self {
        Self {
            result: Err(failure),
            calls: Vec::new(),
            console: String::new(),
            console_truncated: false,
            elapsed_ms: 0,
            exceeded: None,
        }
    }

    /// Returns why the run cannot serve the reply, or `None` when it can.
    pub fn failure(&self) -> Option<FallbackReason> {
        if self.exceeded == Some(BridgeBudget::MaxCalls) {
            return Some(FallbackReason::MaxCalls);
        }
        let failure = self.result.as_ref().err()?;
        Some(match failure {
            ProgramFailure::Syntax(_) => FallbackReason::SyntaxError,
            ProgramFailure::Thrown(_) => FallbackReason::RuntimeError,
            ProgramFailure::NotJson(_) => FallbackReason::InvalidResult,
            ProgramFailure::Timeout => FallbackReason::Timeout,
            ProgramFailure::OutOfMemory => FallbackReason::OutOfMemory,
            ProgramFailure::StackOverflow => FallbackReason::StackOverflow,
            ProgramFailure::Engine(_) => FallbackReason::SandboxError,
        })
    }

    pub fn executed_calls(&self) -> u32 {
        self.calls.iter().filter(|c| c.executed).count() as u32
    }

    pub fn timed_out_calls(&self) -> u32 {
        self.calls.iter().filter(|c| c.timed_out).count() as u32
    }

    pub fn failed_calls(&self) -> u32 {
        self.calls.iter().filter(|c| !c.ok).count() as u32
    }

    /// Renders the report as the model reads it: JSON, with the value cut to `max_chars`.
    pub fn render(&self, max_chars: usize) -> String {
        let calls: Vec<Value> = self.calls.iter().map(call_summary).collect();
        let mut report = json!({
            "ok": self.failure().is_none(),
            "calls": calls,
            "elapsed_ms": self.elapsed_ms,
        });
        match (&self.result, self.exceeded) {
            (_, Some(BridgeBudget::MaxCalls)) => {
                report["error"] = json!("the program tried more tool calls than max_calls allows");
            }
            (Ok(value), None) => report["value"] = bounded_value(value, max_chars),
            (Err(failure), None) => report["error"] = json!(failure_text(failure)),
        }
        if !self.console.is_empty() {
            report["console"] = json!(truncate_chars(&self.console, max_chars / 4).text);
        }
        report.to_string()
    }
}

fn call_summary(call: &CallReport) -> Value {
    let mut summary = json!({
        "tool": format!("{}.{}", call.server, call.tool),
        "ok": call.ok,
        "elapsed_ms": call.elapsed_ms,
    });
    if let Some(error) = &call.error {
        summary["error"] = json!(truncate_chars(error, 500).text);
    }
    if call.timed_out {
        summary["timed_out"] = json!(true);
    }
    summary
}

/// Replaces a value whose JSON text exceeds the budget by that text, cut with a marker.
fn bounded_value(value: &Value, max_chars: usize) -> Value {
    let text = value.to_string();
    if text.chars().count() <= max_chars {
        return value.clone();
    }
    Value::String(truncate_chars(&text, max_chars).text)
}

/// Describes the failure in words the model can act on.
pub fn failure_text(failure: &ProgramFailure) -> String {
    match failure {
        ProgramFailure::Syntax(message) => format!("the program does not parse: {message}"),
        ProgramFailure::Thrown(message) => format!("the program threw: {message}"),
        ProgramFailure::NotJson(message) => {
            format!("the returned value cannot be turned into JSON: {message}")
        }
        ProgramFailure::Timeout => "the program ran out of time (max_runtime_ms)".to_owned(),
        ProgramFailure::OutOfMemory => "the program ran out of memory (memory_limit_mb)".to_owned(),
        ProgramFailure::StackOverflow => "the program recursed too deeply".to_owned(),
        ProgramFailure::Engine(message) => format!("the sandbox failed: {message}"),
    }
}

/// Runs programs under the code-mode settings.
pub struct Executor {
    invoker: Arc<dyn ToolInvoker>,
    settings: CodeModeConfig,
    engine: EngineCommand,
    /// Engines running at once. Each may hold `memory_limit_mb` and a thread for its run time, so
    /// a burst of turns queues here instead of exhausting memory or the blocking thread pool.
    engines: Arc<tokio::sync::Semaphore>,
}

/// Engines per CPU that may run at once; most of a run's time is spent waiting on tools.
const ENGINES_PER_CPU: usize = 8;

/// Characters of console output one run may keep.
const MAX_CONSOLE_CHARS: usize = 4_000;
/// Stack the engine may use; deep enough for ordinary recursion, far from the thread's limit.
const MAX_STACK_BYTES: usize = 512 * 1024;

impl Executor {
    pub fn new(invoker: Arc<dyn ToolInvoker>, settings: CodeModeConfig) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            invoker,
            settings,
            engine: EngineCommand::current_exe(),
            engines: Arc::new(tokio::sync::Semaphore::new(cpus * ENGINES_PER_CPU)),
        }
    }

    /// Sets the program started in subprocess mode (tests run the gateway binary this way).
    pub fn set_engine_command(&mut self, engine: EngineCommand) {
        self.engine = engine;
    }

    /// Runs `code`; the run ends by `max_runtime_ms` or `deadline`, whichever comes first.
    pub async fn run(
        &self,
        selection: &Selection,
        code: &str,
        shadow: bool,
        deadline: Instant,
    ) -> RunReport {
        let run_deadline = deadline.min(Instant::now() + self.settings.max_runtime());
        let Ok(Ok(_engine)) =
            tokio::time::timeout_at(run_deadline, self.engines.clone().acquire_owned()).await
        else {
            tracing::warn!("Every code-mode engine stayed busy until the run's deadline");
            return RunReport::not_started(ProgramFailure::Engine(
                "no engine was free before the run's deadline; the program did not run".to_owned(),
            ));
        };
        let runtime = run_deadline.saturating_duration_since(Instant::now());
        let bridge = Arc::new(Bridge::new(
            self.invoker.clone(),
            selection.bound_tools(),
            self.bridge_limits(shadow),
            Instant::now() + runtime,
        ));
        let limits = self.engine_limits(runtime);
        let run = match self.settings.execution_mode {
            ExecutionMode::InProcess => {
                super::sandbox::run_program(
                    code.to_owned(),
                    selection.identifiers(),
                    sink(bridge.clone()),
                    limits,
                )
                .await
            }
            ExecutionMode::Subprocess => {
                super::subprocess::run_program(
                    &self.engine,
                    code,
                    selection.identifiers(),
                    bridge.clone(),
                    limits,
                )
                .await
            }
        };
        report(run, &bridge)
    }

    fn bridge_limits(&self, shadow: bool) -> BridgeLimits {
        BridgeLimits {
            max_calls: self.settings.max_calls,
            max_parallel: self.settings.max_parallel,
            max_call_timeout: self.settings.max_call_timeout(),
            max_result_chars: self.settings.max_result_chars,
            shadow,
        }
    }

    fn engine_limits(&self, runtime: Duration) -> EngineLimits {
        EngineLimits {
            memory_limit_bytes: self.settings.memory_limit_mb as usize * 1024 * 1024,
            max_stack_bytes: MAX_STACK_BYTES,
            max_console_chars: MAX_CONSOLE_CHARS,
            max_runtime: runtime,
        }
    }
}

fn sink(bridge: Arc<Bridge>) -> CallSink {
    Arc::new(move |index, arguments| {
        let bridge = bridge.clone();
        Box::pin(async move { bridge.call_json(index, &arguments).await })
    })
}

fn report(run: ProgramRun, bridge: &Bridge) -> RunReport {
    let timed_out = matches!(run.result, Err(ProgramFailure::Timeout));
    let summary = bridge.finish(timed_out);
    RunReport {
        result: run.result,
        calls: summary.calls,
        console: run.console,
        console_truncated: run.console_truncated,
        elapsed_ms: run.elapsed_ms,
        exceeded: summary.exceeded,
    }
}
