//! The JavaScript sandbox on its own: programs, budgets, and attempts to escape.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use xiaomaolv::code_mode::sandbox::{
    CallSink, EngineLimits, ProgramFailure, ProgramRun, run_program,
};

fn limits() -> EngineLimits {
    EngineLimits {
        memory_limit_bytes: 16 * 1024 * 1024,
        max_stack_bytes: 256 * 1024,
        max_console_chars: 2_000,
        max_runtime: Duration::from_millis(500),
    }
}

/// A sink whose one tool echoes its arguments back.
fn echo_sink() -> CallSink {
    Arc::new(|index, arguments| {
        Box::pin(async move {
            let arguments: Value = serde_json::from_str(&arguments).unwrap();
            json!({"ok": true, "value": {"index": index, "echo": arguments}}).to_string()
        })
    })
}

fn bindings() -> Vec<(String, String)> {
    vec![
        ("demo".into(), "echo".into()),
        ("demo".into(), "fail".into()),
    ]
}

async fn run(code: &str) -> ProgramRun {
    run_program(code.to_owned(), bindings(), echo_sink(), limits()).await
}

#[tokio::test]
async fn returns_the_value_of_a_trivial_program() {
    let run = run("return 1 + 2;").await;
    assert_eq!(run.result, Ok(json!(3)));
}

#[tokio::test]
async fn tool_calls_resolve_with_the_sink_reply() {
    let run = run("const a = await tools.demo.echo({x: 1}); return a.echo.x;").await;
    assert_eq!(run.result, Ok(json!(1)));
}

#[tokio::test]
async fn infinite_loops_stop_at_the_deadline() {
    for code in [
        "while (true) {}",
        "for (;;) { await null; }",
        "/(a+)+$/.test('a'.repeat(40) + '!'); return 1;",
    ] {
        let run = run(code).await;
        assert_eq!(run.result, Err(ProgramFailure::Timeout), "{code}");
        assert!(run.elapsed_ms < 5_000, "{code}: {}", run.elapsed_ms);
    }
}

#[tokio::test]
async fn memory_bombs_fail_as_out_of_memory() {
    for code in [
        "const a = []; while (true) { a.push('x'.repeat(1000) + a.length); }",
        "return 'x'.repeat(1 << 28).length;",
        "const a = new Array(1e9).fill(1); return a.length;",
    ] {
        let run = run(code).await;
        assert_eq!(run.result, Err(ProgramFailure::OutOfMemory), "{code}");
    }
}

#[tokio::test]
async fn deep_recursion_fails_as_stack_overflow() {
    let run = run("function f(n) { return f(n + 1) + 1; } return f(0);").await;
    assert_eq!(run.result, Err(ProgramFailure::StackOverflow));
}

#[tokio::test]
async fn no_host_objects_or_module_loader_are_reachable() {
    let globals = run(
        "return [typeof require, typeof process, typeof std, typeof os, typeof setTimeout, \
         typeof fetch, typeof XMLHttpRequest, typeof __xm_call].join(',');",
    )
    .await;
    assert_eq!(
        globals.result,
        Ok(json!("undefined,".repeat(7) + "undefined"))
    );
    let import =
        run("try { await import('os'); return 'imported'; } catch (e) { return 'refused'; }").await;
    assert_eq!(import.result, Ok(json!("refused")));
}

#[tokio::test]
async fn tools_cannot_be_replaced_or_reshaped() {
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
            "JSON.parse = () => ({ok: true, value: 'forged'}); return (await tools.demo.echo({})).index;",
            json!(0),
        ),
        (
            "return Object.getPrototypeOf(tools) === null && Object.isFrozen(tools.demo);",
            json!(true),
        ),
    ];
    for (code, expected) in cases {
        assert_eq!(run(code).await.result, Ok(expected), "{code}");
    }
}

#[tokio::test]
async fn a_flood_of_promises_is_stopped() {
    let run = run("for (;;) { Promise.resolve(1).then(() => new Promise(() => {})); }").await;
    assert!(
        matches!(
            run.result,
            Err(ProgramFailure::Timeout | ProgramFailure::OutOfMemory)
        ),
        "{:?}",
        run.result
    );
}

#[tokio::test]
async fn console_output_is_captured_and_capped() {
    let run = run("console.log('a'.repeat(5000)); console.warn('late'); return 1;").await;
    assert_eq!(run.result, Ok(json!(1)));
    assert!(run.console_truncated);
    assert!(run.console.len() < 2_100, "{}", run.console.len());
    let run = run_program(
        "console.log('x', {a: 1}, [2]); console.error('bad'); return 0;".into(),
        bindings(),
        echo_sink(),
        limits(),
    )
    .await;
    assert_eq!(run.console, "x {\"a\":1} [2]\n[error] bad\n");
}

#[tokio::test]
async fn failures_are_told_apart() {
    let cases = [
        ("syntax error here(", "syntax"),
        ("throw new Error('boom');", "thrown"),
        ("const o = {}; o.o = o; return o;", "not_json"),
        ("return 10n;", "not_json"),
        ("throw null;", "out_of_memory"),
    ];
    for (code, kind) in cases {
        let run = run(code).await;
        let failure = run.result.expect_err(code);
        let actual = serde_json::to_value(&failure).unwrap()["kind"].clone();
        assert_eq!(actual, json!(kind), "{code}: {failure:?}");
    }
    assert_eq!(run("return undefined;").await.result, Ok(Value::Null));
}

#[tokio::test]
async fn spinning_programs_do_not_stall_the_async_runtime() {
    let spinning: Vec<_> = (0..2)
        .map(|_| tokio::spawn(run("while (true) {}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let quick = run("return 'still here';").await;
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
