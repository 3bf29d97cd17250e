//! Real code-mode traffic for the observability tests: a gateway with code mode on the Python
//! fault server, and turns that are used, fall back, and open the timeout circuit.

use serde_json::json;

use super::fake_openai::tool_calls;
use super::mcp_servers::{fault_server_script, python};
use super::{FakeOpenAi, Options, Reply, TestGateway, message};

/// The diag token the observability tests configure.
pub const DIAG_TOKEN: &str = "diag-test-token";

/// Code mode with a 300 ms call timeout, no repairs, and a circuit that opens after two alerts.
pub const CODE_MODE: &str = "[agent.code_mode]\nenabled = true\nmax_call_timeout_ms = 300\n\
max_runtime_ms = 2000\nmax_repair_attempts = 0\ntimeout_auto_shadow_streak = 2\n\
timeout_auto_shadow_probe_every = 2";

/// Returns the fault server's table with `capabilities = []`, so code mode may call its tools.
pub fn fault_server_table() -> String {
    format!(
        "[mcp.servers.faults]\ncommand = \"{}\"\nargs = [\"{}\"]\ntimeout_ms = 20000\n\
         capabilities = []\n",
        python(),
        fault_server_script()
    )
}

/// Starts a gateway with code mode on the fault server and the given `[channels.http]` lines.
pub async fn code_mode_gateway(fake: &FakeOpenAi, http: &'static str) -> TestGateway {
    let options = Options {
        http,
        agent: CODE_MODE,
        extra: fault_server_table(),
        ..Default::default()
    };
    TestGateway::start_with(&fake.base_url(), options).await
}

/// Builds a completion that calls `run_program` with `code`.
pub fn program(code: &str) -> Reply {
    let arguments = json!({ "code": code }).to_string();
    Reply::Json(tool_calls(&[("run_program", &arguments)], "tool_calls"))
}

/// Sends one used attempt, then two attempts whose tool call times out, which open the circuit,
/// then one request that skips code mode. Afterwards: 3 attempts, 1 used, 2 fallbacks, 2 timed-out
/// calls, the circuit open.
pub async fn used_then_circuit_opens(gateway: &TestGateway, fake: &FakeOpenAi) {
    fake.push(program("return await tools.faults.echo({text: 'fast'});"));
    fake.push(Reply::text("served by code mode"));
    let (status, body) = gateway.send(message("used", "go")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["activity"]["code_mode"]["outcome"], "used", "{body}");
    for turn in 0..2 {
        fake.push(program("return await tools.faults.sleep({seconds: 1.5});"));
        fake.push(Reply::text("served by the tool loop"));
        let (status, body) = gateway.send(message(&format!("slow{turn}"), "go")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["activity"]["code_mode"]["outcome"], "fallback",
            "{body}"
        );
    }
    fake.push(Reply::text("skipped code mode"));
    let (status, body) = gateway.send(message("skipped", "go")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["activity"]["code_mode"]["outcome"], "skipped",
        "{body}"
    );
}
