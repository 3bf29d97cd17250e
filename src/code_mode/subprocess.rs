//! Runs the engine in a child process: the gateway binary started again with a hidden subcommand,
//! under OS resource limits, with its tool calls sent back to the gateway over pipes.
//!
//! Subprocess mode puts a process boundary around the sandbox. The child starts with an empty
//! environment, so the gateway's secrets never reach it, and `setrlimit` caps its address space,
//! CPU time, open files and file writes. The bridge stays in the gateway, so the child has no MCP
//! connections either. The child runs the same [`sandbox::execute`] with the same
//! [`EngineLimits`], so exhausted budgets are reported as in process.
//!
//! The protocol is JSON lines. The gateway writes one request (code, bindings, limits) to the
//! child's stdin, then one reply per tool call. The child writes to stdout a `call` line per tool
//! call and, at the end, one `done` line carrying the run. Calls carry ids because several may be in
//! flight at once. The child's stderr is only logged. The gateway treats everything the child sends
//! as untrusted: lines are capped in length, and a malformed line, an early exit or a death by
//! signal fails the run with [`ProgramFailure::Engine`]. The gateway kills a child that is still
//! running shortly after `max_runtime`.
//!
//! Unix only: the limits are applied with `pre_exec` and `setrlimit`.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::pin;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, FuturesUnordered, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::bridge::Bridge;
use super::sandbox::{self, CallSink, EngineLimits, ProgramFailure, ProgramRun};

/// The hidden subcommand that turns the gateway binary into an engine process.
pub const ENGINE_SUBCOMMAND: &str = "code-mode-engine";

/// Address space the engine process may use besides the engine's memory limit: the mapped binary,
/// shared libraries, thread stacks and the allocator's own reservations.
// NOTE: measured with `prlimit --as` on Linux x86_64 with glibc. A trivial program needs about
// 32 MiB in a release build and 56 MiB in a debug build. A program holding 48 MiB under a 64 MiB
// engine limit needed about 48 MiB beyond the limit, for allocator slack. Another libc or
// allocator may need a different figure.
pub const ADDRESS_SPACE_OVERHEAD_BYTES: u64 = 256 * 1024 * 1024;
/// Maximum open files of the engine process: its three standard streams and a few more.
pub const MAX_OPEN_FILES: u64 = 16;
/// Time after `max_runtime` at which the gateway kills a child that has not finished. It covers
/// the child's start-up, which the child's own deadline does not include.
const DEADLINE_GRACE: Duration = Duration::from_millis(200);
/// Time a child that stopped talking gets to exit on its own before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// Maximum length of a line from the child. A longer line fails the run, so a hostile child cannot
/// make the gateway buffer without limit.
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// Maximum bytes accepted from the child in one run, for the same reason.
const MAX_OUTPUT_BYTES: usize = 4 * MAX_LINE_BYTES;
/// Bytes of the child's stderr kept for the log.
const STDERR_LOG_BYTES: usize = 4 * 1024;

/// The program started as the engine process: the gateway binary with a hidden subcommand.
#[derive(Debug, Clone)]
pub struct EngineCommand {
    pub program: PathBuf,
}

impl EngineCommand {
    pub fn current_exe() -> Self {
        Self {
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("xiaomaolv")),
        }
    }
}

/// The first line the gateway sends: the program and the limits to run it under.
#[derive(Debug, Serialize, Deserialize)]
struct EngineRequest {
    code: String,
    bindings: Vec<(String, String)>,
    limits: WireLimits,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct WireLimits {
    memory_limit_bytes: usize,
    max_stack_bytes: usize,
    max_console_chars: usize,
    max_runtime: Duration,
}

/// A line the child writes to stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ChildMessage {
    /// A tool call of the program; `arguments` is JSON text.
    Call {
        id: u64,
        index: usize,
        arguments: String,
    },
    /// The finished run; the last line the child writes.
    Done(WireRun),
}

/// The gateway's reply to one call: the JSON envelope that the sandbox's call sink returns.
#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    id: u64,
    envelope: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct WireRun {
    result: Result<Value, WireFailure>,
    console: String,
    console_truncated: bool,
    elapsed_ms: u64,
}

/// [`ProgramFailure`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
enum WireFailure {
    Syntax(String),
    Thrown(String),
    NotJson(String),
    Timeout,
    OutOfMemory,
    StackOverflow,
    Engine(String),
}

impl From<EngineLimits> for WireLimits {
    fn from(limits: EngineLimits) -> Self {
        Self {
            memory_limit_bytes: limits.memory_limit_bytes,
            max_stack_bytes: limits.max_stack_bytes,
            max_console_chars: limits.max_console_chars,
            max_runtime: limits.max_runtime,
        }
    }
}

impl From<WireLimits> for EngineLimits {
    fn from(limits: WireLimits) -> Self {
        Self {
            memory_limit_bytes: limits.memory_limit_bytes,
            max_stack_bytes: limits.max_stack_bytes,
            max_console_chars: limits.max_console_chars,
            max_runtime: limits.max_runtime,
        }
    }
}

impl From<ProgramFailure> for WireFailure {
    fn from(failure: ProgramFailure) -> Self {
        match failure {
            ProgramFailure::Syntax(message) => Self::Syntax(message),
            ProgramFailure::Thrown(message) => Self::Thrown(message),
            ProgramFailure::NotJson(message) => Self::NotJson(message),
            ProgramFailure::Timeout => Self::Timeout,
            ProgramFailure::OutOfMemory => Self::OutOfMemory,
            ProgramFailure::StackOverflow => Self::StackOverflow,
            ProgramFailure::Engine(message) => Self::Engine(message),
        }
    }
}

impl From<WireFailure> for ProgramFailure {
    fn from(failure: WireFailure) -> Self {
        match failure {
            WireFailure::Syntax(message) => Self::Syntax(message),
            WireFailure::Thrown(message) => Self::Thrown(message),
            WireFailure::NotJson(message) => Self::NotJson(message),
            WireFailure::Timeout => Self::Timeout,
            WireFailure::OutOfMemory => Self::OutOfMemory,
            WireFailure::StackOverflow => Self::StackOverflow,
            WireFailure::Engine(message) => Self::Engine(message),
        }
    }
}

impl From<ProgramRun> for WireRun {
    fn from(run: ProgramRun) -> Self {
        Self {
            result: run.result.map_err(WireFailure::from),
            console: run.console,
            console_truncated: run.console_truncated,
            elapsed_ms: run.elapsed_ms,
        }
    }
}

impl From<WireRun> for ProgramRun {
    fn from(run: WireRun) -> Self {
        Self {
            result: run.result.map_err(ProgramFailure::from),
            console: run.console,
            console_truncated: run.console_truncated,
            elapsed_ms: run.elapsed_ms,
        }
    }
}

/// Failure of a run in a child process that ended without the child's result.
#[derive(Debug, thiserror::Error)]
enum EngineError {
    #[error("cannot start the engine process `{program}`: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("the engine process was started without its {0} pipe")]
    MissingPipe(&'static str),
    #[error("the engine process did not finish by the deadline")]
    Deadline,
    #[error("failed to write to the engine process: {0}")]
    Write(io::Error),
    #[error("failed to read from the engine process: {0}")]
    Read(io::Error),
    #[error("the engine process sent a line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("the engine process sent more than {MAX_OUTPUT_BYTES} bytes")]
    TooMuchOutput,
    #[error("the engine process sent an invalid line {excerpt:?}: {source}")]
    Malformed {
        excerpt: String,
        source: serde_json::Error,
    },
    #[error("the engine process closed its stdout before sending a result")]
    OutputClosed,
    #[error("the engine process {0} before sending a result")]
    Exited(String),
}

impl EngineError {
    fn into_failure(self) -> ProgramFailure {
        match self {
            Self::Deadline => ProgramFailure::Timeout,
            other => ProgramFailure::Engine(other.to_string()),
        }
    }
}

/// Runs `code` in a child process started from `engine` and waits for it. `bridge` runs the tool
/// calls, and `bindings[i]` is the `(server, tool)` identifier pair of binding `i`.
pub async fn run_program(
    engine: &EngineCommand,
    code: &str,
    bindings: Vec<(String, String)>,
    bridge: Arc<Bridge>,
    limits: EngineLimits,
) -> ProgramRun {
    let started = Instant::now();
    let request = EngineRequest {
        code: code.to_owned(),
        bindings,
        limits: limits.into(),
    };
    match supervise(engine, &request, &bridge, limits).await {
        Ok(run) => run,
        Err(err) => ProgramRun {
            result: Err(err.into_failure()),
            console: String::new(),
            console_truncated: false,
            elapsed_ms: started.elapsed().as_millis() as u64,
        },
    }
}

/// Starts the child, talks to it until it sends its run or the deadline passes, and reaps it.
async fn supervise(
    engine: &EngineCommand,
    request: &EngineRequest,
    bridge: &Bridge,
    limits: EngineLimits,
) -> Result<ProgramRun, EngineError> {
    let mut child = spawn(engine, &limits)?;
    let pid = child.id();
    let stderr = child.stderr.take().map(|pipe| tokio::spawn(capture(pipe)));
    let deadline = Instant::now() + limits.max_runtime + DEADLINE_GRACE;
    let talk = converse(&mut child, request, bridge);
    let outcome = tokio::time::timeout_at(deadline, talk)
        .await
        .unwrap_or(Err(EngineError::Deadline));
    let outcome = settle(&mut child, outcome).await;
    if let Some(task) = stderr {
        log_stderr(pid, task).await;
    }
    if let Err(err) = &outcome
        && !matches!(err, EngineError::Deadline)
    {
        tracing::warn!(pid, error = %err, "The code-mode engine process failed.");
    }
    outcome.map(ProgramRun::from)
}

fn spawn(engine: &EngineCommand, limits: &EngineLimits) -> Result<Child, EngineError> {
    let os_limits = OsLimits::for_run(limits);
    let mut command = Command::new(&engine.program);
    command
        .arg(ENGINE_SUBCOMMAND)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec. It only calls getrlimit and
    // setrlimit, which are plain system calls, and it allocates nothing.
    unsafe {
        command.pre_exec(move || os_limits.apply());
    }
    command.spawn().map_err(|source| EngineError::Spawn {
        program: engine.program.display().to_string(),
        source,
    })
}

/// Sends the request, runs the child's tool calls through the bridge, and returns the child's run.
async fn converse(
    child: &mut Child,
    request: &EngineRequest,
    bridge: &Bridge,
) -> Result<WireRun, EngineError> {
    let mut stdin = child
        .stdin
        .take()
        .ok_or(EngineError::MissingPipe("stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or(EngineError::MissingPipe("stdout"))?;
    write_line(&mut stdin, request).await?;
    let mut messages = pin!(messages(stdout));
    let mut calls = FuturesUnordered::new();
    loop {
        tokio::select! {
            message = messages.next() => match message.ok_or(EngineError::OutputClosed)?? {
                ChildMessage::Done(run) => return Ok(run),
                ChildMessage::Call { id, index, arguments } => {
                    calls.push(run_call(bridge, id, index, arguments));
                }
            },
            Some(reply) = calls.next(), if !calls.is_empty() => {
                write_line(&mut stdin, &reply).await?;
            }
        }
    }
}

async fn run_call(bridge: &Bridge, id: u64, index: usize, arguments: String) -> Reply {
    let envelope = bridge.call_json(index, &arguments).await;
    Reply { id, envelope }
}

async fn write_line(stdin: &mut ChildStdin, message: &impl Serialize) -> Result<(), EngineError> {
    let mut line = serde_json::to_vec(message).expect("protocol messages serialize to JSON");
    line.push(b'\n');
    stdin.write_all(&line).await.map_err(EngineError::Write)
}

/// Turns the child's stdout into a stream of messages that ends at end of file or after an error.
fn messages(stdout: ChildStdout) -> impl Stream<Item = Result<ChildMessage, EngineError>> {
    let reader = LineReader {
        inner: BufReader::new(stdout),
        line: Vec::new(),
        received: 0,
    };
    stream::unfold(Some(reader), async |state| {
        let mut reader = state?;
        match reader.next_message().await {
            Ok(Some(message)) => Some((Ok(message), Some(reader))),
            Ok(None) => None,
            Err(err) => Some((Err(err), None)),
        }
    })
}

/// Reads the child's lines under [`MAX_LINE_BYTES`] and [`MAX_OUTPUT_BYTES`].
struct LineReader {
    inner: BufReader<ChildStdout>,
    line: Vec<u8>,
    received: usize,
}

impl LineReader {
    /// Reads the next message, or `None` at end of file. An unterminated last line counts as end
    /// of file, because the child died while writing it and its exit status explains more.
    async fn next_message(&mut self) -> Result<Option<ChildMessage>, EngineError> {
        self.line.clear();
        let read = (&mut self.inner)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.line)
            .await
            .map_err(EngineError::Read)?;
        self.received += read;
        if self.received > MAX_OUTPUT_BYTES {
            return Err(EngineError::TooMuchOutput);
        }
        if self.line.last() != Some(&b'\n') {
            return if read > MAX_LINE_BYTES {
                Err(EngineError::LineTooLong)
            } else {
                Ok(None)
            };
        }
        serde_json::from_slice(&self.line)
            .map(Some)
            .map_err(|source| EngineError::Malformed {
                excerpt: excerpt(&self.line),
                source,
            })
    }
}

/// Returns the start of a line for error messages.
fn excerpt(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(120)]);
    text.trim_end().to_owned()
}

/// Waits for or kills the child after the conversation, and explains a child that stopped talking
/// by its exit status.
async fn settle(
    child: &mut Child,
    outcome: Result<WireRun, EngineError>,
) -> Result<WireRun, EngineError> {
    match outcome {
        Ok(run) => {
            if tokio::time::timeout(EXIT_GRACE, child.wait())
                .await
                .is_err()
            {
                kill(child).await;
            }
            Ok(run)
        }
        Err(err @ (EngineError::OutputClosed | EngineError::Write(_))) => {
            match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
                Ok(Ok(status)) => Err(EngineError::Exited(describe_exit(status))),
                _ => {
                    kill(child).await;
                    Err(err)
                }
            }
        }
        Err(err) => {
            kill(child).await;
            Err(err)
        }
    }
}

async fn kill(child: &mut Child) {
    if let Err(err) = child.kill().await {
        tracing::warn!(pid = child.id(), error = %err, "Failed to kill the code-mode engine process.");
    }
}

/// Describes the exit status in words, naming the signal that killed the child if one did.
fn describe_exit(status: ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        return format!("was killed by signal {signal} ({})", signal_name(signal));
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => format!("ended ({status})"),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGABRT => "SIGABRT, possibly out of address space",
        libc::SIGTERM => "SIGTERM",
        libc::SIGPIPE => "SIGPIPE",
        _ => "another signal",
    }
}

/// Reads the child's stderr to its end and returns the first [`STDERR_LOG_BYTES`] with the total
/// byte count. Reading to the end keeps a chatty child from blocking on a full pipe.
async fn capture(mut stderr: ChildStderr) -> (Vec<u8>, usize) {
    let mut kept = Vec::new();
    let mut total = 0;
    let mut chunk = [0u8; 4096];
    while let Ok(read @ 1..) = stderr.read(&mut chunk).await {
        total += read;
        let room = STDERR_LOG_BYTES - kept.len();
        kept.extend_from_slice(&chunk[..read.min(room)]);
    }
    (kept, total)
}

async fn log_stderr(pid: Option<u32>, task: tokio::task::JoinHandle<(Vec<u8>, usize)>) {
    let abort = task.abort_handle();
    let Ok(Ok((kept, total))) = tokio::time::timeout(EXIT_GRACE, task).await else {
        abort.abort();
        return;
    };
    if total > 0 {
        let stderr = String::from_utf8_lossy(&kept);
        tracing::warn!(pid, bytes = total, stderr = %stderr, "The code-mode engine process wrote to stderr.");
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

/// The OS limits of one engine process.
#[derive(Debug, Clone, Copy)]
struct OsLimits {
    address_space_bytes: u64,
    cpu_seconds: u64,
}

impl OsLimits {
    fn for_run(limits: &EngineLimits) -> Self {
        let runtime = limits.max_runtime;
        let whole_seconds = runtime.as_secs() + u64::from(runtime.subsec_nanos() > 0);
        Self {
            address_space_bytes: (limits.memory_limit_bytes as u64)
                .saturating_add(ADDRESS_SPACE_OVERHEAD_BYTES),
            // The gateway kills the child at the deadline; CPU time only catches a child that
            // outlives the gateway. The hard limit, a second later, turns SIGXCPU into SIGKILL.
            cpu_seconds: whole_seconds + 1,
        }
    }

    /// Applies the limits to the calling process. Runs between fork and exec, so it must stay
    /// async-signal-safe: no allocation, no locks.
    fn apply(&self) -> io::Result<()> {
        let address_space = self.address_space_bytes;
        set_limit(libc::RLIMIT_AS, address_space, address_space)?;
        set_limit(libc::RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + 1)?;
        set_limit(libc::RLIMIT_CORE, 0, 0)?;
        set_limit(libc::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES)?;
        set_limit(libc::RLIMIT_FSIZE, 0, 0)
    }
}

/// Sets a soft and a hard limit, neither above the current hard limit (raising it needs
/// privileges the gateway should not have).
fn set_limit(resource: Resource, soft: u64, hard: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `current` is a valid rlimit for getrlimit to fill in.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let hard = (hard as libc::rlim_t).min(current.rlim_max);
    let limit = libc::rlimit {
        rlim_cur: (soft as libc::rlim_t).min(hard),
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid rlimit for setrlimit to read.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Failure of the engine process before or after running its program.
#[derive(Debug, thiserror::Error)]
enum ChildError {
    #[error("failed to set up the protocol output: {0}")]
    Output(io::Error),
    #[error("failed to read the request: {0}")]
    ReadRequest(io::Error),
    #[error("invalid request: {0}")]
    Request(serde_json::Error),
    #[error("failed to start the reply reader: {0}")]
    Thread(io::Error),
    #[error("failed to build the async runtime: {0}")]
    Runtime(io::Error),
    #[error("failed to send the result: {0}")]
    Write(io::Error),
}

/// Runs one program as the engine process and returns the process's exit code. The hidden
/// subcommand calls this on the main thread, before any async runtime exists.
pub fn serve_engine() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xiaomaolv code-mode engine: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), ChildError> {
    let output = protocol_output().map_err(ChildError::Output)?;
    let request = read_request()?;
    let link = Arc::new(GatewayLink::new(output));
    let reader = link.clone();
    std::thread::Builder::new()
        .name("engine-replies".to_owned())
        .stack_size(256 * 1024)
        .spawn(move || reader.read_replies())
        .map_err(ChildError::Thread)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(ChildError::Runtime)?;
    let run = runtime.block_on(sandbox::execute(
        &request.code,
        &request.bindings,
        link.clone().sink(),
        request.limits.into(),
    ));
    link.send(&ChildMessage::Done(run.into()))
        .map_err(ChildError::Write)
}

/// Takes stdout for the protocol and points file descriptor 1 at stderr, so that anything else
/// that prints, such as a dependency, cannot corrupt the protocol.
fn protocol_output() -> io::Result<std::fs::File> {
    let protocol = io::stdout().as_fd().try_clone_to_owned()?;
    // SAFETY: dup2 only swaps standard descriptors, which stay open for the life of the process.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::fs::File::from(protocol))
}

fn read_request() -> Result<EngineRequest, ChildError> {
    let mut line = String::new();
    io::stdin()
        .read_line(&mut line)
        .map_err(ChildError::ReadRequest)?;
    serde_json::from_str(&line).map_err(ChildError::Request)
}

/// The child's side of the pipes: sends calls, and hands each reply to the call waiting for it.
struct GatewayLink {
    output: Mutex<std::fs::File>,
    /// Calls waiting for a reply, by id. `None` once stdin is closed and no reply can come.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<String>>>>,
    next_id: AtomicU64,
}

impl GatewayLink {
    fn new(output: std::fs::File) -> Self {
        Self {
            output: Mutex::new(output),
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }

    fn sink(self: Arc<Self>) -> CallSink {
        Arc::new(move |index, arguments| {
            let link = self.clone();
            Box::pin(async move { link.call(index, arguments).await })
        })
    }

    /// Sends one call and waits for its reply. A call that cannot reach the gateway is rejected.
    async fn call(&self, index: usize, arguments: String) -> String {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        if !self.register(id, sender) {
            return rejection("the gateway closed the connection");
        }
        let message = ChildMessage::Call {
            id,
            index,
            arguments,
        };
        if let Err(err) = self.send(&message) {
            self.lock_pending()
                .as_mut()
                .map(|pending| pending.remove(&id));
            return rejection(&format!("failed to send the call to the gateway: {err}"));
        }
        receiver
            .await
            .unwrap_or_else(|_| rejection("the gateway closed the connection before replying"))
    }

    /// Registers a call before it is sent, so that its reply always finds it.
    fn register(&self, id: u64, sender: oneshot::Sender<String>) -> bool {
        let mut pending = self.lock_pending();
        let Some(pending) = pending.as_mut() else {
            return false;
        };
        pending.insert(id, sender);
        true
    }

    fn send(&self, message: &ChildMessage) -> io::Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        let mut output = self
            .output
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        output.write_all(&line)
    }

    /// Hands replies to their calls until stdin ends, then rejects the calls still waiting.
    fn read_replies(&self) {
        for line in io::stdin().lines() {
            let Ok(line) = line else { break };
            let reply: Reply = match serde_json::from_str(&line) {
                Ok(reply) => reply,
                Err(err) => {
                    eprintln!("xiaomaolv code-mode engine: ignoring an invalid reply: {err}");
                    continue;
                }
            };
            let waiting = self
                .lock_pending()
                .as_mut()
                .and_then(|p| p.remove(&reply.id));
            if let Some(sender) = waiting {
                // The call is gone only if the run already ended; nothing is waiting then.
                let _ = sender.send(reply.envelope);
            }
        }
        self.lock_pending().take();
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<String>>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Builds the envelope of a call that failed before reaching a tool.
fn rejection(message: &str) -> String {
    json!({ "ok": false, "error": message }).to_string()
}
