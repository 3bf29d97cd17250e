//! The validated configuration: every default applied, every value checked.
//!
//! Handlers and services only see these types. They serialize to TOML for `check-config`, with
//! secrets masked by [`Secret`]'s own `Serialize`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::ConfigError;
use super::code_mode::CodeModeConfig;
use super::raw::{
    Capability, LogFormat, McpTransport, ProviderKind, RawAgent, RawApp, RawChannels, RawConfig,
    RawMcp, RawMcpServer, RawProvider, RawStore,
};
use super::secret::{Secret, mask_url_password};
use super::store_url::store_url_error;

/// The gateway's settings after validation.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub app: AppConfig,
    pub store: StoreConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub channels: ChannelsConfig,
    pub agent: AgentConfig,
    pub mcp: McpConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppConfig {
    pub bind: SocketAddr,
    pub default_provider: String,
    pub log_format: LogFormat,
    pub shutdown_grace_ms: u64,
    pub max_concurrent_turns: u32,
    /// 0 to pick by the number of CPUs, see `cli::serve::runtime_plan`.
    pub worker_threads: u16,
}

#[derive(Clone, Serialize)]
pub struct StoreConfig {
    /// A PostgreSQL URL may carry a password, so `Debug` and `Serialize` print it masked.
    #[serde(serialize_with = "serialize_masked_url")]
    pub url: String,
    pub max_connections: u32,
    pub busy_timeout_ms: u64,
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("url", &mask_url_password(&self.url))
            .field("max_connections", &self.max_connections)
            .field("busy_timeout_ms", &self.busy_timeout_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    #[serde(serialize_with = "serialize_masked_url")]
    pub base_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    pub model: String,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_retries: u32,
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelsConfig {
    pub http: HttpChannelConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpChannelConfig {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_bearer_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diag_bearer_token: Option<Secret>,
    pub diag_rate_limit_per_minute: u32,
    pub trusted_proxies: Vec<IpNet>,
    pub max_text_bytes: usize,
    pub max_body_bytes: usize,
    pub header_read_timeout_ms: u64,
    pub http2_keep_alive_interval_ms: u64,
    pub http2_idle_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    pub history_limit: u32,
    pub turn_timeout_ms: u64,
    pub max_tool_iterations: u32,
    pub max_parallel_tool_calls: u32,
    pub max_tool_result_chars: usize,
    pub code_mode: CodeModeConfig,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct McpConfig {
    pub servers: BTreeMap<String, McpServerConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct McpServerConfig {
    pub enabled: bool,
    pub timeout_ms: u64,
    /// Capabilities every tool of the server needs in code mode; `None`: from the annotations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<Capability>>,
    #[serde(flatten)]
    pub transport: McpServerTransport,
}

/// How to reach one MCP server. Environment and header values may carry credentials, so all of
/// them are kept as [`Secret`]s and print masked.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "transport", rename_all = "lowercase")]
pub enum McpServerTransport {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, Secret>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
    },
    Http {
        #[serde(serialize_with = "serialize_masked_url")]
        url: String,
        headers: BTreeMap<String, Secret>,
    },
}

impl McpServerConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn transport_name(&self) -> &'static str {
        match self.transport {
            McpServerTransport::Stdio { .. } => "stdio",
            McpServerTransport::Http { .. } => "http",
        }
    }
}

impl AppConfig {
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

impl HttpChannelConfig {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    pub fn http2_keep_alive_interval(&self) -> Duration {
        Duration::from_millis(self.http2_keep_alive_interval_ms)
    }

    pub fn http2_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.http2_idle_timeout_ms)
    }
}

impl StoreConfig {
    pub fn busy_timeout(&self) -> Duration {
        Duration::from_millis(self.busy_timeout_ms)
    }
}

impl AgentConfig {
    pub fn turn_timeout(&self) -> Duration {
        Duration::from_millis(self.turn_timeout_ms)
    }
}

fn serialize_masked_url<S: serde::Serializer>(url: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&mask_url_password(url))
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// Rejects zero for a setting where zero would disable the gateway rather than mean "none".
fn positive(key: &str, value: u64) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(invalid(key, "must be greater than 0"));
    }
    Ok(value)
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let providers = raw
            .providers
            .into_iter()
            .map(|(name, provider)| validate_provider(&name, provider).map(|p| (name, p)))
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        Ok(Self {
            app: validate_app(raw.app, &providers)?,
            store: validate_store(raw.store)?,
            providers,
            channels: ChannelsConfig {
                http: validate_http(raw.channels)?,
            },
            agent: validate_agent(raw.agent)?,
            mcp: validate_mcp(raw.mcp)?,
        })
    }
}

fn validate_app(
    raw: RawApp,
    providers: &BTreeMap<String, ProviderConfig>,
) -> Result<AppConfig, ConfigError> {
    let bind_text = raw.bind.unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let bind = bind_text.parse::<SocketAddr>().map_err(|_| {
        invalid(
            "app.bind",
            format!("`{bind_text}` is not an IP:PORT address, e.g. 127.0.0.1:8080"),
        )
    })?;
    let default_provider = match raw.default_provider {
        Some(name) if providers.contains_key(&name) => name,
        Some(name) => {
            let known = providers.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(invalid(
                "app.default_provider",
                format!("no [providers.{name}] table; configured providers: [{known}]"),
            ));
        }
        None => match providers.keys().collect::<Vec<_>>().as_slice() {
            [only] => (*only).clone(),
            [] => {
                return Err(invalid(
                    "providers",
                    "no provider configured; add a [providers.NAME] table",
                ));
            }
            _ => {
                return Err(invalid(
                    "app.default_provider",
                    "several providers are configured; name the one that answers messages",
                ));
            }
        },
    };
    Ok(AppConfig {
        bind,
        default_provider,
        log_format: raw.log_format.unwrap_or_default(),
        shutdown_grace_ms: raw.shutdown_grace_ms.unwrap_or(30_000),
        max_concurrent_turns: validate_max_turns(raw.max_concurrent_turns)?,
        worker_threads: validate_worker_threads(raw.worker_threads)?,
    })
}

/// Most worker threads `app.worker_threads` accepts.
const MAX_WORKER_THREADS: u16 = 512;

fn validate_worker_threads(value: Option<u16>) -> Result<u16, ConfigError> {
    match value {
        Some(value) if value > MAX_WORKER_THREADS => Err(invalid(
            "app.worker_threads",
            format!(
                "{value} is above the maximum of {MAX_WORKER_THREADS}; use 0 for one thread per \
                 CPU, or a smaller number"
            ),
        )),
        value => Ok(value.unwrap_or(0)),
    }
}

/// Default of `app.max_concurrent_turns`.
const DEFAULT_MAX_CONCURRENT_TURNS: u32 = 1024;

fn validate_max_turns(value: Option<u32>) -> Result<u32, ConfigError> {
    match value {
        None => Ok(DEFAULT_MAX_CONCURRENT_TURNS),
        Some(0) => Err(invalid(
            "app.max_concurrent_turns",
            format!(
                "must be at least 1, because 0 would reject every message; set the number of \
                 turns that may run at once, or remove the key for the default of \
                 {DEFAULT_MAX_CONCURRENT_TURNS}"
            ),
        )),
        Some(value) => Ok(value),
    }
}

fn validate_store(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    let url = raw
        .url
        .unwrap_or_else(|| "sqlite://xiaomaolv.db".to_owned());
    if let Some(message) = store_url_error(&url) {
        return Err(invalid("store.url", message));
    }
    let max_connections = raw.max_connections.unwrap_or(8);
    positive("store.max_connections", u64::from(max_connections))?;
    Ok(StoreConfig {
        url,
        max_connections,
        busy_timeout_ms: at_most(
            "store.busy_timeout_ms",
            raw.busy_timeout_ms.unwrap_or(5_000),
            MAX_BUSY_TIMEOUT_MS,
        )?,
    })
}

/// SQLite takes its busy timeout as a 32-bit count of milliseconds; ten minutes is far beyond any
/// useful wait and well inside that range.
const MAX_BUSY_TIMEOUT_MS: u64 = 600_000;

fn at_most(key: &str, value: u64, max: u64) -> Result<u64, ConfigError> {
    if value > max {
        return Err(invalid(
            key,
            format!("{value} is above the maximum of {max}"),
        ));
    }
    Ok(value)
}

/// Accepts an empty token (not configured) or visible ASCII without spaces, the only tokens a
/// client can send in an `Authorization: Bearer` header and have compared exactly.
fn bearer_token(key: &str, value: Option<String>) -> Result<Option<Secret>, ConfigError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            key,
            "must be visible ASCII characters without spaces, or empty to disable it",
        ));
    }
    Ok(Secret::non_empty(value))
}

fn validate_provider(name: &str, raw: RawProvider) -> Result<ProviderConfig, ConfigError> {
    let key = |field: &str| format!("providers.{name}.{field}");
    let base_url = raw.base_url.trim_end_matches('/').to_owned();
    match reqwest::Url::parse(&base_url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        _ => {
            return Err(invalid(
                key("base_url"),
                format!(
                    "`{}` is not an http(s) URL, e.g. http://127.0.0.1:8081/v1",
                    mask_url_password(&base_url)
                ),
            ));
        }
    }
    if raw.model.trim().is_empty() {
        return Err(invalid(key("model"), "must not be empty"));
    }
    if let Some(t) = raw.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(invalid(
            key("temperature"),
            format!("{t} is outside 0.0..=2.0"),
        ));
    }
    let initial = positive(
        &key("retry_initial_backoff_ms"),
        raw.retry_initial_backoff_ms.unwrap_or(200),
    )?;
    let max = positive(
        &key("retry_max_backoff_ms"),
        raw.retry_max_backoff_ms.unwrap_or(5_000),
    )?;
    if max < initial {
        return Err(invalid(
            key("retry_max_backoff_ms"),
            format!("{max} is below retry_initial_backoff_ms ({initial})"),
        ));
    }
    Ok(ProviderConfig {
        kind: raw.kind,
        base_url,
        api_key: raw.api_key.and_then(Secret::non_empty),
        model: raw.model,
        connect_timeout_ms: positive(
            &key("connect_timeout_ms"),
            raw.connect_timeout_ms.unwrap_or(5_000),
        )?,
        request_timeout_ms: positive(
            &key("request_timeout_ms"),
            raw.request_timeout_ms.unwrap_or(60_000),
        )?,
        max_retries: raw.max_retries.unwrap_or(2),
        retry_initial_backoff_ms: initial,
        retry_max_backoff_ms: max,
        temperature: raw.temperature,
        max_tokens: raw.max_tokens,
        max_response_bytes: positive(
            &key("max_response_bytes"),
            raw.max_response_bytes.unwrap_or(8 * 1024 * 1024) as u64,
        )? as usize,
    })
}

fn validate_http(raw: RawChannels) -> Result<HttpChannelConfig, ConfigError> {
    let raw = raw.http;
    let max_text_bytes = raw.max_text_bytes.unwrap_or(32 * 1024);
    let max_body_bytes = raw.max_body_bytes.unwrap_or(64 * 1024);
    positive("channels.http.max_text_bytes", max_text_bytes as u64)?;
    if max_body_bytes < max_text_bytes {
        return Err(invalid(
            "channels.http.max_body_bytes",
            format!(
                "{max_body_bytes} is below max_text_bytes ({max_text_bytes}); a text of the allowed size would not fit"
            ),
        ));
    }
    Ok(HttpChannelConfig {
        enabled: raw.enabled.unwrap_or(true),
        api_bearer_token: bearer_token("channels.http.api_bearer_token", raw.api_bearer_token)?,
        diag_bearer_token: bearer_token("channels.http.diag_bearer_token", raw.diag_bearer_token)?,
        diag_rate_limit_per_minute: raw.diag_rate_limit_per_minute.unwrap_or(120),
        trusted_proxies: trusted_proxies(raw.trusted_proxies.unwrap_or_default())?,
        max_text_bytes,
        max_body_bytes,
        header_read_timeout_ms: positive(
            "channels.http.header_read_timeout_ms",
            raw.header_read_timeout_ms.unwrap_or(10_000),
        )?,
        http2_keep_alive_interval_ms: positive(
            "channels.http.http2_keep_alive_interval_ms",
            raw.http2_keep_alive_interval_ms.unwrap_or(20_000),
        )?,
        http2_idle_timeout_ms: positive(
            "channels.http.http2_idle_timeout_ms",
            raw.http2_idle_timeout_ms.unwrap_or(60_000),
        )?,
    })
}

/// Parses each entry as a CIDR block or a single address, which becomes a /32 or /128 block.
fn trusted_proxies(entries: Vec<String>) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let text = entry.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    invalid(
                        format!("channels.http.trusted_proxies[{index}]"),
                        format!(
                            "`{entry}` is not an IP address or CIDR block, e.g. 10.0.0.5 or 10.0.0.0/8"
                        ),
                    )
                })
        })
        .collect()
}

fn validate_agent(raw: RawAgent) -> Result<AgentConfig, ConfigError> {
    let turn_timeout_ms = positive(
        "agent.turn_timeout_ms",
        raw.turn_timeout_ms.unwrap_or(120_000),
    )?;
    Ok(AgentConfig {
        system_prompt: raw.system_prompt.filter(|p| !p.trim().is_empty()),
        history_limit: raw.history_limit.unwrap_or(40),
        turn_timeout_ms,
        max_tool_iterations: positive_u32(
            "agent.max_tool_iterations",
            raw.max_tool_iterations.unwrap_or(8),
        )?,
        max_parallel_tool_calls: positive_u32(
            "agent.max_parallel_tool_calls",
            raw.max_parallel_tool_calls.unwrap_or(4),
        )?,
        max_tool_result_chars: validate_result_chars(raw.max_tool_result_chars.unwrap_or(20_000))?,
        code_mode: super::code_mode::validate(raw.code_mode, turn_timeout_ms)?,
    })
}

fn positive_u32(key: &str, value: u32) -> Result<u32, ConfigError> {
    positive(key, value.into()).map(|_| value)
}

/// Smallest `max_tool_result_chars` that leaves room for the truncation marker and some text.
const MIN_TOOL_RESULT_CHARS: usize = 200;

fn validate_result_chars(value: usize) -> Result<usize, ConfigError> {
    if value < MIN_TOOL_RESULT_CHARS {
        return Err(invalid(
            "agent.max_tool_result_chars",
            format!("{value} is below the minimum of {MIN_TOOL_RESULT_CHARS}"),
        ));
    }
    Ok(value)
}

fn validate_mcp(raw: RawMcp) -> Result<McpConfig, ConfigError> {
    let servers = raw
        .servers
        .into_iter()
        .map(|(name, server)| validate_mcp_server(&name, server).map(|s| (name, s)))
        .collect::<Result<_, _>>()?;
    Ok(McpConfig { servers })
}

/// Checks an MCP server name, which becomes the prefix of tool names (`server__tool`).
pub fn validate_server_name(name: &str) -> Result<(), String> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if name.is_empty() || name.len() > 32 || !valid_chars || name.contains("__") {
        return Err(format!(
            "invalid server name `{name}`; use 1 to 32 letters, digits, `-` or `_`, without `__`"
        ));
    }
    Ok(())
}

/// Validates one `[mcp.servers.NAME]` table on its own, as `mcp add` does before writing it.
pub fn validate_mcp_server(name: &str, raw: RawMcpServer) -> Result<McpServerConfig, ConfigError> {
    let key = |field: &str| format!("mcp.servers.{name}.{field}");
    validate_server_name(name)
        .map_err(|message| invalid(format!("mcp.servers.{name}"), message))?;
    let transport = match raw.transport.unwrap_or(McpTransport::Stdio) {
        McpTransport::Stdio => stdio_transport(name, &raw)?,
        McpTransport::Http => http_transport(name, &raw)?,
    };
    Ok(McpServerConfig {
        enabled: raw.enabled.unwrap_or(true),
        timeout_ms: positive(&key("timeout_ms"), raw.timeout_ms.unwrap_or(30_000))?,
        capabilities: raw.capabilities.map(|mut c| {
            c.sort();
            c.dedup();
            c
        }),
        transport,
    })
}

fn misplaced(name: &str, field: &str, transport: &str) -> ConfigError {
    invalid(
        format!("mcp.servers.{name}.{field}"),
        format!(
            "`{field}` only applies to transport = \"{transport}\"; remove it or change `transport`"
        ),
    )
}

fn stdio_transport(name: &str, raw: &RawMcpServer) -> Result<McpServerTransport, ConfigError> {
    if raw.url.is_some() {
        return Err(misplaced(name, "url", "http"));
    }
    if raw.headers.is_some() {
        return Err(misplaced(name, "headers", "http"));
    }
    let command = raw
        .command
        .clone()
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            invalid(
                format!("mcp.servers.{name}.command"),
                "missing; a stdio server needs the program to start",
            )
        })?;
    Ok(McpServerTransport::Stdio {
        command,
        args: raw.args.clone().unwrap_or_default(),
        env: secret_map(raw.env.clone()),
        cwd: raw.cwd.clone(),
    })
}

fn http_transport(name: &str, raw: &RawMcpServer) -> Result<McpServerTransport, ConfigError> {
    let stdio_fields = [
        ("command", raw.command.is_some()),
        ("args", raw.args.is_some()),
        ("env", raw.env.is_some()),
        ("cwd", raw.cwd.is_some()),
    ];
    if let Some((field, _)) = stdio_fields.iter().find(|(_, present)| *present) {
        return Err(misplaced(name, field, "stdio"));
    }
    let key = format!("mcp.servers.{name}.url");
    let url = raw
        .url
        .clone()
        .ok_or_else(|| invalid(&key, "missing; an http server needs its endpoint URL"))?;
    match reqwest::Url::parse(&url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
        _ => return Err(invalid(key, format!("`{url}` is not an http(s) URL"))),
    }
    for (header, text) in raw.headers.iter().flatten() {
        let key = format!("mcp.servers.{name}.headers.{header}");
        if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(invalid(key, "is not a valid HTTP header name"));
        }
        if reqwest::header::HeaderValue::from_str(text).is_err() {
            return Err(invalid(
                key,
                "has a value that cannot be sent in an HTTP header (a line break or control character)",
            ));
        }
    }
    Ok(McpServerTransport::Http {
        url,
        headers: secret_map(raw.headers.clone()),
    })
}

fn secret_map(map: Option<BTreeMap<String, String>>) -> BTreeMap<String, Secret> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, Secret::new(v)))
        .collect()
}
