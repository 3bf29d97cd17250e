//! The code-mode tool bridge against the real Python fault server: budgets, timeouts, failing
//! tools and the shared result budget, observed through the executor's run report.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use xiaomaolv::code_mode::executor::{Executor, RunReport, Selection};
use xiaomaolv::code_mode::sandbox::ProgramFailure;
use xiaomaolv::config::{CodeModeConfig, ExecutionMode};
use xiaomaolv::mcp::McpHub;

use crate::common::mcp_servers::{fault_server, hub_config};

struct Harness {
    hub: Arc<McpHub>,
    selection: Selection,
}

impl Harness {
    async fn start() -> Self {
        let hub = Arc::new(McpHub::start(&hub_config(vec![(
            "faults",
            fault_server(20_000),
        )])));
        hub.settled(Duration::from_secs(60)).await;
        let selection = Selection::new(hub.tools());
        assert!(!selection.tools.is_empty(), "the fault server is ready");
        Self { hub, selection }
    }

    async fn run(&self, settings: CodeModeConfig, code: &str, shadow: bool) -> RunReport {
        let executor = Executor::new(self.hub.clone(), settings);
        let deadline = Instant::now() + Duration::from_secs(30);
        executor.run(&self.selection, code, shadow, deadline).await
    }
}

fn settings() -> CodeModeConfig {
    CodeModeConfig {
        enabled: true,
        execution_mode: ExecutionMode::InProcess,
        ..CodeModeConfig::default()
    }
}

#[tokio::test]
async fn calls_past_max_calls_reject_and_fail_the_run() {
    let harness = Harness::start().await;
    let code = "const out = [];\n\
                for (let i = 0; i < 4; i++) {\n\
                  try { out.push(await tools.faults.echo({text: 'n' + i})); }\n\
                  catch (e) { out.push('refused: ' + e.message); }\n\
                }\n\
                return out;";
    let report = harness
        .run(
            CodeModeConfig {
                max_calls: 2,
                max_parallel: 1,
                ..settings()
            },
            code,
            false,
        )
        .await;
    let value = report.result.clone().unwrap();
    assert_eq!(value[0], "n0");
    assert_eq!(value[1], "n1");
    assert!(value[2].as_str().unwrap().contains("max_calls"), "{value}");
    assert_eq!(report.executed_calls(), 2);
    assert_eq!(report.calls.len(), 4);
    assert_eq!(
        report.failure().map(|r| r.as_str()),
        Some("max_calls"),
        "a program that caught the rejection still exceeded its budget"
    );
}

#[tokio::test]
async fn a_slow_call_times_out_at_the_per_call_limit_and_the_program_sees_why() {
    let harness = Harness::start().await;
    let code = "try { await tools.faults.sleep({seconds: 3}); return 'finished'; }\n\
                catch (e) { return e.message; }";
    let report = harness
        .run(
            CodeModeConfig {
                max_call_timeout_ms: 200,
                max_runtime_ms: 2_000,
                ..settings()
            },
            code,
            false,
        )
        .await;
    let message = report.result.clone().unwrap();
    assert!(
        message.as_str().unwrap().contains("timed out after 200 ms"),
        "{message}"
    );
    assert_eq!((report.executed_calls(), report.timed_out_calls()), (1, 1));
    assert!(report.calls[0].timed_out);
}

/// The second call's timeout is the run time left, below `max_call_timeout_ms`, so the call ends
/// with the run: either the bridge's timer or the run's deadline fires first, and both count the
/// call as timed out.
#[tokio::test]
async fn a_call_never_outlasts_the_run_and_counts_as_timed_out() {
    let harness = Harness::start().await;
    let report = harness
        .run(
            CodeModeConfig {
                max_call_timeout_ms: 1_000,
                max_runtime_ms: 1_000,
                ..settings()
            },
            "await tools.faults.echo({text: 'quick'}); return await tools.faults.sleep({seconds: 5});",
            false,
        )
        .await;
    match &report.result {
        Err(ProgramFailure::Timeout) => {}
        Err(ProgramFailure::Thrown(message)) => {
            let millis: u64 = message
                .split("timed out after ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|number| number.parse().ok())
                .unwrap_or_else(|| panic!("{message}"));
            assert!(
                millis < 1_000,
                "the call was capped by the run time left: {message}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(report.executed_calls(), 2);
    assert_eq!(report.timed_out_calls(), 1);
    assert!(report.calls[0].ok);
    assert!(report.calls[1].timed_out);
}

#[tokio::test]
async fn tool_errors_and_invalid_arguments_reject_with_useful_errors() {
    let harness = Harness::start().await;
    let code = "const out = {};\n\
                try { await tools.faults.fail({message: 'disk full'}); } catch (e) { out.fail = e.message; }\n\
                try { await tools.faults.add({a: 'x'}); } catch (e) { out.invalid = e.message; }\n\
                try { await tools.faults.echo('not an object'); } catch (e) { out.scalar = e.message; }\n\
                return out;";
    let report = harness.run(settings(), code, false).await;
    let out = report.result.clone().unwrap();
    let fail = out["fail"].as_str().unwrap();
    assert!(
        fail.contains("faults.fail reported an error") && fail.contains("disk full"),
        "{out}"
    );
    assert!(
        out["invalid"]
            .as_str()
            .unwrap()
            .contains("invalid arguments"),
        "{out}"
    );
    assert!(
        out["scalar"]
            .as_str()
            .unwrap()
            .contains("must be an object"),
        "{out}"
    );
    assert_eq!(
        report.executed_calls(),
        1,
        "only the valid call reached the server"
    );
    assert!(report.calls[0].tool_error);
}

#[tokio::test]
async fn results_share_the_result_budget_and_are_cut_on_character_boundaries() {
    let harness = Harness::start().await;
    let code = "const a = await tools.faults.big({size: 300, cjk: true});\n\
                const b = await tools.faults.big({size: 300, cjk: true});\n\
                return {a: a.length, b, c: await tools.faults.echo({text: 'late'})};";
    let report = harness
        .run(
            CodeModeConfig {
                max_result_chars: 400,
                ..settings()
            },
            code,
            false,
        )
        .await;
    let value = report.result.clone().unwrap();
    assert_eq!(value["a"], 300, "the first result fits whole");
    let b = value["b"].as_str().unwrap();
    assert!(b.contains("[truncated: showing"), "{b}");
    assert!(b.chars().count() <= 100, "{}", b.chars().count());
    assert!(report.calls[1].truncated);
    assert!(!report.calls[0].truncated);
    assert!(
        value["c"].as_str().unwrap().contains("truncated"),
        "the budget is spent: {value}"
    );
}

#[tokio::test]
async fn parallel_calls_wait_for_a_slot() {
    let harness = Harness::start().await;
    let code = "const started = Date.now();\n\
                await Promise.all([1, 2, 3].map(() => tools.faults.sleep({seconds: 0.3})));\n\
                return Date.now() - started;";
    let report = harness
        .run(
            CodeModeConfig {
                max_parallel: 1,
                max_call_timeout_ms: 2_000,
                ..settings()
            },
            code,
            false,
        )
        .await;
    let elapsed = report.result.clone().unwrap().as_u64().unwrap();
    assert!(
        elapsed >= 900,
        "three calls of 300 ms one at a time took {elapsed} ms"
    );
    assert_eq!(report.executed_calls(), 3);
}

#[tokio::test]
async fn shadow_runs_refuse_tools_that_are_not_safe_to_repeat() {
    let harness = Harness::start().await;
    let code = "const echoed = await tools.faults.echo({text: 'ok'});\n\
                try { await tools.faults.add({a: 1, b: 2}); return 'added'; }\n\
                catch (e) { return [echoed, e.message]; }";
    let report = harness.run(settings(), code, true).await;
    let value = report.result.clone().unwrap();
    assert_eq!(value[0], "ok");
    assert!(
        value[1]
            .as_str()
            .unwrap()
            .contains("read-only or idempotent"),
        "{value}"
    );
    assert_eq!(report.executed_calls(), 1);
    let rendered: serde_json::Value = serde_json::from_str(&report.render(1_000)).unwrap();
    assert_eq!(rendered["ok"], true);
    assert_eq!(rendered["calls"][1]["tool"], "faults.add");
    assert_eq!(rendered["calls"][1]["ok"], false);
}

#[tokio::test]
async fn a_loop_of_rejected_calls_keeps_a_bounded_record() {
    let harness = Harness::start().await;
    let code = "let refused = 0;\n\
                for (let i = 0; i < 5000; i++) {\n\
                  try { await tools.faults.echo({nope: 'x'.repeat(5000)}); } catch (e) { refused++; }\n\
                }\n\
                return refused;";
    let report = harness.run(settings(), code, false).await;
    assert_eq!(report.result, Ok(serde_json::json!(5000)));
    assert_eq!(report.executed_calls(), 0);
    assert!(report.calls.len() <= 16, "{} records", report.calls.len());
    let arguments = report.calls[0].arguments.to_string();
    assert!(
        arguments.chars().count() < 2_100,
        "{} characters",
        arguments.len()
    );
}
