//! One live MCP session: starting a stdio child or opening a streamable HTTP client, then
//! `initialize` through `rmcp`.
//!
//! A stdio child is started by the gateway itself rather than by `rmcp`, for three reasons: its
//! environment is cleared down to a minimal base plus the configured variables, its stdout is
//! filtered so stray non-JSON lines are logged instead of breaking the session, and its exit status
//! is observed so a pending call fails at once with that status.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rmcp::model::ClientConfig;
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ServiceExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use super::McpError;
use crate::config::{McpServerConfig, McpServerTransport, Secret};

/// Variables of the gateway's own environment that a stdio child inherits.
const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LANGUAGE", "TZ"];

/// Largest JSON-RPC message accepted from a stdio child. A tool result can be megabytes, and JSON
/// escaping can multiply its size, so this is well above `rmcp`'s own 16 MiB default.
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// Receives server notifications for one session.
#[derive(Clone)]
pub(crate) struct Events {
    pub tools_changed: mpsc::UnboundedSender<()>,
}

impl ClientHandler for Events {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl Future<Output = ()> + Send + '_ {
        let _ = self.tools_changed.send(());
        std::future::ready(())
    }

    fn get_info(&self) -> ClientConfig {
        let mut info = ClientConfig::default();
        info.client_info.name = "xiaomaolv".into();
        info.client_info.version = env!("CARGO_PKG_VERSION").into();
        info
    }
}

/// An initialized session and, for stdio, the watch on the child's exit.
pub(crate) struct Connection {
    pub service: RunningService<RoleClient, Events>,
    /// Becomes `Some(description)` when a stdio child exits; stays `None` for HTTP.
    pub exited: watch::Receiver<Option<String>>,
    /// Dropping this kills a stdio child that is still running.
    _kill: Option<oneshot::Sender<()>>,
}

/// Starts or opens the server and runs `initialize` within the server's timeout.
pub(crate) async fn connect(
    name: &str,
    config: &McpServerConfig,
    events: Events,
) -> Result<Connection, McpError> {
    match &config.transport {
        McpServerTransport::Stdio {
            command,
            args,
            env,
            cwd,
        } => {
            connect_stdio(
                name,
                command,
                args,
                env,
                cwd.as_deref(),
                config.timeout(),
                events,
            )
            .await
        }
        McpServerTransport::Http { url, headers } => {
            connect_http(url, headers, config.timeout(), events).await
        }
    }
}

async fn connect_stdio(
    name: &str,
    command: &str,
    args: &[String],
    env: &BTreeMap<String, Secret>,
    cwd: Option<&str>,
    timeout: Duration,
    events: Events,
) -> Result<Connection, McpError> {
    let mut child = child_command(command, args, env, cwd)
        .spawn()
        .map_err(|source| McpError::Spawn {
            command: command.to_owned(),
            source,
        })?;
    let stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    tokio::spawn(log_stderr(name.to_owned(), stderr));
    let (reader, writer) = tokio::io::duplex(256 * 1024);
    tokio::spawn(filter_stdout(name.to_owned(), stdout, writer));
    let (kill_tx, kill_rx) = oneshot::channel();
    let (exit_tx, exited) = watch::channel(None);
    tokio::spawn(watch_exit(name.to_owned(), child, kill_rx, exit_tx));

    let transport = AsyncRwTransport::new(reader, stdin).with_max_line_length(MAX_LINE_BYTES);
    let handshake = events.serve(transport);
    let service = tokio::select! {
        result = tokio::time::timeout(timeout, handshake) => result
            .map_err(|_| McpError::Timeout(timeout))?
            .map_err(|err| McpError::Initialize(err.to_string()))?,
        description = wait_exit(exited.clone()) => {
            return Err(McpError::Exited(description));
        }
    };
    Ok(Connection {
        service,
        exited,
        _kill: Some(kill_tx),
    })
}

fn child_command(
    command: &str,
    args: &[String],
    env: &BTreeMap<String, Secret>,
    cwd: Option<&str>,
) -> Command {
    let mut child = Command::new(command);
    child.args(args).env_clear();
    for (key, value) in std::env::vars_os() {
        let inherited = key
            .to_str()
            .is_some_and(|k| INHERITED_ENV.contains(&k) || k.starts_with("LC_"));
        if inherited {
            child.env(key, value);
        }
    }
    for (key, value) in env {
        child.env(key, value.expose());
    }
    if let Some(cwd) = cwd {
        child.current_dir(cwd);
    }
    child
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    child
}

/// Maximum length of a logged stderr line, in bytes; the rest of a longer line is dropped.
const MAX_STDERR_LINE_BYTES: usize = 4096;
/// Stderr lines logged per server per second; the others are counted and reported.
const MAX_STDERR_LINES_PER_SECOND: u32 = 50;

async fn log_stderr(server: String, stderr: tokio::process::ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    let mut window = tokio::time::Instant::now();
    let (mut logged, mut dropped) = (0u32, 0u64);
    loop {
        line.clear();
        let limit = MAX_STDERR_LINE_BYTES as u64;
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") && line.len() == MAX_STDERR_LINE_BYTES {
            skip_rest_of_line(&mut reader).await;
        }
        if window.elapsed() >= Duration::from_secs(1) {
            if dropped > 0 {
                tracing::warn!(server = %server, dropped, "MCP server stderr lines dropped by the rate limit");
            }
            window = tokio::time::Instant::now();
            (logged, dropped) = (0, 0);
        }
        if logged >= MAX_STDERR_LINES_PER_SECOND {
            dropped += 1;
            continue;
        }
        logged += 1;
        let text = String::from_utf8_lossy(&line);
        tracing::info!(server = %server, line = %text.trim_end(), "MCP server stderr");
    }
}

async fn skip_rest_of_line(reader: &mut BufReader<tokio::process::ChildStderr>) {
    loop {
        let Ok(buffer) = reader.fill_buf().await else {
            return;
        };
        if buffer.is_empty() {
            return;
        }
        let (consumed, found) = match buffer.iter().position(|b| *b == b'\n') {
            Some(index) => (index + 1, true),
            None => (buffer.len(), false),
        };
        reader.consume(consumed);
        if found {
            return;
        }
    }
}

/// Copies JSON lines from the child's stdout to the session and logs every other line.
async fn filter_stdout(
    server: String,
    stdout: tokio::process::ChildStdout,
    mut session: tokio::io::DuplexStream,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, stdout);
    let mut line = Vec::new();
    let mut discarding = false;
    loop {
        line.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        match (&mut reader).take(limit).read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let complete = line.ends_with(b"\n");
        if discarding || line.len() > MAX_LINE_BYTES {
            if !discarding {
                tracing::warn!(server = %server, max_bytes = MAX_LINE_BYTES, "Dropping an oversized message from MCP server stdout");
            }
            discarding = !complete;
            continue;
        }
        if !forward_line(&server, &mut line, &mut session).await {
            break;
        }
    }
}

/// Forwards one stdout line if it looks like JSON, else logs it; false when the session is gone.
async fn forward_line(
    server: &str,
    line: &mut Vec<u8>,
    session: &mut tokio::io::DuplexStream,
) -> bool {
    let start = line.iter().position(|b| !b.is_ascii_whitespace());
    match start {
        Some(i) if line[i] == b'{' || line[i] == b'[' => {
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            session.write_all(line).await.is_ok()
        }
        Some(_) => {
            let text = String::from_utf8_lossy(line);
            let preview: String = text.trim_end().chars().take(200).collect();
            tracing::warn!(server = %server, line = %preview, "Ignoring a non-JSON line on MCP server stdout");
            true
        }
        None => true,
    }
}

async fn watch_exit(
    server: String,
    mut child: Child,
    kill: oneshot::Receiver<()>,
    exit_tx: watch::Sender<Option<String>>,
) {
    let status = tokio::select! {
        status = child.wait() => status,
        _ = kill => {
            let _ = child.kill().await;
            child.wait().await
        }
    };
    let description = match status {
        Ok(status) => describe_exit(status),
        Err(err) => format!("could not be waited for: {err}"),
    };
    tracing::warn!(server = %server, status = %description, "MCP server process exited");
    let _ = exit_tx.send(Some(description));
}

/// Waits until a stdio child has exited and returns how.
pub(crate) async fn wait_exit(mut exited: watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(description) = exited.borrow_and_update().clone() {
            return description;
        }
        if exited.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

fn describe_exit(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => "exited".to_owned(),
    }
}

async fn connect_http(
    url: &str,
    headers: &BTreeMap<String, Secret>,
    timeout: Duration,
    events: Events,
) -> Result<Connection, McpError> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    let mut custom = HashMap::new();
    for (name, value) in headers {
        let bearer = value.expose().strip_prefix("Bearer ");
        if name.eq_ignore_ascii_case("authorization")
            && let Some(token) = bearer
        {
            config = config.auth_header(token.trim().to_owned());
            continue;
        }
        let header_name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| McpError::Config(format!("invalid header name `{name}`")))?;
        let header_value = reqwest::header::HeaderValue::from_str(value.expose())
            .map_err(|_| McpError::Config(format!("invalid value for header `{name}`")))?;
        custom.insert(header_name, header_value);
    }
    let config = config.custom_headers(custom);
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let service = tokio::time::timeout(timeout, events.serve(transport))
        .await
        .map_err(|_| McpError::Timeout(timeout))?
        .map_err(|err| McpError::Initialize(err.to_string()))?;
    let (_, exited) = watch::channel(None);
    Ok(Connection {
        service,
        exited,
        _kill: None,
    })
}
