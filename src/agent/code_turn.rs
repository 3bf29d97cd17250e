//! The code-mode part of a turn: ask for a program, run it, repair it, ask for the answer.
//!
//! The first request offers one tool, `run_program`, whose description carries the declarations
//! (or, with `program_delivery = "fenced"`, a system message asks for a fenced js block). A reply
//! without a program is a direct answer. A program that fails goes back to the model for up to
//! `max_repair_attempts` fixes. The outcome says whether code mode served the reply or why the
//! classic loop must take over, handing it the calls that already completed.

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Reply;
use super::catalog::ToolCatalog;
use super::tool_loop::{ToolCallOrigin, ToolCallRecord, ToolCallStatus};
use crate::code_mode::CodeMode;
use crate::code_mode::audit::{AuditRecord, FallbackReason, Planner, RunRole};
use crate::code_mode::bridge::CallReport;
use crate::code_mode::circuit::{RunResult, RunTicket, Transition};
use crate::code_mode::executor::{RunReport, Selection};
use crate::code_mode::extract::extract_program;
use crate::config::ProgramDelivery;
use crate::provider::wire::{
    ChatMessage, FunctionCall, FunctionSpec, Role, ToolArguments, ToolCall, ToolSpec,
};
use crate::provider::{Completion, ProviderClient};

/// The name of the one tool code mode offers.
pub const PROGRAM_TOOL: &str = "run_program";

/// The end of code mode's part in a turn.
pub enum CodeOutcome {
    /// The model replied without a program, so its reply may serve the turn.
    Direct(Completion),
    /// The program's result served the reply.
    Served,
    /// The classic loop serves the reply. `handover` contains the calls code mode completed, so
    /// the loop sees their results instead of repeating them blindly.
    Fallback {
        reason: FallbackReason,
        handover: Vec<CallReport>,
    },
}

/// One turn's code-mode attempt.
pub struct CodeTurn<'a> {
    pub code_mode: &'a CodeMode,
    pub catalog: &'a ToolCatalog,
    pub provider: &'a ProviderClient,
    pub selection: &'a Selection,
    pub role: RunRole,
    pub deadline: Instant,
    pub turn_id: &'a str,
}

/// A program as the model delivered it, with what is needed to reply to it.
struct Planned {
    code: String,
    /// The assistant message that carried the program, to replay before the report.
    message: ChatMessage,
    /// The id of the `run_program` call, `None` for a fenced block.
    call_id: Option<String>,
}

/// The programs and runs of one attempt.
struct Attempt {
    started: Instant,
    planner: Planner,
    reports: Vec<RunReport>,
    last_code: String,
}

impl CodeTurn<'_> {
    pub async fn run(
        &self,
        mut messages: Vec<ChatMessage>,
        ticket: RunTicket,
        reply: &mut Reply,
        text_tx: Option<&mpsc::UnboundedSender<String>>,
    ) -> CodeOutcome {
        let delivery = self.code_mode.settings().program_delivery;
        if delivery == ProgramDelivery::Fenced {
            messages.insert(system_position(&messages), self.fenced_instructions());
        }
        let Some(first) = self.ask(&messages, reply).await else {
            drop(ticket);
            return self.fallback_without_attempt(FallbackReason::ProviderError);
        };
        let Some(planned) = plan(&first, delivery) else {
            ticket.finish(RunResult::NoProgram);
            if !first.tool_calls.is_empty() {
                // The model called a tool natively instead of writing a program: the classic
                // loop offers those tools, so it serves the turn. No program, so no attempt.
                tracing::info!(
                    tool = %first.tool_calls[0].function.name,
                    "Model called a tool instead of run_program; the tool loop takes over"
                );
                return self.fallback_without_attempt(FallbackReason::NoRepair);
            }
            self.code_mode.record_direct_answer();
            return CodeOutcome::Direct(first);
        };
        let mut attempt = Attempt {
            started: Instant::now(),
            planner: if planned.call_id.is_some() {
                Planner::Tool
            } else {
                Planner::Fenced
            },
            reports: Vec::new(),
            last_code: String::new(),
        };
        let outcome = self
            .run_with_repairs(&mut messages, planned, &mut attempt, reply)
            .await;
        let transition = ticket.finish(circuit_result(&attempt.reports));
        let outcome = self
            .conclude(
                messages,
                outcome,
                transition,
                &attempt.reports,
                reply,
                text_tx,
            )
            .await;
        self.audit(&attempt, &outcome, reply);
        let calls = attempt.reports.iter().flat_map(|r| r.calls.iter());
        reply
            .tool_calls
            .extend(calls.map(|call| call_record(self.catalog, call)));
        outcome
    }

    /// Hands the turn to the classic loop before any program ran, so this is not an attempt.
    fn fallback_without_attempt(&self, reason: FallbackReason) -> CodeOutcome {
        CodeOutcome::Fallback {
            reason,
            handover: Vec::new(),
        }
    }

    /// Runs the program, sending failures back for repair. On success the messages end with
    /// the assistant message that carried the working program.
    async fn run_with_repairs(
        &self,
        messages: &mut Vec<ChatMessage>,
        mut planned: Planned,
        attempt: &mut Attempt,
        reply: &mut Reply,
    ) -> Result<Planned, FallbackReason> {
        let max_repairs = self.code_mode.settings().max_repair_attempts;
        loop {
            let shadow = self.role != RunRole::Serve;
            let run_started = Instant::now();
            let report = self
                .code_mode
                .run(self.selection, &planned.code, shadow, self.deadline)
                .await;
            reply.waited += run_started.elapsed();
            attempt.last_code = planned.code.clone();
            let failure = report.failure();
            let rendered = report.render(self.code_mode.settings().max_result_chars);
            attempt.reports.push(report);
            let Some(reason) = failure else {
                messages.push(planned.message.clone());
                messages.push(report_message(&planned, rendered));
                return Ok(planned);
            };
            if attempt.reports.len() > max_repairs as usize || !repairable(reason) {
                return Err(reason);
            }
            messages.push(planned.message.clone());
            messages.push(repair_message(&planned, rendered));
            let Some(next) = self.ask(messages, reply).await else {
                return Err(FallbackReason::ProviderError);
            };
            planned = plan(&next, self.code_mode.settings().program_delivery)
                .ok_or(FallbackReason::NoRepair)?;
        }
    }

    /// Turns the run into the turn's outcome: the final answer, or a fallback.
    async fn conclude(
        &self,
        messages: Vec<ChatMessage>,
        outcome: Result<Planned, FallbackReason>,
        transition: Transition,
        reports: &[RunReport],
        reply: &mut Reply,
        text_tx: Option<&mpsc::UnboundedSender<String>>,
    ) -> CodeOutcome {
        let handover = completed_calls(reports, self.role);
        let reason = match (outcome, self.role) {
            (Err(reason), _) => reason,
            (Ok(_), RunRole::Shadow) => FallbackReason::Shadow,
            (Ok(_), RunRole::Probe) => FallbackReason::Probe,
            (Ok(_), RunRole::Serve) if transition == Transition::Opened => {
                FallbackReason::CircuitOpened
            }
            (Ok(_), RunRole::Serve) => {
                let answer = super::ask(
                    reply,
                    self.provider,
                    messages,
                    Vec::new(),
                    self.deadline,
                    text_tx,
                );
                match answer.await {
                    Ok(answer) => {
                        reply.record(answer);
                        return CodeOutcome::Served;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "Model request for the final answer after the program failed");
                        FallbackReason::ProviderError
                    }
                }
            }
        };
        CodeOutcome::Fallback { reason, handover }
    }

    /// Asks for a program or a repair; `None` when the provider failed.
    async fn ask(&self, messages: &[ChatMessage], reply: &mut Reply) -> Option<Completion> {
        let tools = match self.code_mode.settings().program_delivery {
            ProgramDelivery::Tool => vec![self.program_tool()],
            ProgramDelivery::Fenced => Vec::new(),
        };
        let completion = super::ask(
            reply,
            self.provider,
            messages.to_vec(),
            tools,
            self.deadline,
            None,
        );
        match completion.await {
            Ok(completion) => {
                reply.record(completion.clone());
                Some(completion)
            }
            Err(err) => {
                tracing::warn!(error = %err, "Model request in code mode failed");
                None
            }
        }
    }

    fn program_tool(&self) -> ToolSpec {
        ToolSpec {
            kind: "function",
            function: FunctionSpec {
                name: PROGRAM_TOOL.to_owned(),
                description: Some(format!(
                    "{PROGRAM_INTRO}\n\n{}",
                    self.selection.declarations.text
                )),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "code": {
                            "type": "string",
                            "description": "The body of an async JavaScript function."
                        }
                    },
                    "required": ["code"]
                }),
            },
        }
    }

    fn fenced_instructions(&self) -> ChatMessage {
        ChatMessage::text(
            Role::System,
            format!(
                "{PROGRAM_INTRO} To run a program, reply with only a ```js fenced block. \
                 When no tool is needed, answer directly without a code block.\n\n{}",
                self.selection.declarations.text
            ),
        )
    }

    /// Counts, logs and keeps the attempt; the record is stored with the turn.
    fn audit(&self, attempt: &Attempt, outcome: &CodeOutcome, reply: &mut Reply) {
        let reason = match outcome {
            CodeOutcome::Fallback { reason, .. } => Some(*reason),
            _ => None,
        };
        let calls = attempt.reports.iter().flat_map(|r| r.calls.iter());
        let count =
            |keep: fn(&CallReport) -> bool| calls.clone().filter(|c| keep(c)).count() as u32;
        let record = AuditRecord {
            at_unix_ms: super::unix_millis(),
            turn_id: self.turn_id.to_owned(),
            planner: attempt.planner,
            role: self.role,
            used: reason.is_none(),
            fallback: reason.is_some(),
            reason,
            runs: attempt.reports.len() as u32,
            run_failures: attempt
                .reports
                .iter()
                .filter_map(RunReport::failure)
                .collect(),
            planned_calls: calls.clone().count() as u32,
            executed_calls: count(|c| c.executed),
            failed_calls: count(|c| !c.ok),
            timed_out_calls: count(|c| c.timed_out),
            elapsed_ms: attempt.started.elapsed().as_millis() as u64,
            program_sha256: sha256_hex(&attempt.last_code),
        };
        reply.code_attempt = Some(record.clone());
        self.code_mode.record(record);
    }
}

const PROGRAM_INTRO: &str = "Runs a JavaScript program that calls the tools declared below. \
The program is the body of an async function: use `await`, `Promise.all`, loops and plain \
JavaScript, call tools as `await tools.<server>.<tool>({...})`, and `return` only the data the \
answer needs. There is no network, file system, require, import or timer. A failed tool call \
rejects with an Error.";

/// Returns where the code-mode system message goes: after the configured system prompt, if any.
fn system_position(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .take_while(|m| m.role == Role::System)
        .count()
}

/// Finds the program in a completion: the `code` of a `run_program` call, or with fenced
/// delivery a fenced js block. With tool delivery a code block in the text is part of a plain
/// answer (an example, say) and is never run.
fn plan(completion: &Completion, delivery: ProgramDelivery) -> Option<Planned> {
    if let Some(call) = completion
        .tool_calls
        .iter()
        .find(|c| c.function.name == PROGRAM_TOOL)
    {
        return Some(planned_call(completion, call));
    }
    if delivery != ProgramDelivery::Fenced {
        return None;
    }
    let extracted = extract_program(&completion.content)?;
    Some(Planned {
        code: extracted.code,
        message: ChatMessage::text(Role::Assistant, &completion.content),
        call_id: None,
    })
}

/// Reads the program of a `run_program` call. A missing or non-string `code` becomes a program
/// that throws, so the model learns what is wrong through the usual repair path.
fn planned_call(completion: &Completion, call: &ToolCall) -> Planned {
    let code = match &call.function.arguments {
        ToolArguments::Json(Value::Object(map)) => match map.get("code") {
            Some(Value::String(code)) => code.clone(),
            _ => "throw new Error('run_program needs a string argument `code`');".to_owned(),
        },
        _ => "throw new Error('the arguments of run_program must be a JSON object with `code`');"
            .to_owned(),
    };
    let id = if call.id.is_empty() {
        "run_program_0".to_owned()
    } else {
        call.id.clone()
    };
    let mut only_call = call.clone();
    only_call.id = id.clone();
    Planned {
        code,
        message: ChatMessage {
            role: Role::Assistant,
            content: (!completion.content.is_empty()).then(|| completion.content.clone()),
            tool_calls: vec![only_call],
            tool_call_id: None,
        },
        call_id: Some(id),
    }
}

fn report_message(planned: &Planned, rendered: String) -> ChatMessage {
    match &planned.call_id {
        Some(id) => tool_result(id, rendered),
        None => ChatMessage::text(
            Role::User,
            format!("The program ran. Its report:\n{rendered}\nAnswer the question using it."),
        ),
    }
}

fn repair_message(planned: &Planned, rendered: String) -> ChatMessage {
    let ask = "Fix the program and run it again, or answer directly if no program is needed.";
    match &planned.call_id {
        Some(id) => tool_result(id, format!("{rendered}\n{ask}")),
        None => ChatMessage::text(
            Role::User,
            format!("The program failed. Its report:\n{rendered}\n{ask} Reply with a ```js block."),
        ),
    }
}

fn tool_result(call_id: &str, content: String) -> ChatMessage {
    ChatMessage {
        role: Role::Tool,
        content: Some(content),
        tool_calls: Vec::new(),
        tool_call_id: Some(call_id.to_owned()),
    }
}

/// Budget failures are worth one more try with a leaner program; an engine failure is not.
fn repairable(reason: FallbackReason) -> bool {
    reason != FallbackReason::SandboxError
}

/// Sums the calls of the attempt's runs into what the circuit learns from it.
fn circuit_result(reports: &[RunReport]) -> RunResult {
    let executed_calls = reports.iter().map(RunReport::executed_calls).sum();
    let timed_out_calls = reports.iter().map(RunReport::timed_out_calls).sum();
    let whole_run_timed_out = reports
        .last()
        .is_some_and(|r| r.failure() == Some(FallbackReason::Timeout));
    if whole_run_timed_out && timed_out_calls == 0 {
        return RunResult::TimedOut;
    }
    RunResult::Completed {
        executed_calls,
        timed_out_calls,
    }
}

/// Collects the calls that reached a tool server, for the classic loop: those that succeeded
/// with their results, and those that failed or never returned with a warning that they may
/// have taken effect. A shadow run hands over nothing, because its calls are safe to repeat and
/// the classic loop serves on its own.
fn completed_calls(reports: &[RunReport], role: RunRole) -> Vec<CallReport> {
    if role != RunRole::Serve {
        return Vec::new();
    }
    reports
        .iter()
        .flat_map(|r| r.calls.iter())
        .filter(|c| c.executed)
        .cloned()
        .collect()
}

/// Returns the tool result the classic loop gets for a handed-over call.
fn handover_content(call: &CallReport) -> String {
    match (&call.output, &call.error) {
        (Some(output), _) if call.ok => output.clone(),
        (_, Some(error)) => format!(
            "This call was sent to the tool server but did not complete normally: {error}. \
             It may have taken effect, so check before calling it again."
        ),
        _ => "This call was sent to the tool server; its outcome is unknown.".to_owned(),
    }
}

/// Builds the messages that show the classic loop what code mode already did: one assistant
/// message with a call per completed tool call, then the results.
pub fn handover_messages(catalog: &ToolCatalog, handover: &[CallReport]) -> Vec<ChatMessage> {
    let mut calls = Vec::new();
    let mut results = Vec::new();
    for (index, call) in handover.iter().enumerate() {
        let Some(name) = catalog.function_name_of(&call.server, &call.tool) else {
            continue;
        };
        let id = format!("code_mode_{index}");
        calls.push(ToolCall {
            id: id.clone(),
            kind: "function".to_owned(),
            function: FunctionCall {
                name: name.to_owned(),
                arguments: ToolArguments::Json(call.arguments.clone()),
            },
        });
        results.push(tool_result(&id, handover_content(call)));
    }
    if calls.is_empty() {
        return Vec::new();
    }
    let mut messages = vec![ChatMessage {
        role: Role::Assistant,
        content: None,
        tool_calls: calls,
        tool_call_id: None,
    }];
    messages.extend(results);
    messages
}

/// Converts a code-mode call into the turn's tool-call record.
pub fn call_record(catalog: &ToolCatalog, call: &CallReport) -> ToolCallRecord {
    let status = if call.ok {
        ToolCallStatus::Ok
    } else if !call.executed {
        ToolCallStatus::Rejected
    } else if call.tool_error {
        ToolCallStatus::ToolError
    } else {
        ToolCallStatus::Failed
    };
    ToolCallRecord {
        name: catalog
            .function_name_of(&call.server, &call.tool)
            .map_or_else(|| format!("{}.{}", call.server, call.tool), str::to_owned),
        server: Some(call.server.clone()),
        tool: Some(call.tool.clone()),
        arguments: call.arguments.clone(),
        status,
        error: call.error.clone(),
        duration_ms: call.elapsed_ms,
        truncated: call.truncated,
        origin: ToolCallOrigin::CodeMode,
    }
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}
