//! One configured server: a supervisor task that keeps a session open, and the calls through it.
//!
//! The supervisor connects, lists the tools, and then waits for a `tools/list_changed`
//! notification (re-list), the end of the session, or shutdown. After a failure it retries with
//! exponential backoff; after a stdio child exits it restarts on the next call or after the backoff,
//! whichever comes first. Calls are never retried, because a tool may have side effects.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rmcp::model::CallToolRequestParams;
use rmcp::service::{Peer, RoleClient, ServiceError};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::connection::{self, Events, wait_exit};
use super::{McpError, ToolInfo, ToolOutput};
use crate::config::{McpServerConfig, McpServerTransport};

const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How long a failed call waits for a stdio child's exit status before reporting a plain
/// disconnect.
const EXIT_STATUS_WAIT: Duration = Duration::from_secs(2);

/// The state of a server's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerPhase {
    Disabled,
    Connecting,
    Ready,
    /// Connecting or listing tools failed; a retry is scheduled.
    Failed,
    /// The stdio child exited; it restarts on the next call.
    Exited,
}

impl ServerPhase {
    /// Every phase, in a fixed order; a closed set that labels metrics.
    pub const ALL: [ServerPhase; 5] = [
        Self::Disabled,
        Self::Connecting,
        Self::Ready,
        Self::Failed,
        Self::Exited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Connecting => "connecting",
            Self::Ready => "ready",
            Self::Failed => "failed",
            Self::Exited => "exited",
        }
    }
}

#[derive(Clone)]
struct Snapshot {
    phase: ServerPhase,
    tools: Arc<Vec<ToolInfo>>,
    peer: Option<Peer<RoleClient>>,
    exited: Option<watch::Receiver<Option<String>>>,
    last_error: Option<String>,
    changed_at: SystemTime,
    tool_lists: u64,
}

/// The state of one server, as `GET /v1/mcp/servers` returns it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub name: String,
    pub transport: &'static str,
    pub state: ServerPhase,
    pub tool_count: usize,
    pub last_error: Option<String>,
    /// Unix milliseconds of the last state change.
    pub since_ms: u64,
    /// Successful `tools/list` rounds, including those after `tools/list_changed`.
    pub tool_lists: u64,
}

pub struct ServerHandle {
    name: String,
    config: McpServerConfig,
    state: watch::Sender<Snapshot>,
    wake: Notify,
}

impl ServerHandle {
    pub(crate) fn new(name: &str, config: McpServerConfig) -> Arc<Self> {
        let phase = if config.enabled {
            ServerPhase::Connecting
        } else {
            ServerPhase::Disabled
        };
        let snapshot = Snapshot {
            phase,
            tools: Arc::default(),
            peer: None,
            exited: None,
            last_error: None,
            changed_at: SystemTime::now(),
            tool_lists: 0,
        };
        Arc::new(Self {
            name: name.to_owned(),
            config,
            state: watch::channel(snapshot).0,
            wake: Notify::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn status(&self) -> ServerStatus {
        let snapshot = self.state.borrow();
        ServerStatus {
            name: self.name.clone(),
            transport: self.config.transport_name(),
            state: snapshot.phase,
            tool_count: snapshot.tools.len(),
            last_error: snapshot.last_error.clone(),
            since_ms: snapshot
                .changed_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            tool_lists: snapshot.tool_lists,
        }
    }

    pub fn tools(&self) -> Arc<Vec<ToolInfo>> {
        self.state.borrow().tools.clone()
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout()
    }

    /// Waits until the server is ready or has failed, for at most `timeout`.
    pub async fn settled(&self, timeout: Duration) -> ServerPhase {
        let mut state = self.state.subscribe();
        let settled = state.wait_for(|s| s.phase != ServerPhase::Connecting);
        match tokio::time::timeout(timeout, settled).await {
            Ok(Ok(snapshot)) => snapshot.phase,
            _ => self.state.borrow().phase,
        }
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        self.state.send_modify(|snapshot| {
            change(snapshot);
            snapshot.changed_at = SystemTime::now();
        });
    }

    /// Calls `tool` once; the call fails at once if a stdio child exits meanwhile.
    pub async fn call(
        &self,
        tool: &str,
        arguments: serde_json::Map<String, Value>,
        timeout: Duration,
    ) -> Result<ToolOutput, McpError> {
        self.call_within(tool, arguments, timeout)
            .await
            .map_err(|err| self.redact(err))
    }

    /// Bounds waiting for the server and the call itself by one `timeout` in total.
    async fn call_within(
        &self,
        tool: &str,
        arguments: serde_json::Map<String, Value>,
        timeout: Duration,
    ) -> Result<ToolOutput, McpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let snapshot = self.ready_snapshot(timeout).await?;
        let peer = snapshot.peer.expect("a ready server has a peer");
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = Some(arguments);
        let exited = snapshot.exited.expect("a ready server has an exit watch");
        let result = tokio::select! {
            result = tokio::time::timeout_at(deadline, peer.call_tool(params)) => result,
            description = wait_exit(exited.clone()) => return Err(McpError::Exited(description)),
        };
        match result {
            Err(_) => Err(McpError::Timeout(timeout)),
            Ok(Ok(result)) => Ok(ToolOutput::from(result)),
            Ok(Err(ServiceError::McpError(error))) => Err(McpError::Rpc {
                code: error.code.0,
                message: error.message.into_owned(),
            }),
            Ok(Err(err)) => Err(Self::closed_error(err, exited).await),
        }
    }

    /// Explains a lost session: a stdio child's stdout closes just before its exit is reaped, so
    /// wait briefly for the exit status, which says more than "transport closed".
    async fn closed_error(err: ServiceError, exited: watch::Receiver<Option<String>>) -> McpError {
        match tokio::time::timeout(EXIT_STATUS_WAIT, wait_exit(exited)).await {
            Ok(description) => McpError::Exited(description),
            Err(_) => McpError::Disconnected(err.to_string()),
        }
    }

    /// Lists the tools again and returns the round-trip time of `tools/list`.
    pub async fn measure_tool_list(&self) -> Result<Duration, McpError> {
        let snapshot = self.ready_snapshot(self.config.timeout()).await?;
        let peer = snapshot.peer.expect("a ready server has a peer");
        let started = std::time::Instant::now();
        self.refresh_tools(&peer).await?;
        Ok(started.elapsed())
    }

    /// Returns a ready snapshot, waking the supervisor and waiting for it when needed.
    async fn ready_snapshot(&self, timeout: Duration) -> Result<Snapshot, McpError> {
        let current = self.state.borrow().clone();
        match current.phase {
            ServerPhase::Ready => return Ok(current),
            ServerPhase::Disabled => {
                return Err(self.unavailable("disabled in the configuration".to_owned()));
            }
            _ => self.wake.notify_one(),
        }
        let mut state = self.state.subscribe();
        let ready = state.wait_for(|s| s.phase == ServerPhase::Ready);
        match tokio::time::timeout(timeout, ready).await {
            Ok(Ok(snapshot)) => Ok(snapshot.clone()),
            _ => {
                let reason = self.state.borrow().last_error.clone();
                Err(self.unavailable(reason.unwrap_or_else(|| "not connected yet".to_owned())))
            }
        }
    }

    /// Masks configured header and environment values in an error, since a server may echo them.
    fn redact(&self, error: McpError) -> McpError {
        match error {
            McpError::Unavailable { server, reason } => McpError::Unavailable {
                server,
                reason: self.redact_text(&reason),
            },
            McpError::Rpc { code, message } => McpError::Rpc {
                code,
                message: self.redact_text(&message),
            },
            McpError::Disconnected(text) => McpError::Disconnected(self.redact_text(&text)),
            McpError::Initialize(text) => McpError::Initialize(self.redact_text(&text)),
            other => other,
        }
    }

    fn redact_text(&self, text: &str) -> String {
        let secrets: Vec<&str> = match &self.config.transport {
            McpServerTransport::Stdio { env, .. } => env.values().map(|v| v.expose()).collect(),
            McpServerTransport::Http { headers, .. } => {
                headers.values().map(|v| v.expose()).collect()
            }
        };
        let mut text = text.to_owned();
        for secret in secrets {
            for part in std::iter::once(secret).chain(secret.strip_prefix("Bearer ")) {
                // Very short values ("1", "true") are not credentials and would mangle the text.
                if part.len() >= 6 {
                    text = text.replace(part, crate::config::MASK);
                }
            }
        }
        text
    }

    fn unavailable(&self, reason: String) -> McpError {
        McpError::Unavailable {
            server: self.name.clone(),
            reason,
        }
    }

    /// Keeps the session open until `shutdown`; spawned once per enabled server.
    pub(crate) async fn supervise(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let delay = match self.run_session(&shutdown).await {
                SessionEnd::Shutdown => return,
                SessionEnd::Failed => {
                    failures += 1;
                    retry_delay(failures)
                }
                SessionEnd::Closed => {
                    failures = 1;
                    retry_delay(failures)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
                () = self.wake.notified() => {}
            }
            self.update(|s| s.phase = ServerPhase::Connecting);
        }
    }

    async fn run_session(&self, shutdown: &CancellationToken) -> SessionEnd {
        let (changed_tx, mut changed_rx) = mpsc::unbounded_channel();
        let connected = tokio::select! {
            () = shutdown.cancelled() => return SessionEnd::Shutdown,
            result = connection::connect(&self.name, &self.config, Events { tools_changed: changed_tx }) => result,
        };
        let connection = match connected {
            Ok(connection) => connection,
            Err(err) => return self.fail(err),
        };
        let peer = connection.service.peer().clone();
        if let Err(err) = self.refresh_tools(&peer).await {
            return self.fail(err);
        }
        tracing::info!(server = %self.name, tools = self.tools().len(), "MCP server ready");
        let exited = connection.exited.clone();
        self.update(|s| {
            s.phase = ServerPhase::Ready;
            s.peer = Some(peer.clone());
            s.exited = Some(exited.clone());
            s.last_error = None;
        });
        let mut session = std::pin::pin!(connection.service.waiting());
        let end = loop {
            tokio::select! {
                () = shutdown.cancelled() => break SessionEnd::Shutdown,
                Some(()) = changed_rx.recv() => {
                    if let Err(err) = self.refresh_tools(&peer).await {
                        tracing::warn!(server = %self.name, error = %err, "Refreshing the tool list failed");
                    }
                }
                description = wait_exit(exited.clone()) => {
                    self.mark_closed(ServerPhase::Exited, format!("server process exited ({description})"));
                    break SessionEnd::Closed;
                }
                _ = &mut session => {
                    // A stdio child's stdout closes just before its exit is reaped.
                    let exit = tokio::time::timeout(EXIT_STATUS_WAIT, wait_exit(exited.clone())).await;
                    match exit {
                        Ok(description) => self.mark_closed(
                            ServerPhase::Exited,
                            format!("server process exited ({description})"),
                        ),
                        Err(_) => self.mark_closed(ServerPhase::Failed, "the session was closed".to_owned()),
                    }
                    break SessionEnd::Closed;
                }
            }
        };
        if matches!(end, SessionEnd::Shutdown) {
            self.update(|s| s.peer = None);
        }
        end
    }

    async fn refresh_tools(&self, peer: &Peer<RoleClient>) -> Result<(), McpError> {
        let listed = tokio::time::timeout(self.config.timeout(), peer.list_all_tools())
            .await
            .map_err(|_| McpError::Timeout(self.config.timeout()))?
            .map_err(|err| McpError::Disconnected(format!("tools/list failed: {err}")))?;
        let tools: Vec<ToolInfo> = listed
            .into_iter()
            .map(|tool| ToolInfo::from_mcp(&self.name, tool))
            .collect();
        tracing::debug!(server = %self.name, tools = tools.len(), "Listed MCP tools");
        self.update(|s| {
            s.tools = Arc::new(tools);
            s.tool_lists += 1;
        });
        Ok(())
    }

    fn fail(&self, err: McpError) -> SessionEnd {
        let err = self.redact(err);
        tracing::warn!(server = %self.name, error = %err, "MCP server unavailable; will retry");
        self.update(|s| {
            s.phase = ServerPhase::Failed;
            s.peer = None;
            s.last_error = Some(err.to_string());
        });
        SessionEnd::Failed
    }

    fn mark_closed(&self, phase: ServerPhase, reason: String) {
        tracing::warn!(server = %self.name, reason = %reason, "MCP session ended");
        self.update(|s| {
            s.phase = phase;
            s.peer = None;
            s.last_error = Some(reason);
        });
    }
}

enum SessionEnd {
    Shutdown,
    Failed,
    Closed,
}

/// Exponential backoff from half a second up to a minute.
fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY_DELAY
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(10)))
        .min(MAX_RETRY_DELAY)
}
