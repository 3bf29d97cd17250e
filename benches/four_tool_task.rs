//! A task that needs four chained tool calls, served by code mode and by the classic tool loop,
//! end to end through `POST /v1/messages`.
//!
//! Run with `cargo bench --bench four_tool_task`. It needs the Python MCP fault server's venv
//! (`scripts/test-mcp-servers.sh` creates `target/mcp-venv`).
//!
//! The bench starts two gateways in this process on 127.0.0.1 port 0, one with
//! `[agent.code_mode] enabled = true` and one without, each with its own SQLite file, its own
//! scripted model and its own child process of `tests/mcp/fault_server.py` over stdio. The chain
//! is `add(2, 3)`, `add(previous, 10)`, `add(previous, 100)`, then `echo("total=" + previous)`.
//!
//! The scripted model waits `BENCH_MODEL_LATENCY_MS` (default 300) before each reply. It picks its
//! reply from the request, not from a queue:
//!
//! - offered `run_program`: a program that makes the four calls, each from the previous result;
//! - offered the MCP tools: the next call of the chain, built from the last tool result in the
//!   request, until four results are there;
//! - otherwise, or after the fourth result: a final reply that quotes the total.
//!
//! Prompt tokens are an estimate, because no tokenizer runs: the characters of the request's
//! `messages` and `tools` as JSON, divided by 4 and rounded up. The model reports that as
//! `prompt_tokens`, and the gateway sums it over the turn. Completion tokens are estimated the
//! same way from the reply's text or tool-call arguments.
//!
//! Each repeat (`BENCH_REPEATS`, default 3) sends `BENCH_RUNS` (default 10) messages to each
//! gateway, alternating between them, after one warm-up message each. Every message uses a new
//! session, so no history is sent. Every turn is checked: the expected mode, all four tool calls
//! ok, the total in the reply, and the same round trips and prompt tokens seen by the model and
//! reported by the gateway.
//!
//! `cargo test --all-targets` builds this file and runs it without `--bench`; it then returns at
//! once, so the benchmark never runs as a test.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;
use xiaomaolv::config::Config;
use xiaomaolv::http::AppState;

/// The program the scripted model writes in code mode. The fault server's `add` returns
/// structured content (`{"result": 5}`), so `value` accepts that as well as a bare number.
const PROGRAM: &str = r#"const value = (reply) => (reply !== null && typeof reply === "object" ? reply.result : Number(reply));
const first = value(await tools.faults.add({ a: 2, b: 3 }));
const second = value(await tools.faults.add({ a: first, b: 10 }));
const third = value(await tools.faults.add({ a: second, b: 100 }));
const echoed = await tools.faults.echo({ text: "total=" + third });
return { total: third, echoed };"#;

const EXPECTED_TOTAL: i64 = 115;
const QUESTION: &str = "Add 2 and 3, add 10 to that, add 100 to that, then echo the total.";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    CodeMode,
    ToolLoop,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::CodeMode => "code mode",
            Mode::ToolLoop => "classic tool loop",
        }
    }

    /// Returns the `activity.mode` the gateway reports for a turn served this way.
    fn activity(self) -> &'static str {
        match self {
            Mode::CodeMode => "code_mode",
            Mode::ToolLoop => "tool_loop",
        }
    }
}

/// Token estimates of one request the scripted model received.
#[derive(Clone, Copy)]
struct Estimate {
    /// Estimate from `messages` and `tools`, reported to the gateway as `prompt_tokens`.
    prompt_tokens: u64,
    /// Estimate from `messages` alone, which shows how much of the prompt the tool definitions take.
    message_tokens: u64,
}

/// Token estimates of the requests the scripted model has received since the last drain.
#[derive(Default)]
struct ModelLog {
    requests: Vec<Estimate>,
}

#[derive(Clone)]
struct ModelState {
    latency: Duration,
    log: Arc<Mutex<ModelLog>>,
}

/// The scripted OpenAI-compatible model of one gateway.
struct ScriptedModel {
    addr: SocketAddr,
    log: Arc<Mutex<ModelLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedModel {
    async fn start(latency: Duration) -> Self {
        let log = Arc::new(Mutex::new(ModelLog::default()));
        let state = ModelState {
            latency,
            log: log.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the scripted model binds a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the scripted model serves");
        });
        Self { addr, log, task }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Takes the token estimates of the requests received since the last call.
    fn drain(&self) -> Vec<Estimate> {
        std::mem::take(&mut self.log.lock().expect("model log lock").requests)
    }
}

impl Drop for ScriptedModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Estimated tokens of a text: characters divided by 4, rounded up.
fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

async fn complete(State(state): State<ModelState>, Json(request): Json<Value>) -> Json<Value> {
    let messages_text = request["messages"].to_string();
    let tools_text = match &request["tools"] {
        Value::Null => String::new(),
        tools => tools.to_string(),
    };
    let estimate = Estimate {
        prompt_tokens: estimate_tokens(&format!("{messages_text}{tools_text}")),
        message_tokens: estimate_tokens(&messages_text),
    };
    let prompt_tokens = estimate.prompt_tokens;
    state
        .log
        .lock()
        .expect("model log lock")
        .requests
        .push(estimate);
    tokio::time::sleep(state.latency).await;
    let (message, finish_reason, completion_text) = next_message(&request);
    let completion_tokens = estimate_tokens(&completion_text);
    Json(json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "scripted-model",
        "choices": [{ "index": 0, "message": message, "finish_reason": finish_reason }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    }))
}

/// Builds the scripted reply to `request`: the assistant message, its finish reason, and the text
/// its completion tokens are estimated from.
fn next_message(request: &Value) -> (Value, &'static str, String) {
    let offered: Vec<&str> = request["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|tool| tool["function"]["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let tool_results: Vec<&str> = request["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter(|message| message["role"] == "tool")
                .filter_map(|message| message["content"].as_str())
                .collect()
        })
        .unwrap_or_default();

    if offered.contains(&"run_program") && tool_results.is_empty() {
        let arguments = json!({ "code": PROGRAM }).to_string();
        return tool_call("run_program", arguments);
    }
    if offered.contains(&"faults__add") && tool_results.len() < 4 {
        let previous = tool_results.last().map(|text| number_in(text));
        let (name, arguments) = match (tool_results.len(), previous) {
            (0, _) => ("faults__add", json!({ "a": 2, "b": 3 })),
            (1, Some(previous)) => ("faults__add", json!({ "a": previous, "b": 10 })),
            (2, Some(previous)) => ("faults__add", json!({ "a": previous, "b": 100 })),
            (_, previous) => (
                "faults__echo",
                json!({ "text": format!("total={}", previous.unwrap_or(-1)) }),
            ),
        };
        return tool_call(name, arguments.to_string());
    }
    let last = tool_results.last().copied().unwrap_or("");
    let content = format!("The total is {}.", number_in(last));
    let message = json!({ "role": "assistant", "content": content });
    (message, "stop", content)
}

fn tool_call(name: &str, arguments: String) -> (Value, &'static str, String) {
    let message = json!({
        "role": "assistant",
        "content": null,
        "tool_calls": [{
            "id": "call_bench",
            "type": "function",
            "function": { "name": name, "arguments": arguments }
        }]
    });
    (message, "tool_calls", arguments)
}

/// Finds the number that a tool result or run report carries: `{"result": n}` from `add`, `total=n` from
/// `echo`, or the `value.total` of a code-mode report. Returns -1 when there is none, which
/// fails the turn's check.
fn number_in(text: &str) -> i64 {
    let first_line = text.lines().next().unwrap_or("");
    if let Ok(value) = serde_json::from_str::<Value>(first_line) {
        let candidates = [&value["value"]["total"], &value["result"], &value];
        if let Some(number) = candidates.iter().find_map(|v| v.as_i64()) {
            return number;
        }
    }
    text.rsplit('=')
        .next()
        .and_then(|tail| tail.trim().parse().ok())
        .unwrap_or(-1)
}

/// One gateway in this process, as the `serve` command builds it.
struct Gateway {
    mode: Mode,
    addr: SocketAddr,
    state: AppState,
    model: ScriptedModel,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: TempDir,
}

fn repo_path(relative: &str) -> String {
    format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"))
}

fn config_text(mode: Mode, model_url: &str, db_path: &str) -> String {
    let code_mode = match mode {
        Mode::CodeMode => "enabled = true",
        Mode::ToolLoop => "enabled = false",
    };
    format!(
        r#"
[app]
bind = "127.0.0.1:0"
default_provider = "scripted"

[store]
url = "sqlite://{db_path}"

[providers.scripted]
kind = "openai-compatible"
base_url = "{model_url}"
model = "scripted-model"

[agent.code_mode]
{code_mode}

[mcp.servers.faults]
command = "{python}"
args = ["{script}"]
timeout_ms = 20000
capabilities = []
"#,
        python = repo_path("target/mcp-venv/bin/python"),
        script = repo_path("tests/mcp/fault_server.py"),
    )
}

impl Gateway {
    async fn start(mode: Mode, latency: Duration) -> Self {
        let model = ScriptedModel::start(latency).await;
        let dir = tempfile::tempdir().expect("a temporary directory for the store");
        let db = dir.path().join("history.db");
        let text = config_text(mode, &model.base_url(), &db.to_string_lossy());
        let config = Config::parse(&text, "four_tool_task.toml", &|_| None)
            .unwrap_or_else(|err| panic!("the bench config is invalid: {err}"));

        let engine = xiaomaolv::code_mode::subprocess::EngineCommand {
            program: env!("CARGO_BIN_EXE_xiaomaolv").into(),
        };
        let state = xiaomaolv::cli::serve::build_state_with_engine(&config, engine)
            .await
            .unwrap_or_else(|err| panic!("the gateway state cannot be built: {err}"));

        let hub = state.agent.hub().clone();
        hub.settled(Duration::from_secs(60)).await;
        let tools: Vec<String> = hub.tools().iter().map(|tool| tool.name.clone()).collect();
        assert!(
            tools.iter().any(|name| name == "add") && tools.iter().any(|name| name == "echo"),
            "the fault server did not list `add` and `echo` (tools: {tools:?}). Run \
             scripts/test-mcp-servers.sh, which creates target/mcp-venv."
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the gateway binds a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let (shutdown, signal) = oneshot::channel::<()>();
        let server = tokio::spawn(xiaomaolv::http::serve(
            listener,
            state.clone(),
            async move {
                let _ = signal.await;
            },
            Duration::from_secs(5),
        ));
        Self {
            mode,
            addr,
            state,
            model,
            shutdown: Some(shutdown),
            server,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.server).await;
        self.state.agent.hub().shutdown();
    }
}

/// Cost of one message.
struct Turn {
    wall: Duration,
    round_trips: u64,
    prompt_tokens: u64,
    message_tokens: u64,
    completion_tokens: u64,
}

async fn send(client: &reqwest::Client, gateway: &Gateway, session: &str) -> Turn {
    let body = json!({ "session_id": session, "user_id": "bench", "text": QUESTION });
    let started = Instant::now();
    let response = client
        .post(format!("http://{}/v1/messages", gateway.addr))
        .json(&body)
        .send()
        .await
        .expect("the gateway returns a response");
    let status = response.status();
    let reply: Value = response.json().await.expect("the reply is JSON");
    let wall = started.elapsed();
    let seen = gateway.model.drain();
    check(gateway.mode, status.as_u16(), &reply, &seen);
    Turn {
        wall,
        round_trips: seen.len() as u64,
        prompt_tokens: seen.iter().map(|estimate| estimate.prompt_tokens).sum(),
        message_tokens: seen.iter().map(|estimate| estimate.message_tokens).sum(),
        completion_tokens: reply["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    }
}

/// Panics unless the turn did the task the way `mode` should, so no broken turn is timed.
fn check(mode: Mode, status: u16, reply: &Value, seen: &[Estimate]) {
    let label = mode.label();
    assert_eq!(status, 200, "{label}: {reply}");
    assert_eq!(
        reply["activity"]["mode"],
        mode.activity(),
        "{label}: {reply}"
    );
    let calls = reply["tool_calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 4, "{label}: {reply}");
    assert!(
        calls.iter().all(|call| call["status"] == "ok"),
        "{label}: {reply}"
    );
    let text = reply["reply"].as_str().unwrap_or("");
    assert!(
        text.contains(&EXPECTED_TOTAL.to_string()),
        "{label}: the reply does not quote the total: {reply}"
    );
    assert_eq!(
        reply["activity"]["provider_requests"].as_u64(),
        Some(seen.len() as u64),
        "{label}: the gateway and the model count different round trips"
    );
    assert_eq!(
        reply["usage"]["prompt_tokens"].as_u64(),
        Some(
            seen.iter()
                .map(|estimate| estimate.prompt_tokens)
                .sum::<u64>()
        ),
        "{label}: the gateway's prompt tokens differ from the model's"
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn env_count(name: &str, default: u64) -> u64 {
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

/// Medians of one series of turns: wall ms, round trips, prompt and completion tokens.
struct SeriesMedians {
    wall_ms: f64,
    round_trips: f64,
    prompt_tokens: f64,
    message_tokens: f64,
    completion_tokens: f64,
}

fn series_medians(turns: &[Turn]) -> SeriesMedians {
    let pick = |field: fn(&Turn) -> f64| median(&mut turns.iter().map(field).collect::<Vec<_>>());
    SeriesMedians {
        wall_ms: pick(|turn| turn.wall.as_secs_f64() * 1e3),
        round_trips: pick(|turn| turn.round_trips as f64),
        prompt_tokens: pick(|turn| turn.prompt_tokens as f64),
        message_tokens: pick(|turn| turn.message_tokens as f64),
        completion_tokens: pick(|turn| turn.completion_tokens as f64),
    }
}

/// Prints one line of medians. "Outside the model" is the wall time minus the scripted latency
/// of each round trip. It covers tool calls, the sandbox in code mode, the gateway and loopback HTTP.
fn print_medians(label: &str, medians: &SeriesMedians, latency: Duration) {
    let outside_model = medians.wall_ms - medians.round_trips * latency.as_secs_f64() * 1e3;
    println!(
        "  {label:<18} wall {:>7.1} ms  outside the model {outside_model:>5.1} ms  round trips {}  \
         prompt tokens {} (messages alone {})  completion tokens {}",
        medians.wall_ms,
        medians.round_trips,
        medians.prompt_tokens,
        medians.message_tokens,
        medians.completion_tokens,
    );
}

/// Returns the smallest and largest value of `field` over `turns`.
fn range(turns: &[Turn], field: fn(&Turn) -> f64) -> (f64, f64) {
    let values = turns.iter().map(field);
    let smallest = values.clone().fold(f64::INFINITY, f64::min);
    let largest = values.fold(f64::NEG_INFINITY, f64::max);
    (smallest, largest)
}

/// Prints the range of each measure over the turns of one series.
fn print_ranges(label: &str, turns: &[Turn]) {
    let (wall_min, wall_max) = range(turns, |turn| turn.wall.as_secs_f64() * 1e3);
    let (trips_min, trips_max) = range(turns, |turn| turn.round_trips as f64);
    let (prompt_min, prompt_max) = range(turns, |turn| turn.prompt_tokens as f64);
    let (completion_min, completion_max) = range(turns, |turn| turn.completion_tokens as f64);
    println!(
        "  {label:<18} ranges: wall {wall_min:.1}-{wall_max:.1} ms  round trips \
         {trips_min}-{trips_max}  prompt tokens {prompt_min}-{prompt_max}  completion tokens \
         {completion_min}-{completion_max}"
    );
}

async fn run() {
    let runs = env_count("BENCH_RUNS", 10).max(1);
    let repeats = env_count("BENCH_REPEATS", 3).max(1);
    let latency = Duration::from_millis(env_count("BENCH_MODEL_LATENCY_MS", 300));
    let code_mode = Gateway::start(Mode::CodeMode, latency).await;
    let tool_loop = Gateway::start(Mode::ToolLoop, latency).await;
    let client = reqwest::Client::new();
    for gateway in [&code_mode, &tool_loop] {
        send(&client, gateway, "warm-up").await;
    }
    println!(
        "{runs} messages per mode and repeat, {repeats} repeats, model latency {} ms; load \
         average at start: {}",
        latency.as_millis(),
        load_average()
    );

    let mut per_repeat: Vec<(SeriesMedians, SeriesMedians)> = Vec::new();
    for repeat in 1..=repeats {
        let mut code_turns = Vec::new();
        let mut loop_turns = Vec::new();
        for index in 0..runs {
            let session = format!("r{repeat}-{index}");
            code_turns.push(send(&client, &code_mode, &session).await);
            loop_turns.push(send(&client, &tool_loop, &session).await);
        }
        let code = series_medians(&code_turns);
        let classic = series_medians(&loop_turns);
        println!("repeat {repeat}, load average {}", load_average());
        print_medians(Mode::CodeMode.label(), &code, latency);
        print_medians(Mode::ToolLoop.label(), &classic, latency);
        print_ranges(Mode::CodeMode.label(), &code_turns);
        print_ranges(Mode::ToolLoop.label(), &loop_turns);
        println!(
            "  code mode / classic wall time: {:.3}",
            code.wall_ms / classic.wall_ms
        );
        per_repeat.push((code, classic));
    }

    let overall = |pick: fn(&(SeriesMedians, SeriesMedians)) -> f64| {
        median(&mut per_repeat.iter().map(pick).collect::<Vec<_>>())
    };
    let code_overall = SeriesMedians {
        wall_ms: overall(|r| r.0.wall_ms),
        round_trips: overall(|r| r.0.round_trips),
        prompt_tokens: overall(|r| r.0.prompt_tokens),
        message_tokens: overall(|r| r.0.message_tokens),
        completion_tokens: overall(|r| r.0.completion_tokens),
    };
    let loop_overall = SeriesMedians {
        wall_ms: overall(|r| r.1.wall_ms),
        round_trips: overall(|r| r.1.round_trips),
        prompt_tokens: overall(|r| r.1.prompt_tokens),
        message_tokens: overall(|r| r.1.message_tokens),
        completion_tokens: overall(|r| r.1.completion_tokens),
    };
    println!(
        "median over {repeats} repeats; load average at end: {}",
        load_average()
    );
    print_medians(Mode::CodeMode.label(), &code_overall, latency);
    print_medians(Mode::ToolLoop.label(), &loop_overall, latency);
    println!(
        "  code mode / classic wall time: {:.3}",
        overall(|r| r.0.wall_ms / r.1.wall_ms)
    );

    code_mode.stop().await;
    tool_loop.stop().await;
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("four_tool_task runs only under `cargo bench --bench four_tool_task`");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the Tokio runtime starts")
        .block_on(run());
}
