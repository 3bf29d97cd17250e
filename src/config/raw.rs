//! The configuration file exactly as written: serde types that reject unknown keys.
//!
//! Every field is optional here; defaults and cross-field checks live in `settings`, which turns
//! this raw form into the validated [`Config`](super::Config). The doc comment of each field is its
//! reference text, mirrored in `config/xiaomaolv.example.toml`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub app: RawApp,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub channels: RawChannels,
    #[serde(default)]
    pub agent: RawAgent,
    #[serde(default)]
    pub mcp: RawMcp,
}

/// `[app]`: process-wide settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    /// Address the HTTP listener binds, as `IP:PORT`. Default `127.0.0.1:8080`.
    pub bind: Option<String>,
    /// Name of the `[providers.NAME]` table that answers messages. Default: the only provider.
    pub default_provider: Option<String>,
    /// Log line format: `human` or `json`. Default `human`; `serve --log-format` overrides it.
    pub log_format: Option<LogFormat>,
    /// After SIGINT or SIGTERM, how long in-flight turns may run. Turns still running then are
    /// stopped before they save anything, and their clients get a 503 or a final SSE `error`
    /// event. Default 30000 ms.
    pub shutdown_grace_ms: Option<u64>,
    /// Turns that may run at once, all sessions together, counting those that wait for their
    /// session's lock. A `POST /v1/messages` beyond it gets 503 with `Retry-After` at once.
    /// Default 1024.
    pub max_concurrent_turns: Option<u32>,
    /// Threads that run the HTTP server, the turns and the provider calls. 0, the default, picks
    /// by the number of CPUs. 1 runs them all on one thread, which wakes fewer threads per
    /// request.
    pub worker_threads: Option<u16>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `[store]`: where conversation history lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `sqlite://PATH` (created when missing), `sqlite::memory:`, or
    /// `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (also `postgresql://`) for a PostgreSQL
    /// database that several replicas share. Default `sqlite://xiaomaolv.db`.
    pub url: Option<String>,
    /// SQLite: read-only connections kept open for reads; writes use one more connection.
    /// PostgreSQL: the size of the connection pool. Default 8.
    pub max_connections: Option<u32>,
    /// SQLite: how long a write waits for a locked database. PostgreSQL: how long connecting,
    /// waiting for a free pooled connection, or waiting for a session locked by another replica
    /// may take. Past it the operation fails. Default 5000 ms.
    pub busy_timeout_ms: Option<u64>,
}

/// `[providers.NAME]`: one OpenAI-compatible chat-completions server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// Wire protocol. Only `openai-compatible` exists.
    pub kind: ProviderKind,
    /// Base URL up to and including the version, e.g. `http://127.0.0.1:8081/v1`;
    /// the client appends `/chat/completions`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer KEY` when not empty. Default: none.
    pub api_key: Option<String>,
    /// Model name sent in every request.
    pub model: String,
    /// TCP and TLS connect timeout. Default 5000 ms.
    pub connect_timeout_ms: Option<u64>,
    /// Timeout of one HTTP request to the provider, including the whole streamed body.
    /// Default 60000 ms.
    pub request_timeout_ms: Option<u64>,
    /// Retries after the first attempt on 408, 429, 5xx and transport errors. Default 2.
    pub max_retries: Option<u32>,
    /// First backoff before a retry; it doubles each time, with full jitter. Default 200 ms.
    pub retry_initial_backoff_ms: Option<u64>,
    /// Cap on one backoff, and on a `Retry-After` the gateway is willing to honour. Default 5000 ms.
    pub retry_max_backoff_ms: Option<u64>,
    /// Sampling temperature sent with each request. Default: not sent.
    pub temperature: Option<f64>,
    /// `max_tokens` sent with each request. Default: not sent.
    pub max_tokens: Option<u32>,
    /// Largest response body accepted from the provider, streamed or not. Default 8388608 bytes.
    pub max_response_bytes: Option<usize>,
}

/// The provider wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum ProviderKind {
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
}

/// `[channels]`: the ways messages reach the gateway.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannels {
    #[serde(default)]
    pub http: RawHttpChannel,
}

/// `[channels.http]`: the HTTP API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpChannel {
    /// Serve the HTTP API. Default true; with false only `/health` answers.
    pub enabled: Option<bool>,
    /// When not empty, `/v1/messages` and `/v1/sessions/...` require
    /// `Authorization: Bearer TOKEN`. Default: empty (open).
    pub api_bearer_token: Option<String>,
    /// Bearer token of the code-mode diagnostics endpoints; empty disables them. Default: empty.
    pub diag_bearer_token: Option<String>,
    /// Requests per minute to the diagnostics endpoints per client IP address, both endpoints
    /// together; 0 is unlimited. Default 120.
    pub diag_rate_limit_per_minute: Option<u32>,
    /// Reverse proxies, as IP addresses or CIDR blocks, whose `X-Forwarded-For` header names the
    /// client for the diagnostics rate limit. From any other peer the header is ignored.
    /// Default: empty (the socket's peer address is the client).
    pub trusted_proxies: Option<Vec<String>>,
    /// Longest accepted message `text`, in bytes of UTF-8. Default 32768.
    pub max_text_bytes: Option<usize>,
    /// Largest accepted request body, in bytes. Default 65536.
    pub max_body_bytes: Option<usize>,
    /// Time a client has to send a request's line and headers, in milliseconds. A new connection
    /// that sends no byte, or only part of the HTTP/2 preface, within this time is closed.
    /// Default 10000.
    pub header_read_timeout_ms: Option<u64>,
    /// Interval of the PING frames the gateway sends on an HTTP/2 connection, in milliseconds,
    /// and the time the client has to acknowledge each one before the connection is closed.
    /// Default 20000.
    pub http2_keep_alive_interval_ms: Option<u64>,
    /// Time an HTTP/2 connection may go without a request in flight before the gateway closes it
    /// with GOAWAY, in milliseconds. Default 60000.
    pub http2_idle_timeout_ms: Option<u64>,
}

/// `[agent]`: how a turn runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    /// System message sent first in every request. Default: none.
    pub system_prompt: Option<String>,
    /// Most recent stored messages sent to the model with each turn. Default 40.
    pub history_limit: Option<u32>,
    /// Deadline of one turn, provider retries included. Default 120000 ms.
    pub turn_timeout_ms: Option<u64>,
    /// Model requests with tools in one turn before a last request without tools asks for the
    /// answer. Default 8.
    pub max_tool_iterations: Option<u32>,
    /// Tool calls of one assistant message that run at the same time. Default 4.
    pub max_parallel_tool_calls: Option<u32>,
    /// Maximum length of a tool result given to the model, in characters; longer results are cut with a
    /// marker that gives the original size. Default 20000.
    pub max_tool_result_chars: Option<usize>,
    #[serde(default)]
    pub code_mode: RawCodeMode,
}

/// `[agent.code_mode]`: the model writes one JavaScript program that calls the tools, and the
/// gateway runs it in a sandbox under these budgets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCodeMode {
    /// Offer code mode when tools are available. Default false.
    pub enabled: Option<bool>,
    /// Run and measure code mode, but let the classic tool loop serve every reply. Default false.
    pub shadow_mode: Option<bool>,
    /// Tool calls one program may make. Default 6.
    pub max_calls: Option<u32>,
    /// Tool calls of one program in flight at once, at most `max_calls`. Default 2.
    pub max_parallel: Option<u32>,
    /// Wall-clock budget of one program run, tool calls included. Default 2500 ms.
    pub max_runtime_ms: Option<u64>,
    /// Timeout of one tool call, never longer than the run time left; at most `max_runtime_ms`.
    /// Default 1200 ms.
    pub max_call_timeout_ms: Option<u64>,
    /// Characters of tool results one run may receive, shared by all its calls; a result that does
    /// not fit arrives cut, as a string with a marker. Default 12000.
    pub max_result_chars: Option<usize>,
    /// Memory limit of the JavaScript engine of one run, in MiB. Default 32.
    pub memory_limit_mb: Option<u32>,
    /// Timed-out share of a run's executed calls at which the run is a timeout alert; values
    /// outside 0..1 are clamped, NaN is rejected. Default 0.4.
    pub timeout_warn_ratio: Option<f64>,
    /// Open the timeout circuit (code mode demoted to shadow runs) after a streak of alerts.
    /// Default true.
    pub timeout_auto_shadow_enabled: Option<bool>,
    /// Consecutive timeout alerts that open the circuit. Default 3.
    pub timeout_auto_shadow_streak: Option<u32>,
    /// While the circuit is open, every Nth request runs code mode as a probe. Default 5.
    pub timeout_auto_shadow_probe_every: Option<u32>,
    /// `in_process` (default) or `subprocess`: run the engine in a child process with OS limits.
    pub execution_mode: Option<ExecutionMode>,
    /// How the program arrives: `tool` (default; one native tool with a `code` argument) or
    /// `fenced` (a fenced js block in the reply, for providers without tool calling).
    pub program_delivery: Option<ProgramDelivery>,
    /// Times a failed program goes back to the model for a fix before the classic loop takes
    /// over. Default 1.
    pub max_repair_attempts: Option<u32>,
    /// Expose tools that need network access (MCP `openWorldHint`, true when absent). Default false.
    pub allow_network: Option<bool>,
    /// Expose tools that need the file system. Default false.
    pub allow_filesystem: Option<bool>,
    /// Expose tools that read the environment. Default false.
    pub allow_env: Option<bool>,
}

/// The place the JavaScript engine runs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionMode {
    #[default]
    InProcess,
    Subprocess,
}

/// The way the model hands its program to the gateway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgramDelivery {
    #[default]
    Tool,
    Fenced,
}

/// A capability a tool may need, which code mode grants only when the matching `allow_*` is set.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Network,
    Filesystem,
    Env,
}

/// `[mcp]`: tool servers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    #[serde(default)]
    pub servers: BTreeMap<String, RawMcpServer>,
}

/// `[mcp.servers.NAME]`: one MCP server, started as a child process (`stdio`) or reached over
/// streamable HTTP (`http`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcpServer {
    /// `stdio` or `http`. Default `stdio`.
    pub transport: Option<McpTransport>,
    /// Connect to this server. Default true.
    pub enabled: Option<bool>,
    /// stdio: the program to start.
    pub command: Option<String>,
    /// stdio: its arguments.
    pub args: Option<Vec<String>>,
    /// stdio: environment variables for the child, on top of PATH, HOME and the locale; the
    /// gateway's own environment is not passed on.
    pub env: Option<BTreeMap<String, String>>,
    /// stdio: working directory of the child. Default: the gateway's.
    pub cwd: Option<String>,
    /// http: the streamable HTTP endpoint, e.g. `http://127.0.0.1:8787/mcp`.
    pub url: Option<String>,
    /// http: headers sent with every request, e.g. `Authorization`.
    pub headers: Option<BTreeMap<String, String>>,
    /// Timeout of one request to the server (initialize, tools/list, tools/call). Default 30000 ms.
    pub timeout_ms: Option<u64>,
    /// Capabilities every tool of this server needs in code mode (`network`, `filesystem`,
    /// `env`), replacing what the tools' annotations imply. Default: from the annotations.
    pub capabilities: Option<Vec<Capability>>,
}

/// How the gateway reaches an MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum McpTransport {
    Stdio,
    Http,
}
