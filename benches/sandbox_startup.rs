//! Start-up cost of the code-mode sandbox: a fresh QuickJS runtime plus a short program.
//!
//! Run with `cargo bench --bench sandbox_startup`. Each case creates a new runtime and context,
//! runs one program and drops both, as every code-mode run does. The cases:
//!
//! - `run_program`: `sandbox::run_program` on a multi-thread Tokio runtime, which moves the engine
//!   to a blocking thread and waits for it. This is what a turn pays.
//! - `execute`: `sandbox::execute` on the current thread of a current-thread runtime, which is the
//!   engine without the hand-off.
//! - `subprocess`: the engine in a child process (`execution_mode = "subprocess"`). It is measured
//!   only when that mode runs the trivial program; while it is not implemented, the case reports so
//!   and is skipped.
//!
//! Each engine runs `return 1 + 2;` and a program with one tool call, whose result an in-memory
//! sink returns at once. Settings come from the environment: `BENCH_ITERATIONS` (default 2000),
//! `BENCH_WARMUP` (200) and `BENCH_REPEATS` (3). Each repeat runs every case once, in turn,
//! so a burst of load from another process disturbs one repeat of a case, not all of them.
//!
//! `cargo test --all-targets` builds this file and runs it without `--bench`; it then returns at
//! once, so the benchmark never runs as a test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xiaomaolv::code_mode::bridge::{Bridge, BridgeLimits, ToolInvoker};
use xiaomaolv::code_mode::sandbox::{self, CallSink, EngineLimits, ProgramRun};
use xiaomaolv::code_mode::subprocess::{self, EngineCommand};
use xiaomaolv::mcp::{McpError, ToolHints, ToolInfo, ToolOutput};

const TRIVIAL: &str = "return 1 + 2;";
const ONE_CALL: &str =
    "const reply = await tools.bench.echo({ value: 41 });\nreturn reply.value + 1;";

/// Returns the engine limits a run gets with the default `[agent.code_mode]` settings
/// (`memory_limit_mb = 32`, `max_runtime_ms = 2500`) and the executor's stack and console limits.
fn limits() -> EngineLimits {
    EngineLimits {
        memory_limit_bytes: 32 * 1024 * 1024,
        max_stack_bytes: 512 * 1024,
        max_console_chars: 4_000,
        max_runtime: Duration::from_millis(2_500),
    }
}

fn bindings() -> Vec<(String, String)> {
    vec![("bench".to_owned(), "echo".to_owned())]
}

/// Builds a sink that returns each call's arguments as its result, without leaving the engine's
/// thread.
fn echo_sink() -> CallSink {
    Arc::new(|_index, arguments| {
        Box::pin(async move {
            let value: Value = serde_json::from_str(&arguments).unwrap_or(Value::Null);
            json!({ "ok": true, "value": value }).to_string()
        })
    })
}

/// The in-memory tool behind the subprocess case, which needs a bridge instead of a sink.
struct EchoInvoker;

#[async_trait::async_trait]
impl ToolInvoker for EchoInvoker {
    async fn invoke(
        &self,
        _server: &str,
        _tool: &str,
        arguments: Value,
        _timeout: Duration,
    ) -> Result<ToolOutput, McpError> {
        Ok(ToolOutput {
            is_error: false,
            text: arguments.to_string(),
            structured: Some(arguments),
        })
    }
}

fn echo_tool() -> ToolInfo {
    ToolInfo {
        server: "bench".to_owned(),
        name: "echo".to_owned(),
        description: None,
        input_schema: json!({ "type": "object" }),
        annotations: ToolHints::default(),
        validator: None,
    }
}

fn bridge() -> Arc<Bridge> {
    let limits = BridgeLimits {
        max_calls: 6,
        max_parallel: 2,
        max_call_timeout: Duration::from_millis(1_200),
        max_result_chars: 12_000,
        shadow: false,
    };
    Arc::new(Bridge::new(
        Arc::new(EchoInvoker),
        vec![echo_tool()],
        limits,
        tokio::time::Instant::now() + Duration::from_millis(2_500),
    ))
}

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    RunProgram,
    Execute,
    Subprocess,
}

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    engine: Engine,
    code: &'static str,
    expected: i64,
}

const CASES: [Case; 6] = [
    Case {
        name: "run_program, return 1 + 2",
        engine: Engine::RunProgram,
        code: TRIVIAL,
        expected: 3,
    },
    Case {
        name: "execute, return 1 + 2",
        engine: Engine::Execute,
        code: TRIVIAL,
        expected: 3,
    },
    Case {
        name: "subprocess, return 1 + 2",
        engine: Engine::Subprocess,
        code: TRIVIAL,
        expected: 3,
    },
    Case {
        name: "run_program, one tool call",
        engine: Engine::RunProgram,
        code: ONE_CALL,
        expected: 42,
    },
    Case {
        name: "execute, one tool call",
        engine: Engine::Execute,
        code: ONE_CALL,
        expected: 42,
    },
    Case {
        name: "subprocess, one tool call",
        engine: Engine::Subprocess,
        code: ONE_CALL,
        expected: 42,
    },
];

/// The runtimes the cases run on: two workers, as the gateway has on a two-core machine, and a
/// current-thread runtime for running the engine in place.
struct Runtimes {
    multi: tokio::runtime::Runtime,
    current: tokio::runtime::Runtime,
    engine: EngineCommand,
}

impl Runtimes {
    fn run(&self, case: &Case) -> (Duration, ProgramRun) {
        match case.engine {
            Engine::RunProgram => self.multi.block_on(async {
                let started = Instant::now();
                let run =
                    sandbox::run_program(case.code.to_owned(), bindings(), echo_sink(), limits())
                        .await;
                (started.elapsed(), run)
            }),
            Engine::Execute => self.current.block_on(async {
                let bindings = bindings();
                let started = Instant::now();
                let run = sandbox::execute(case.code, &bindings, echo_sink(), limits()).await;
                (started.elapsed(), run)
            }),
            Engine::Subprocess => self.multi.block_on(async {
                let bridge = bridge();
                let started = Instant::now();
                let run =
                    subprocess::run_program(&self.engine, case.code, bindings(), bridge, limits())
                        .await;
                (started.elapsed(), run)
            }),
        }
    }

    /// Runs `case` once and checks its result. The error names what the engine returned.
    fn sample(&self, case: &Case) -> Result<Duration, String> {
        let (elapsed, run) = self.run(case);
        match run.result {
            Ok(value) if value == json!(case.expected) => Ok(elapsed),
            other => Err(format!(
                "{}: expected {}, got {other:?}",
                case.name, case.expected
            )),
        }
    }
}

struct Summary {
    median: Duration,
    p99: Duration,
    min: Duration,
    max: Duration,
}

/// Median and 99th percentile by the nearest-rank method over the sorted samples.
fn summarize(samples: &mut [Duration]) -> Summary {
    samples.sort_unstable();
    let rank = |fraction: f64| {
        let index = (fraction * samples.len() as f64).ceil() as usize;
        samples[index.clamp(1, samples.len()) - 1]
    };
    Summary {
        median: rank(0.5),
        p99: rank(0.99),
        min: samples[0],
        max: samples[samples.len() - 1],
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn env_count(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {text:?}")),
        Err(_) => default,
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("sandbox_startup runs only under `cargo bench --bench sandbox_startup`");
        return;
    }
    let iterations = env_count("BENCH_ITERATIONS", 2_000).max(1);
    let warmup = env_count("BENCH_WARMUP", 200);
    let repeats = env_count("BENCH_REPEATS", 3).max(1);
    let runtimes = Runtimes {
        multi: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("multi-thread runtime starts"),
        current: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("current-thread runtime starts"),
        engine: EngineCommand {
            program: env!("CARGO_BIN_EXE_xiaomaolv").into(),
        },
    };

    let mut cases: Vec<Case> = Vec::new();
    for case in CASES {
        match runtimes.sample(&case) {
            Ok(_) => cases.push(case),
            Err(problem) if case.engine == Engine::Subprocess => {
                println!("skipped, subprocess mode does not run the program: {problem}");
            }
            Err(problem) => panic!("{problem}"),
        }
    }
    println!(
        "{iterations} iterations after {warmup} warm-up runs, {repeats} repeats; load average \
         at start: {}",
        load_average()
    );

    // medians[case][repeat] and p99s[case][repeat], in microseconds.
    let mut medians = vec![Vec::new(); cases.len()];
    let mut p99s = vec![Vec::new(); cases.len()];
    for repeat in 1..=repeats {
        println!("repeat {repeat}, load average {}", load_average());
        for (index, case) in cases.iter().enumerate() {
            for _ in 0..warmup {
                runtimes.sample(case).expect("warm-up run succeeds");
            }
            let mut samples: Vec<Duration> = (0..iterations)
                .map(|_| runtimes.sample(case).expect("measured run succeeds"))
                .collect();
            let summary = summarize(&mut samples);
            println!(
                "  {:<28} median {:>8.1} µs  p99 {:>8.1} µs  min {:>8.1} µs  max {:>9.1} µs",
                case.name,
                micros(summary.median),
                micros(summary.p99),
                micros(summary.min),
                micros(summary.max),
            );
            medians[index].push(micros(summary.median));
            p99s[index].push(micros(summary.p99));
        }
    }

    println!(
        "median over {repeats} repeats; load average at end: {}",
        load_average()
    );
    for (index, case) in cases.iter().enumerate() {
        println!(
            "  {:<28} median {:>8.1} µs  p99 {:>8.1} µs",
            case.name,
            median_of(&mut medians[index]),
            median_of(&mut p99s[index]),
        );
    }
}
