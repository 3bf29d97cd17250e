//! Subprocess mode: the sandbox cases run in the engine process, plus what only a child process
//! can get wrong: its environment, its OS limits, and a child that dies or misbehaves.
//!
//! Some tests start the engine through a small shell script. It records the child's pid in a file
//! name, because the child may not write to files, and then executes the gateway binary. The test
//! can then inspect or kill that very process.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::Barrier;
use tokio::time::Instant;
use xiaomaolv::code_mode::bridge::ToolInvoker;
use xiaomaolv::code_mode::executor::{Executor, Selection};
use xiaomaolv::code_mode::sandbox::{EngineLimits, ProgramFailure, ProgramRun};
use xiaomaolv::code_mode::subprocess::{self, ADDRESS_SPACE_OVERHEAD_BYTES, EngineCommand};
use xiaomaolv::config::{CodeModeConfig, ExecutionMode};
use xiaomaolv::mcp::{McpError, ToolOutput};

use crate::sandbox::{
    EchoTools, Mode, bindings, bridge, demo_tools, engine, limits, run, shared_sandbox_tests,
};

shared_sandbox_tests!(Mode::Subprocess);

async fn run_engine(
    engine: &EngineCommand,
    invoker: Arc<dyn ToolInvoker>,
    code: &str,
    limits: EngineLimits,
) -> ProgramRun {
    let bridge = bridge(invoker, limits);
    subprocess::run_program(engine, code, bindings(), bridge, limits).await
}

fn tool_output(value: Value) -> ToolOutput {
    ToolOutput {
        is_error: false,
        text: value.to_string(),
        structured: Some(value),
    }
}

/// Writes an executable shell script and returns it as the engine command. A child shell writes
/// the file, so no thread of this test process ever has it open for writing. Exec would fail with
/// ETXTBSY if a concurrently forked child inherited such a descriptor.
fn script_engine(dir: &Path, name: &str, body: &str) -> EngineCommand {
    let path = dir.join(name);
    let script = format!("#!/bin/sh\n{body}\n");
    let status = std::process::Command::new("/bin/sh")
        .args([
            "-c",
            "printf '%s' \"$1\" > \"$2\" && chmod 700 \"$2\"",
            "sh",
        ])
        .arg(&script)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "writing {}", path.display());
    EngineCommand { program: path }
}

/// Writes an engine script that records its pid as an empty file `pid.<pid>` in `dir` and then
/// becomes the gateway binary. `env -u PWD` drops only the variable that the shell itself adds.
fn pid_recording_engine(dir: &Path) -> EngineCommand {
    let body = format!(
        ": > '{dir}/pid.'$$\nexec /usr/bin/env -u PWD '{binary}' \"$@\"",
        dir = dir.display(),
        binary = engine().program.display(),
    );
    script_engine(dir, "engine", &body)
}

fn recorded_pid(dir: &Path) -> Option<i32> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find_map(|name| name.strip_prefix("pid.")?.parse().ok())
}

/// Polls until `pid` has exited (its `/proc` entry is gone or a zombie). False if it never does.
async fn exits(pid: i32) -> bool {
    for _ in 0..500 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat)
                if stat
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .trim_start()
                    .starts_with('Z') =>
            {
                return true;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    false
}

/// Returns the soft and hard value of one row of `/proc/<pid>/limits`.
fn os_limit(limits: &str, name: &str) -> (String, String) {
    let row = limits
        .lines()
        .find(|line| line.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {limits}"));
    let values: Vec<&str> = row[name.len()..].split_whitespace().collect();
    (values[0].to_owned(), values[1].to_owned())
}

/// Returns the variable names in a `/proc/<pid>/environ` dump, keeping values out of failures.
fn variable_names(environ: &[u8]) -> Vec<String> {
    environ
        .split(|&byte| byte == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let name = entry.split(|&byte| byte == b'=').next().unwrap();
            String::from_utf8_lossy(name).into_owned()
        })
        .collect()
}

fn engine_failure(run: &ProgramRun) -> &str {
    match &run.result {
        Err(ProgramFailure::Engine(message)) => message,
        other => panic!("expected an engine failure, got {other:?}"),
    }
}

/// Tools that return only once both calls of a pair are in flight.
struct Rendezvous {
    barrier: Barrier,
}

#[async_trait]
impl ToolInvoker for Rendezvous {
    async fn invoke(
        &self,
        _server: &str,
        tool: &str,
        _arguments: Value,
        _timeout: Duration,
    ) -> Result<ToolOutput, McpError> {
        self.barrier.wait().await;
        Ok(tool_output(json!(tool)))
    }
}

#[tokio::test]
async fn parallel_calls_are_in_flight_together() {
    let limits = EngineLimits {
        max_runtime: Duration::from_secs(10),
        ..limits()
    };
    let invoker = Arc::new(Rendezvous {
        barrier: Barrier::new(2),
    });
    let code = "return await Promise.all([tools.demo.echo({}), tools.demo.fail({})]);";
    let run = run_engine(&engine(), invoker, code, limits).await;
    assert_eq!(run.result, Ok(json!(["echo", "fail"])));
}

/// Reads the engine process's environment and limits from `/proc` when a tool is called.
struct Inspector {
    dir: PathBuf,
    seen: Mutex<Option<(Vec<u8>, String)>>,
}

#[async_trait]
impl ToolInvoker for Inspector {
    async fn invoke(
        &self,
        _server: &str,
        _tool: &str,
        _arguments: Value,
        _timeout: Duration,
    ) -> Result<ToolOutput, McpError> {
        let pid = recorded_pid(&self.dir).expect("the engine recorded its pid");
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        *self.seen.lock().unwrap() = Some((environ, limits));
        Ok(tool_output(json!("inspected")))
    }
}

#[tokio::test]
async fn engine_process_has_empty_environment_and_os_limits() {
    let dir = tempfile::tempdir().unwrap();
    let inspector = Arc::new(Inspector {
        dir: dir.path().to_owned(),
        seen: Mutex::new(None),
    });
    let engine = pid_recording_engine(dir.path());
    let code = "return await tools.demo.echo({});";
    let run = run_engine(&engine, inspector.clone(), code, limits()).await;
    assert_eq!(run.result, Ok(json!("inspected")));

    let (environ, os_limits) = inspector.seen.lock().unwrap().take().unwrap();
    assert!(
        std::env::var_os("PATH").is_some(),
        "the test process has an environment"
    );
    let names = variable_names(&environ);
    assert_eq!(
        names,
        Vec::<String>::new(),
        "the engine inherits none of it"
    );
    let address_space = (16 * 1024 * 1024 + ADDRESS_SPACE_OVERHEAD_BYTES).to_string();
    assert_eq!(
        os_limit(&os_limits, "Max address space"),
        (address_space.clone(), address_space)
    );
    let expected = [
        ("Max cpu time", "2", "3"),
        ("Max core file size", "0", "0"),
        ("Max open files", "16", "16"),
        ("Max file size", "0", "0"),
    ];
    for (name, soft, hard) in expected {
        let actual = os_limit(&os_limits, name);
        assert_eq!(actual, (soft.to_owned(), hard.to_owned()), "{name}");
    }
}

/// Kills the engine process with SIGKILL when a tool is called, and never returns.
struct KillOnCall {
    dir: PathBuf,
}

#[async_trait]
impl ToolInvoker for KillOnCall {
    async fn invoke(
        &self,
        _server: &str,
        _tool: &str,
        _arguments: Value,
        _timeout: Duration,
    ) -> Result<ToolOutput, McpError> {
        let pid = recorded_pid(&self.dir).expect("the engine recorded its pid");
        // SAFETY: kill has no memory-safety preconditions, and the pid is this test's own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        std::future::pending().await
    }
}

#[tokio::test]
async fn killed_engine_process_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let limits = EngineLimits {
        max_runtime: Duration::from_secs(20),
        ..limits()
    };
    let invoker = Arc::new(KillOnCall {
        dir: dir.path().to_owned(),
    });
    let engine = pid_recording_engine(dir.path());
    let code = "return await tools.demo.echo({});";
    let run = run_engine(&engine, invoker, code, limits).await;
    assert_eq!(
        engine_failure(&run),
        "the engine process was killed by signal 9 (SIGKILL) before sending a result"
    );
}

#[tokio::test]
async fn misbehaving_engine_process_fails_the_run() {
    let cases = [
        (
            "printf 'this is not json\\n'; exec /bin/sleep 30",
            "sent an invalid line \"this is not json\"",
        ),
        (
            "printf '{\"type\":\"shout\"}\\n'; exec /bin/sleep 30",
            "sent an invalid line \"{\\\"type\\\":\\\"shout\\\"}\": unknown variant `shout`",
        ),
        (
            "printf '{\"type\":\"done\"}\\n'; exec /bin/sleep 30",
            "sent an invalid line \"{\\\"type\\\":\\\"done\\\"}\": missing field `result`",
        ),
        (
            "/usr/bin/head -c 70000000 /dev/zero; exec /bin/sleep 30",
            "sent a line longer than 67108864 bytes",
        ),
        ("exit 3", "exited with status 3 before sending a result"),
        ("exit 0", "exited with status 0 before sending a result"),
        ("kill -SEGV $$", "was killed by signal 11 (SIGSEGV)"),
        ("kill -XCPU $$", "was killed by signal 24 (SIGXCPU)"),
        (
            "exec >&-; exec /bin/sleep 30",
            "closed its stdout before sending a result",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let limits = EngineLimits {
        max_runtime: Duration::from_secs(20),
        ..limits()
    };
    for (index, (body, expected)) in cases.into_iter().enumerate() {
        let engine = script_engine(dir.path(), &format!("case{index}"), body);
        let run = run_engine(&engine, Arc::new(EchoTools), "return 1;", limits).await;
        let message = engine_failure(&run);
        assert!(message.contains(expected), "{body}: {message}");
    }
}

#[tokio::test]
async fn silent_engine_process_is_stopped_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let engine = script_engine(dir.path(), "silent", "exec /bin/sleep 30");
    let run = run_engine(&engine, Arc::new(EchoTools), "return 1;", limits()).await;
    assert_eq!(run.result, Err(ProgramFailure::Timeout));
}

#[tokio::test]
async fn missing_engine_binary_fails_the_run() {
    let engine = EngineCommand {
        program: "/nonexistent/xiaomaolv".into(),
    };
    let run = run_engine(&engine, Arc::new(EchoTools), "return 1;", limits()).await;
    let message = engine_failure(&run);
    assert!(
        message.starts_with("cannot start the engine process `/nonexistent/xiaomaolv`"),
        "{message}"
    );
}

#[tokio::test]
async fn spinning_engine_processes_do_not_block_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let engine = pid_recording_engine(dir.path());
    let long = EngineLimits {
        max_runtime: Duration::from_secs(30),
        ..limits()
    };
    let spinning = tokio::spawn(async move {
        run_engine(&engine, Arc::new(EchoTools), "while (true) {}", long).await
    });
    let pid = loop {
        match recorded_pid(dir.path()) {
            Some(pid) => break pid,
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let quick = run(Mode::Subprocess, "return 'still here';").await;
    assert_eq!(quick.result, Ok(json!("still here")));
    assert!(!spinning.is_finished());

    spinning.abort();
    assert!(spinning.await.unwrap_err().is_cancelled());
    assert!(
        exits(pid).await,
        "the engine process {pid} outlived its run"
    );
}

#[tokio::test]
async fn executor_runs_programs_in_the_engine_process() {
    let settings = CodeModeConfig {
        execution_mode: ExecutionMode::Subprocess,
        ..CodeModeConfig::default()
    };
    let mut executor = Executor::new(Arc::new(EchoTools), settings);
    executor.set_engine_command(engine());
    let selection = Selection::new(demo_tools());
    let code = "console.log('calling'); return await tools.demo.echo({x: 1});";
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = executor.run(&selection, code, false, deadline).await;
    assert_eq!(report.result, Ok(json!({"index": 0, "echo": {"x": 1}})));
    assert_eq!(report.executed_calls(), 1);
    assert_eq!(report.console, "calling\n");
}
