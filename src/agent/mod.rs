//! One agent turn: load history, ask the model, save the turn.
//!
//! The session lock is held for the whole turn so a second message on the same session waits and
//! then reads the first turn's messages. A turn whose wait leaves too little of its deadline for a
//! model request fails as busy without calling the model. The store is read before and written
//! after the model call; no transaction is open while the model is working.

mod catalog;
mod code_turn;
mod locks;
mod tool_loop;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use catalog::{ToolCatalog, function_name};
pub use locks::SessionLocks;
pub use tool_loop::{ToolCallOrigin, ToolCallRecord, ToolCallStatus};

use tool_loop::{LoopLimits, assistant_with_calls, execute_calls, tool_message};

use crate::code_mode::CodeMode;
use crate::code_mode::audit::{AuditRecord, RunRole};
use crate::code_mode::circuit::Admission;
use crate::config::AgentConfig;
use crate::mcp::McpHub;
use crate::provider::wire::{ChatMessage, Role, ToolSpec, Usage};
use crate::provider::{Completion, ProviderClient, ProviderError};
use crate::store::{HistoryStore, NewMessage, NewTurn, StoreError, StoredMessage};
use crate::telemetry::Metrics;
use code_turn::{CodeOutcome, CodeTurn, handover_messages};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The turn waited this long for its session's lock, and too little of its deadline was left
    /// for a model request: none, or less than one second (a quarter of `agent.turn_timeout_ms`
    /// when that is shorter).
    #[error(
        "waited {} ms for an earlier turn on this session, which left too little of \
         agent.turn_timeout_ms for a model request",
        .0.as_millis()
    )]
    SessionBusy(Duration),
    /// The turn's deadline passed during a model request, after the turn had waited this long for
    /// earlier turns on its session.
    #[error(
        "the turn's deadline (agent.turn_timeout_ms) was reached before the provider answered; \
         the turn had spent {} ms of it waiting for earlier turns on this session",
        .0.as_millis()
    )]
    DeadlineAfterLockWait(Duration),
    #[error(
        "the gateway is shutting down and stopped this turn before it finished (app.shutdown_grace_ms \
         ran out)"
    )]
    ShuttingDown,
}

/// The minimum time a turn must have left once it holds its session's lock to call the model. With
/// less, the turn fails as [`AgentError::SessionBusy`] instead of sending a request whose reply
/// would likely arrive after the deadline and be thrown away.
///
/// NOTE: one second is an estimate of the shortest useful model request, not a measurement; a
/// slower model can still time out on a turn that had more time left.
const MIN_MODEL_TIME: Duration = Duration::from_secs(1);

/// A validated user message.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub session_id: String,
    pub user_id: String,
    pub text: String,
}

/// The result of a finished turn, as returned to the client.
#[derive(Debug, Clone, Serialize)]
pub struct TurnOutcome {
    pub session_id: String,
    pub turn_id: String,
    pub reply: String,
    pub provider: String,
    pub model: String,
    pub finish_reason: Option<String>,
    /// Summed over the turn's model requests; `None` when any of them reported no usage.
    pub usage: Option<Usage>,
    pub activity: TurnActivity,
    pub tool_calls: Vec<ToolCallRecord>,
}

/// A summary of the work behind the reply.
#[derive(Debug, Clone, Serialize)]
pub struct TurnActivity {
    /// How the reply was produced: `direct` (the model answered without calling a tool) or
    /// `tool_loop` (it called tools through native function calling).
    pub mode: &'static str,
    pub provider_requests: u32,
    /// Whether `max_tool_iterations` ran out, so a last request without tools asked for the answer.
    pub tool_iterations_exhausted: bool,
    /// What code mode did, when it was offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_mode: Option<CodeModeActivity>,
    pub history_messages: usize,
    pub duration_ms: u64,
}

/// Code mode's part in a turn.
#[derive(Debug, Clone, Serialize)]
pub struct CodeModeActivity {
    /// `used` (the program's result served the reply), `fallback` (the classic loop served,
    /// also when the model request failed or called a tool before any program), `direct_answer`
    /// (the model needed no program) or `skipped` (the timeout circuit is open).
    pub outcome: &'static str,
    /// The attempt's audit record, when the model wrote a program.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<AuditRecord>,
}

/// Runs turns against the configured providers and store.
pub struct Agent {
    store: Arc<dyn HistoryStore>,
    hub: Arc<McpHub>,
    providers: HashMap<String, ProviderClient>,
    default_provider: String,
    config: AgentConfig,
    code_mode: Arc<CodeMode>,
    locks: SessionLocks,
    metrics: Metrics,
    /// Cancelled when shutdown stops the turns still running; see [`Agent::stop_turns`].
    stopping: CancellationToken,
}

impl Agent {
    pub fn new(
        store: Arc<dyn HistoryStore>,
        hub: Arc<McpHub>,
        providers: HashMap<String, ProviderClient>,
        default_provider: String,
        config: AgentConfig,
        code_mode: Arc<CodeMode>,
    ) -> Self {
        assert!(
            providers.contains_key(&default_provider),
            "validated config names a provider"
        );
        Self {
            store,
            hub,
            providers,
            default_provider,
            config,
            code_mode,
            locks: SessionLocks::default(),
            metrics: Metrics::default(),
            stopping: CancellationToken::new(),
        }
    }

    /// Records the gateway overhead of each finished turn in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Ends every running turn that has not started to save with [`AgentError::ShuttingDown`], and
    /// every later turn at once. A turn that is saving finishes its save, so no turn is stored
    /// in part and none is reported as failed after it was stored.
    pub fn stop_turns(&self) {
        self.stopping.cancel();
    }

    /// Runs `step` unless [`Agent::stop_turns`] was called before or while it runs.
    async fn unless_stopped<T>(&self, step: impl Future<Output = T>) -> Result<T, AgentError> {
        tokio::select! {
            biased;
            () = self.stopping.cancelled() => Err(AgentError::ShuttingDown),
            output = step => Ok(output),
        }
    }

    /// Runs one turn. With `text_tx`, the reply streams there as the model writes it.
    pub async fn run_turn(
        &self,
        request: TurnRequest,
        text_tx: Option<&mpsc::UnboundedSender<String>>,
    ) -> Result<TurnOutcome, AgentError> {
        let started = Instant::now();
        let deadline = started + self.config.turn_timeout();
        let (_session, lock_wait) = self.lock_session(&request.session_id, deadline).await?;
        let locked = Instant::now();
        // Taken after the lock, so timestamps follow the order in which turns are stored.
        let started_ms = unix_millis();

        let history = self
            .store
            .recent_messages(&request.session_id, self.config.history_limit);
        let history = self.unless_stopped(history).await??;
        let messages = self.prompt(&history, &request.text);
        let provider = &self.providers[&self.default_provider];
        let turn_id = uuid::Uuid::now_v7().to_string();
        let reply = self.respond(provider, messages, deadline, text_tx, &turn_id);
        let reply = self
            .unless_stopped(reply)
            .await?
            .map_err(|err| with_lock_wait(err, lock_wait))?;
        let mode = reply.mode();
        let completion = reply.completion;

        let model = completion
            .model
            .clone()
            .unwrap_or_else(|| provider.model().to_owned());
        let turn = NewTurn {
            session_id: request.session_id.clone(),
            user_id: request.user_id.clone(),
            turn_id: turn_id.clone(),
            messages: vec![
                NewMessage {
                    role: Role::User,
                    content: request.text,
                    created_at_ms: started_ms,
                    provider: None,
                    model: None,
                    finish_reason: None,
                    usage: None,
                },
                NewMessage {
                    role: Role::Assistant,
                    content: completion.content.clone(),
                    created_at_ms: unix_millis(),
                    provider: Some(provider.name().to_owned()),
                    model: Some(model.clone()),
                    finish_reason: completion.finish_reason.clone(),
                    usage: reply.usage,
                },
            ],
            tool_calls: reply.tool_calls.clone(),
            code_mode: reply
                .code_attempt
                .as_ref()
                .and_then(|record| serde_json::to_value(record).ok()),
        };
        self.store.save_turn(&turn).await?;
        self.metrics
            .observe_gateway_overhead(locked.elapsed().saturating_sub(reply.waited));

        Ok(TurnOutcome {
            session_id: request.session_id,
            turn_id,
            reply: completion.content,
            provider: provider.name().to_owned(),
            model,
            finish_reason: completion.finish_reason,
            usage: reply.usage,
            activity: TurnActivity {
                mode,
                provider_requests: reply.requests,
                tool_iterations_exhausted: reply.exhausted,
                code_mode: reply.code_activity.map(|outcome| CodeModeActivity {
                    outcome,
                    attempt: reply.code_attempt,
                }),
                history_messages: history.len(),
                duration_ms: started.elapsed().as_millis() as u64,
            },
            tool_calls: reply.tool_calls,
        })
    }

    /// Waits for the session's lock and returns it with the time spent waiting.
    ///
    /// Fails with [`AgentError::SessionBusy`] when the lock is still taken at `deadline`, or when
    /// less than [`Agent::min_model_time`] is left once it is free.
    async fn lock_session(
        &self,
        session_id: &str,
        deadline: Instant,
    ) -> Result<(locks::SessionGuard<'_>, Duration), AgentError> {
        let started = Instant::now();
        let lock = tokio::time::timeout_at(deadline, self.locks.lock(session_id));
        let guard = self
            .unless_stopped(lock)
            .await?
            .map_err(|_| AgentError::SessionBusy(started.elapsed()))?;
        let waited = started.elapsed();
        let left = deadline.saturating_duration_since(Instant::now());
        if left < self.min_model_time() {
            return Err(AgentError::SessionBusy(waited));
        }
        Ok((guard, waited))
    }

    /// Returns the minimum time left after the session lock for which a turn calls the model:
    /// [`MIN_MODEL_TIME`], or a quarter of `agent.turn_timeout_ms` when that is shorter.
    fn min_model_time(&self) -> Duration {
        MIN_MODEL_TIME.min(self.config.turn_timeout() / 4)
    }

    /// Produces the reply: one request when no tools are configured, else code mode when it is
    /// offered, else (or after a fallback) the tool loop.
    async fn respond(
        &self,
        provider: &ProviderClient,
        mut messages: Vec<ChatMessage>,
        deadline: Instant,
        text_tx: Option<&mpsc::UnboundedSender<String>>,
        turn_id: &str,
    ) -> Result<Reply, AgentError> {
        let catalog = ToolCatalog::new(self.hub.tools());
        let mut reply = Reply::default();
        if catalog.is_empty() {
            let completion = ask(
                &mut reply,
                provider,
                messages,
                Vec::new(),
                deadline,
                text_tx,
            );
            let completion = completion.await?;
            reply.record(completion);
            return Ok(reply);
        }
        if let Some(selection) = self.code_mode.select(&catalog.tools()) {
            let (ticket, role) = match self.code_mode.admit() {
                Admission::Skip => {
                    reply.code_activity = Some("skipped");
                    return self
                        .tool_loop(provider, messages, &catalog, deadline, text_tx, reply)
                        .await;
                }
                Admission::Probe(ticket) => (ticket, RunRole::Probe),
                Admission::Run(ticket) if self.code_mode.settings().shadow_mode => {
                    (ticket, RunRole::Shadow)
                }
                Admission::Run(ticket) => (ticket, RunRole::Serve),
            };
            let turn = CodeTurn {
                code_mode: &self.code_mode,
                catalog: &catalog,
                provider,
                selection: &selection,
                role,
                deadline,
                turn_id,
            };
            match turn
                .run(messages.clone(), ticket, &mut reply, text_tx)
                .await
            {
                CodeOutcome::Served => {
                    reply.code_activity = Some("used");
                    return Ok(reply);
                }
                CodeOutcome::Direct(completion) if role == RunRole::Serve => {
                    if let Some(tx) = text_tx {
                        let _ = tx.send(completion.content);
                    }
                    reply.code_activity = Some("direct_answer");
                    return Ok(reply);
                }
                CodeOutcome::Direct(_) => reply.code_activity = Some("direct_answer"),
                CodeOutcome::Fallback { handover, .. } => {
                    reply.code_activity = Some("fallback");
                    messages.extend(handover_messages(&catalog, &handover));
                }
            }
        }
        self.tool_loop(provider, messages, &catalog, deadline, text_tx, reply)
            .await
    }

    /// The classic tool loop: native function calling for up to `max_tool_iterations` requests.
    async fn tool_loop(
        &self,
        provider: &ProviderClient,
        mut messages: Vec<ChatMessage>,
        catalog: &ToolCatalog,
        deadline: Instant,
        text_tx: Option<&mpsc::UnboundedSender<String>>,
        mut reply: Reply,
    ) -> Result<Reply, AgentError> {
        reply.tool_loop_ran = true;
        let limits = LoopLimits {
            max_iterations: self.config.max_tool_iterations,
            max_parallel: self.config.max_parallel_tool_calls as usize,
            max_result_chars: self.config.max_tool_result_chars,
        };
        let specs = catalog.specs();
        for iteration in 0..limits.max_iterations {
            let (history, tools) = (messages.clone(), specs.clone());
            let mut completion =
                ask(&mut reply, provider, history, tools, deadline, text_tx).await?;
            if completion.tool_calls.is_empty() {
                reply.record(completion);
                return Ok(reply);
            }
            let mut calls = std::mem::take(&mut completion.tool_calls);
            messages.push(assistant_with_calls(
                &completion.content,
                &mut calls,
                iteration,
            ));
            let finish_reason = completion.finish_reason.clone();
            reply.record(completion);
            let calls_started = Instant::now();
            let results = execute_calls(
                &self.hub,
                catalog,
                &calls,
                finish_reason.as_deref(),
                limits,
                deadline,
            )
            .await;
            reply.waited += calls_started.elapsed();
            for (call, result) in calls.iter().zip(results) {
                messages.push(tool_message(&call.id, result.content));
                reply.tool_calls.push(result.record);
            }
        }
        reply.exhausted = true;
        let completion = ask(
            &mut reply,
            provider,
            messages,
            Vec::new(),
            deadline,
            text_tx,
        )
        .await?;
        reply.record(completion);
        Ok(reply)
    }

    fn prompt(&self, history: &[StoredMessage], text: &str) -> Vec<ChatMessage> {
        let mut messages = Vec::with_capacity(history.len() + 2);
        if let Some(system) = &self.config.system_prompt {
            messages.push(ChatMessage::text(Role::System, system));
        }
        messages.extend(
            history
                .iter()
                .map(|m| ChatMessage::text(m.role, &m.content)),
        );
        messages.push(ChatMessage::text(Role::User, text));
        messages
    }

    /// The deadline of one turn, also used for admin tool calls.
    pub fn turn_timeout(&self) -> Duration {
        self.config.turn_timeout()
    }

    /// The MCP servers whose tools this agent offers.
    pub fn hub(&self) -> &Arc<McpHub> {
        &self.hub
    }

    /// Code mode's settings, circuit, counters and audit records.
    pub fn code_mode(&self) -> &Arc<CodeMode> {
        &self.code_mode
    }

    /// Sessions with a turn running or waiting.
    pub fn active_sessions(&self) -> usize {
        self.locks.active()
    }
}

/// The final completion of a turn and what it took to get there.
#[derive(Default)]
pub(crate) struct Reply {
    completion: Completion,
    requests: u32,
    /// Summed usage; `None` once any request reported none.
    usage: Option<Usage>,
    usage_known: bool,
    tool_calls: Vec<ToolCallRecord>,
    exhausted: bool,
    tool_loop_ran: bool,
    code_activity: Option<&'static str>,
    code_attempt: Option<AuditRecord>,
    /// Time spent waiting on model requests, tool calls and program runs, which the gateway
    /// overhead leaves out.
    waited: std::time::Duration,
}

impl Reply {
    /// `code_mode` when a program's result served the reply, `tool_loop` when the classic loop
    /// called tools, else `direct`.
    fn mode(&self) -> &'static str {
        if self.code_activity == Some("used") {
            "code_mode"
        } else if self.tool_loop_ran
            && self
                .tool_calls
                .iter()
                .any(|c| c.origin == ToolCallOrigin::ToolLoop)
        {
            "tool_loop"
        } else {
            "direct"
        }
    }

    fn record(&mut self, completion: Completion) {
        let first = self.requests == 0;
        self.requests += 1;
        self.usage_known = (first || self.usage_known) && completion.usage.is_some();
        self.usage = match (self.usage_known, self.usage, completion.usage) {
            (false, _, _) => None,
            (true, Some(total), Some(more)) => Some(Usage {
                prompt_tokens: total.prompt_tokens + more.prompt_tokens,
                completion_tokens: total.completion_tokens + more.completion_tokens,
                total_tokens: total.total_tokens + more.total_tokens,
            }),
            (true, _, more) => more,
        };
        self.completion = completion;
    }
}

/// Reports a turn-deadline timeout together with the time the turn spent waiting for earlier turns
/// on its session, so the error does not blame the model alone. Waits under a millisecond are
/// left out.
fn with_lock_wait(error: AgentError, lock_wait: Duration) -> AgentError {
    match error {
        AgentError::Provider(ProviderError::DeadlineExceeded) if lock_wait.as_millis() > 0 => {
            AgentError::DeadlineAfterLockWait(lock_wait)
        }
        other => other,
    }
}

/// Sends one model request and adds the time it took to `reply.waited`.
async fn ask(
    reply: &mut Reply,
    provider: &ProviderClient,
    messages: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
    deadline: Instant,
    text_tx: Option<&mpsc::UnboundedSender<String>>,
) -> Result<Completion, ProviderError> {
    let started = Instant::now();
    let result = match text_tx {
        Some(tx) => {
            provider
                .complete_streaming(messages, tools, deadline, tx)
                .await
        }
        None => provider.complete(messages, tools, deadline).await,
    };
    reply.waited += started.elapsed();
    result
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
