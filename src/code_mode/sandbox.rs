//! The JavaScript sandbox: one fresh QuickJS runtime per program, under memory, stack and time
//! limits, with nothing but `tools` and a captured `console` added to the language.
//!
//! The engine runs on a blocking thread, never on an async worker, so a program that spins does
//! not stall other requests. Time is enforced twice: QuickJS's interrupt handler stops running
//! JavaScript at the deadline (`while(true){}`, a runaway regex, an endless chain of promises),
//! and the wait for tool calls is cut at the same deadline. The runtime is dropped after the run,
//! because an out-of-memory state can leave a context unusable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rquickjs::function::Async;
use rquickjs::{AsyncContext, AsyncRuntime, CatchResultExt, CaughtError, Ctx, Function, Promise};
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

/// The handler of a program's tool call: binding index and arguments as JSON in, the JSON envelope out.
pub type CallSink = Arc<dyn Fn(usize, String) -> BoxFuture<'static, String> + Send + Sync>;

/// Limits of the engine itself; tool budgets live in the bridge.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    pub memory_limit_bytes: usize,
    pub max_stack_bytes: usize,
    pub max_console_chars: usize,
    pub max_runtime: Duration,
}

/// The reason a program did not return a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ProgramFailure {
    /// The code does not parse as the body of an async function.
    Syntax(String),
    /// The program threw, or a promise it awaited rejected.
    Thrown(String),
    /// The returned value cannot be turned into JSON.
    NotJson(String),
    /// `max_runtime_ms` ran out.
    Timeout,
    /// The engine's memory limit was reached.
    OutOfMemory,
    /// The program recursed past the stack limit.
    StackOverflow,
    /// The engine could not be set up or failed outside the program.
    Engine(String),
}

/// The result, console output and duration of one program run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramRun {
    pub result: Result<Value, ProgramFailure>,
    pub console: String,
    pub console_truncated: bool,
    pub elapsed_ms: u64,
}

const HARNESS: &str = include_str!("harness.js");

/// Output the program printed, kept up to a limit.
struct Console {
    text: String,
    limit: usize,
    chars: usize,
    truncated: bool,
}

impl Console {
    fn push(&mut self, level: &str, line: &str) {
        if self.truncated {
            return;
        }
        let entry = if level == "log" {
            format!("{line}\n")
        } else {
            format!("[{level}] {line}\n")
        };
        let room = self.limit.saturating_sub(self.chars);
        let entry_chars = entry.chars().count();
        if entry_chars <= room {
            self.text.push_str(&entry);
            self.chars += entry_chars;
            return;
        }
        self.text.extend(entry.chars().take(room));
        self.text.push_str("\n[console output truncated]");
        self.truncated = true;
    }
}

/// Runs `code` on a blocking thread and waits for it. `bindings[i]` is the `(server, tool)`
/// identifier pair under which `tools` exposes binding `i`.
pub async fn run_program(
    code: String,
    bindings: Vec<(String, String)>,
    sink: CallSink,
    limits: EngineLimits,
) -> ProgramRun {
    let handle = tokio::runtime::Handle::current();
    let started = Instant::now();
    let joined = tokio::task::spawn_blocking(move || {
        handle.block_on(execute(&code, &bindings, sink, limits))
    })
    .await;
    joined.unwrap_or_else(|err| ProgramRun {
        result: Err(ProgramFailure::Engine(format!(
            "the engine thread failed: {err}"
        ))),
        console: String::new(),
        console_truncated: false,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Runs `code` in a fresh runtime on the current thread, which must be allowed to block.
pub async fn execute(
    code: &str,
    bindings: &[(String, String)],
    sink: CallSink,
    limits: EngineLimits,
) -> ProgramRun {
    let started = Instant::now();
    let deadline = started + limits.max_runtime;
    let console = Arc::new(Mutex::new(Console {
        text: String::new(),
        limit: limits.max_console_chars,
        chars: 0,
        truncated: false,
    }));
    let result = match engine(limits, deadline).await {
        Ok((runtime, context)) => {
            let run = evaluate(&context, code, bindings, sink, console.clone());
            let outcome = tokio::time::timeout_at(deadline, run).await;
            let result = match outcome {
                Ok(envelope) => envelope.and_then(parse_envelope),
                Err(_) => Err(ProgramFailure::Timeout),
            };
            drop(context);
            drop(runtime);
            result
        }
        Err(err) => Err(ProgramFailure::Engine(err.to_string())),
    };
    let console = console.lock().expect("console lock");
    ProgramRun {
        result: reclassify(result, deadline),
        console: console.text.clone(),
        console_truncated: console.truncated,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

async fn engine(
    limits: EngineLimits,
    deadline: Instant,
) -> rquickjs::Result<(AsyncRuntime, AsyncContext)> {
    let runtime = AsyncRuntime::new()?;
    runtime.set_memory_limit(limits.memory_limit_bytes).await;
    runtime.set_max_stack_size(limits.max_stack_bytes).await;
    let deadline = deadline.into_std();
    runtime
        .set_interrupt_handler(Some(Box::new(move || {
            std::time::Instant::now() >= deadline
        })))
        .await;
    let context = AsyncContext::full(&runtime).await?;
    Ok((runtime, context))
}

/// Sets up the globals, runs the program and returns the harness's JSON envelope.
async fn evaluate(
    context: &AsyncContext,
    code: &str,
    bindings: &[(String, String)],
    sink: CallSink,
    console: Arc<Mutex<Console>>,
) -> Result<String, ProgramFailure> {
    let code = code.to_owned();
    let bindings = serde_json::to_string(bindings).expect("pairs of strings are JSON");
    context
        .async_with(async move |ctx| {
            let promise = start(&ctx, &code, &bindings, sink, console)
                .catch(&ctx)
                .map_err(|err| caught(&err))?;
            promise
                .into_future::<String>()
                .await
                .catch(&ctx)
                .map_err(|err| caught(&err))
        })
        .await
}

fn start<'js>(
    ctx: &Ctx<'js>,
    code: &str,
    bindings: &str,
    sink: CallSink,
    console: Arc<Mutex<Console>>,
) -> rquickjs::Result<Promise<'js>> {
    let host_call = Function::new(
        ctx.clone(),
        Async(move |index: usize, arguments: String| {
            let sink = sink.clone();
            async move { sink(index, arguments).await }
        }),
    )?;
    let host_log = Function::new(ctx.clone(), move |level: String, line: String| {
        console.lock().expect("console lock").push(&level, &line);
    })?;
    let setup: Function = ctx.eval(HARNESS)?;
    let runner: Function = setup.call((host_call, host_log, bindings))?;
    runner.call((code,))
}

/// Describes an exception that escaped the harness, which only happens for uncatchable ones
/// (the interrupt handler) and for failures while setting up.
fn caught(err: &CaughtError<'_>) -> ProgramFailure {
    let text = err.to_string();
    match budget_exception(&text) {
        Some(failure) => failure,
        None => ProgramFailure::Engine(text),
    }
}

#[derive(serde::Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    value: Value,
    #[serde(default)]
    error: String,
    #[serde(default)]
    null_thrown: bool,
}

fn parse_envelope(text: String) -> Result<Value, ProgramFailure> {
    let envelope: Envelope = serde_json::from_str(&text)
        .map_err(|err| ProgramFailure::Engine(format!("unreadable run result: {err}")))?;
    match envelope.status.as_str() {
        "ok" => Ok(envelope.value),
        "syntax" => Err(ProgramFailure::Syntax(envelope.error)),
        "not_json" => Err(ProgramFailure::NotJson(envelope.error)),
        _ if envelope.null_thrown => Err(ProgramFailure::OutOfMemory),
        _ => Err(classify_thrown(envelope.error)),
    }
}

/// Tells exhausted budgets apart from the program's own errors. QuickJS reports them as
/// `InternalError`s with fixed messages, which a tool error (always an `Error`) cannot imitate.
fn classify_thrown(message: String) -> ProgramFailure {
    budget_exception(&message).unwrap_or(ProgramFailure::Thrown(message))
}

fn budget_exception(message: &str) -> Option<ProgramFailure> {
    let first_line = message.lines().next().unwrap_or_default().trim();
    match first_line {
        "InternalError: out of memory" => Some(ProgramFailure::OutOfMemory),
        "InternalError: stack overflow" | "RangeError: Maximum call stack size exceeded" => {
            Some(ProgramFailure::StackOverflow)
        }
        "InternalError: interrupted" => Some(ProgramFailure::Timeout),
        _ => None,
    }
}

/// Reports a failure at or after the deadline as the time budget, whatever the engine called it.
fn reclassify(
    result: Result<Value, ProgramFailure>,
    deadline: Instant,
) -> Result<Value, ProgramFailure> {
    match result {
        Err(ProgramFailure::Engine(_) | ProgramFailure::Thrown(_))
            if Instant::now() >= deadline =>
        {
            Err(ProgramFailure::Timeout)
        }
        other => other,
    }
}
