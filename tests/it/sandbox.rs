//! The JavaScript sandbox on its own: programs, budgets, and attempts to escape.
//!
//! The cases in [`cases`] take the execution mode, so the same programs run here in this process
//! and in `subprocess` through the engine child process.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::time::Instant;
use xiaomaolv::code_mode::bridge::{Bridge, BridgeLimits, ToolInvoker};
use xiaomaolv::code_mode::sandbox::{
    CallSink, EngineLimits, ProgramFailure, ProgramRun, run_program,
};
use xiaomaolv::code_mode::subprocess::{self, EngineCommand};
use xiaomaolv::mcp::{McpError, ToolHints, ToolInfo, ToolOutput};

/// Where a test runs the engine.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    InProcess,
    Subprocess,
}

pub fn limits() -> EngineLimits {
    EngineLimits {
        memory_limit_bytes: 16 * 1024 * 1024,
        max_stack_bytes: 256 * 1024,
        max_console_chars: 2_000,
        max_runtime: Duration::from_millis(500),
    }
}

/// Builds a sink whose tools echo their arguments back.
fn echo_sink() -> CallSink {
    Arc::new(|index, arguments| {
        Box::pin(async move {
            let arguments: Value = serde_json::from_str(&arguments).unwrap();
            json!({"ok": true, "value": {"index": index, "echo": arguments}}).to_string()
        })
    })
}

/// Tools that return what [`echo_sink`] returns: the binding index and the arguments.
pub struct EchoTools;

#[async_trait]
impl ToolInvoker for EchoTools {
    async fn invoke(
        &self,
        _server: &str,
        tool: &str,
        arguments: Value,
        _timeout: Duration,
    ) -> Result<ToolOutput, McpError> {
        let index = bindings().iter().position(|(_, name)| name == tool);
        let value = json!({"index": index, "echo": arguments});
        Ok(ToolOutput {
            is_error: false,
            text: value.to_string(),
            structured: Some(value),
        })
    }
}

pub fn bindings() -> Vec<(String, String)> {
    vec![
        ("demo".into(), "echo".into()),
        ("demo".into(), "fail".into()),
    ]
}

/// Returns the tools behind [`bindings`], in binding order.
pub fn demo_tools() -> Vec<ToolInfo> {
    bindings()
        .into_iter()
        .map(|(server, name)| ToolInfo {
            server,
            name,
            description: None,
            input_schema: json!({"type": "object"}),
            annotations: ToolHints::default(),
            validator: None,
        })
        .collect()
}

/// Builds a bridge over [`demo_tools`] with room for every case's calls.
pub fn bridge(invoker: Arc<dyn ToolInvoker>, limits: EngineLimits) -> Arc<Bridge> {
    let bridge_limits = BridgeLimits {
        max_calls: 16,
        max_parallel: 4,
        max_call_timeout: limits.max_runtime,
        max_result_chars: 100_000,
        shadow: false,
    };
    let deadline = Instant::now() + limits.max_runtime;
    Arc::new(Bridge::new(invoker, demo_tools(), bridge_limits, deadline))
}

/// Returns the gateway binary as the engine command.
pub fn engine() -> EngineCommand {
    EngineCommand {
        program: env!("CARGO_BIN_EXE_xiaomaolv").into(),
    }
}

pub async fn run_with(mode: Mode, code: &str, limits: EngineLimits) -> ProgramRun {
    match mode {
        Mode::InProcess => run_program(code.to_owned(), bindings(), echo_sink(), limits).await,
        Mode::Subprocess => {
            let bridge = bridge(Arc::new(EchoTools), limits);
            subprocess::run_program(&engine(), code, bindings(), bridge, limits).await
        }
    }
}

pub async fn run(mode: Mode, code: &str) -> ProgramRun {
    run_with(mode, code, limits()).await
}

/// Declares one `#[tokio::test]` per case in [`cases`], run in the given [`Mode`].
macro_rules! shared_sandbox_tests {
    ($mode:expr) => {
        $crate::sandbox::shared_sandbox_tests!(@each $mode;
            returns_the_value_of_a_trivial_program,
            tool_calls_resolve_with_the_tool_reply,
            parallel_tool_calls_resolve_in_order,
            infinite_loops_stop_at_the_deadline,
            memory_bombs_fail_as_out_of_memory,
            deep_recursion_fails_as_stack_overflow,
            no_host_objects_or_module_loader_are_reachable,
            tools_cannot_be_replaced_or_reshaped,
            a_flood_of_promises_is_stopped,
            console_output_is_captured_and_capped,
            failures_are_told_apart,
        );
    };
    (@each $mode:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                $crate::sandbox::cases::$case($mode).await;
            }
        )*
    };
}
pub(crate) use shared_sandbox_tests;

shared_sandbox_tests!(Mode::InProcess);

/// Programs whose outcome is the same in every execution mode.
pub mod cases {
    use super::*;

    pub async fn returns_the_value_of_a_trivial_program(mode: Mode) {
        let run = run(mode, "return 1 + 2;").await;
        assert_eq!(run.result, Ok(json!(3)));
    }

    pub async fn tool_calls_resolve_with_the_tool_reply(mode: Mode) {
        let run = run(
            mode,
            "const a = await tools.demo.echo({x: 1}); return a.echo.x;",
        )
        .await;
        assert_eq!(run.result, Ok(json!(1)));
    }

    pub async fn parallel_tool_calls_resolve_in_order(mode: Mode) {
        let code = "const [a, b] = await Promise.all([\
                        tools.demo.echo({n: 1}), tools.demo.fail({n: 2})]); \
                    return [a.index, a.echo.n, b.index, b.echo.n];";
        let run = run(mode, code).await;
        assert_eq!(run.result, Ok(json!([0, 1, 1, 2])));
    }

    pub async fn infinite_loops_stop_at_the_deadline(mode: Mode) {
        for code in [
            "while (true) {}",
            "for (;;) { await null; }",
            "/(a+)+$/.test('a'.repeat(40) + '!'); return 1;",
        ] {
            let run = run(mode, code).await;
            assert_eq!(run.result, Err(ProgramFailure::Timeout), "{code}");
            assert!(run.elapsed_ms < 5_000, "{code}: {}", run.elapsed_ms);
        }
    }

    pub async fn memory_bombs_fail_as_out_of_memory(mode: Mode) {
        for code in [
            "const a = []; while (true) { a.push('x'.repeat(1000) + a.length); }",
            "return 'x'.repeat(1 << 28).length;",
            "const a = new Array(1e9).fill(1); return a.length;",
        ] {
            // The memory limit must stop these, not the deadline, even on a loaded machine
            // where the engine process starts slowly.
            let limits = EngineLimits {
                max_runtime: Duration::from_secs(5),
                ..limits()
            };
            let run = run_with(mode, code, limits).await;
            assert_eq!(run.result, Err(ProgramFailure::OutOfMemory), "{code}");
        }
    }

    pub async fn deep_recursion_fails_as_stack_overflow(mode: Mode) {
        let run = run(mode, "function f(n) { return f(n + 1) + 1; } return f(0);").await;
        assert_eq!(run.result, Err(ProgramFailure::StackOverflow));
    }

    pub async fn no_host_objects_or_module_loader_are_reachable(mode: Mode) {
        let globals = run(
            mode,
            "return [typeof require, typeof process, typeof std, typeof os, typeof setTimeout, \
             typeof fetch, typeof XMLHttpRequest, typeof __xm_call].join(',');",
        )
        .await;
        assert_eq!(
            globals.result,
            Ok(json!("undefined,".repeat(7) + "undefined"))
        );
        let import = run(
            mode,
            "try { await import('os'); return 'imported'; } catch (e) { return 'refused'; }",
        )
        .await;
        assert_eq!(import.result, Ok(json!("refused")));
    }

    pub async fn tools_cannot_be_replaced_or_reshaped(mode: Mode) {
        let cases = [
            (
                "tools.demo.echo = () => 'fake'; return await tools.demo.echo({});",
                json!({"index": 0, "echo": {}}),
            ),
            (
                "globalThis.tools = {}; return typeof tools.demo;",
                json!("object"),
            ),
            (
                "try { Object.setPrototypeOf(tools, {demo: 1}); } catch (e) { return 'refused'; }",
                json!("refused"),
            ),
            (
                "'use strict'; try { tools.demo.extra = 1; } catch (e) { return 'refused'; }",
                json!("refused"),
            ),
            (
                "Object.prototype.ok = false; return (await tools.demo.echo({a: 1})).echo.a;",
                json!(1),
            ),
            (
                "JSON.parse = () => ({ok: true, value: 'forged'}); \
                 return (await tools.demo.echo({})).index;",
                json!(0),
            ),
            (
                "return Object.getPrototypeOf(tools) === null && Object.isFrozen(tools.demo);",
                json!(true),
            ),
        ];
        for (code, expected) in cases {
            assert_eq!(run(mode, code).await.result, Ok(expected), "{code}");
        }
    }

    pub async fn a_flood_of_promises_is_stopped(mode: Mode) {
        let run = run(
            mode,
            "for (;;) { Promise.resolve(1).then(() => new Promise(() => {})); }",
        )
        .await;
        assert!(
            matches!(
                run.result,
                Err(ProgramFailure::Timeout | ProgramFailure::OutOfMemory)
            ),
            "{:?}",
            run.result
        );
    }

    pub async fn console_output_is_captured_and_capped(mode: Mode) {
        let capped = run(
            mode,
            "console.log('a'.repeat(5000)); console.warn('late'); return 1;",
        )
        .await;
        assert_eq!(capped.result, Ok(json!(1)));
        assert!(capped.console_truncated);
        assert!(capped.console.len() < 2_100, "{}", capped.console.len());
        let formatted = run(
            mode,
            "console.log('x', {a: 1}, [2]); console.error('bad'); return 0;",
        )
        .await;
        assert_eq!(formatted.console, "x {\"a\":1} [2]\n[error] bad\n");
    }

    pub async fn failures_are_told_apart(mode: Mode) {
        let cases = [
            ("syntax error here(", "syntax"),
            ("throw new Error('boom');", "thrown"),
            ("const o = {}; o.o = o; return o;", "not_json"),
            ("return 10n;", "not_json"),
            ("throw null;", "out_of_memory"),
        ];
        for (code, kind) in cases {
            let run = run(mode, code).await;
            let failure = run.result.expect_err(code);
            let actual = serde_json::to_value(&failure).unwrap()["kind"].clone();
            assert_eq!(actual, json!(kind), "{code}: {failure:?}");
        }
        assert_eq!(run(mode, "return undefined;").await.result, Ok(Value::Null));
    }
}

#[tokio::test]
async fn spinning_programs_do_not_stall_the_async_runtime() {
    let spinning: Vec<_> = (0..2)
        .map(|_| tokio::spawn(run(Mode::InProcess, "while (true) {}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let quick = run(Mode::InProcess, "return 'still here';").await;
    assert_eq!(quick.result, Ok(json!("still here")));
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    for task in spinning {
        assert_eq!(task.await.unwrap().result, Err(ProgramFailure::Timeout));
    }
}
