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

mod child;
mod limits;
mod protocol;

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::pin::pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, FuturesUnordered, Stream, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

use super::bridge::Bridge;
use super::sandbox::{EngineLimits, ProgramFailure, ProgramRun};

pub use child::serve_engine;
pub use limits::ADDRESS_SPACE_OVERHEAD_BYTES;
use limits::OsLimits;
use protocol::{ChildMessage, EngineRequest, Reply, WireRun};

/// The hidden subcommand that turns the gateway binary into an engine process.
pub const ENGINE_SUBCOMMAND: &str = "code-mode-engine";

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
