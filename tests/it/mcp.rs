//! The MCP client against real servers: server-everything (npm) over stdio and streamable HTTP,
//! and a Python server on the `mcp` package whose tools sleep, crash, fail and flood.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xiaomaolv::mcp::{McpError, McpHub, ServerPhase, truncate_chars};

use crate::common::mcp_servers::{
    EverythingHttp, everything_stdio, fault_server, http, hub_config, stdio,
};

const SETTLE: Duration = Duration::from_secs(60);
const CALL: Duration = Duration::from_secs(30);

async fn ready_hub(servers: Vec<(&str, xiaomaolv::config::McpServerConfig)>) -> McpHub {
    let hub = McpHub::start(&hub_config(servers));
    hub.settled(SETTLE).await;
    for status in hub.statuses() {
        assert_eq!(status.state, ServerPhase::Ready, "{status:?}");
    }
    hub
}

fn sum_of(output: &xiaomaolv::mcp::ToolOutput) -> String {
    output.text.clone()
}

#[tokio::test]
async fn everything_over_stdio_lists_and_calls_tools() {
    let hub = ready_hub(vec![("everything", everything_stdio())]).await;
    let tools = hub.tools();
    let get_sum = tools
        .iter()
        .find(|t| t.name == "get-sum")
        .expect("get-sum is listed");
    assert_eq!(get_sum.server, "everything");
    assert!(
        get_sum.input_schema["properties"]["a"].is_object(),
        "{}",
        get_sum.input_schema
    );
    assert!(tools.len() >= 5, "{} tools", tools.len());

    let output = hub
        .call("everything", "get-sum", json!({ "a": 2, "b": 40 }), CALL)
        .await
        .unwrap();
    assert!(!output.is_error);
    assert!(sum_of(&output).contains("42"), "{}", output.text);
}

#[tokio::test]
async fn everything_keeps_tool_annotations() {
    let hub = ready_hub(vec![("everything", everything_stdio())]).await;
    let annotated: Vec<_> = hub
        .tools()
        .into_iter()
        .filter(|t| t.annotations.read_only.is_some() || t.annotations.destructive.is_some())
        .collect();
    assert!(
        !annotated.is_empty(),
        "server-everything annotates some tools"
    );
}

#[tokio::test]
async fn everything_list_changed_refreshes_tools() {
    let hub = ready_hub(vec![("everything", everything_stdio())]).await;
    // server-everything sends tools/list_changed right after initialize.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hub.statuses()[0].tool_lists < 2 {
        assert!(
            Instant::now() < deadline,
            "no second tools/list: {:?}",
            hub.statuses()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(hub.tools().iter().any(|t| t.name == "get-sum"));
}

#[tokio::test]
async fn everything_over_streamable_http() {
    let server = EverythingHttp::start();
    let hub = ready_hub(vec![("remote", http(&server.url))]).await;
    assert!(
        hub.tools()
            .iter()
            .any(|t| t.name == "get-sum" && t.server == "remote")
    );
    let output = hub
        .call("remote", "get-sum", json!({ "a": 1, "b": 2 }), CALL)
        .await
        .unwrap();
    assert!(output.text.contains('3'), "{}", output.text);
    assert_eq!(hub.statuses()[0].transport, "http");
}

#[tokio::test]
async fn failing_server_does_not_affect_others() {
    let hub = McpHub::start(&hub_config(vec![
        ("broken", stdio("/nonexistent/mcp-server", &[], &[], 5_000)),
        ("faults", fault_server(10_000)),
    ]));
    hub.settled(SETTLE).await;
    let statuses = hub.statuses();
    let broken = statuses.iter().find(|s| s.name == "broken").unwrap();
    let faults = statuses.iter().find(|s| s.name == "faults").unwrap();
    assert_eq!(broken.state, ServerPhase::Failed);
    assert!(
        broken
            .last_error
            .as_deref()
            .unwrap()
            .contains("/nonexistent/mcp-server")
    );
    assert_eq!(faults.state, ServerPhase::Ready);
    let output = hub
        .call("faults", "echo", json!({ "text": "hi" }), CALL)
        .await
        .unwrap();
    assert_eq!(output.text, "hi");
    let err = hub
        .call("broken", "x", json!({}), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, McpError::Unavailable { .. }), "{err}");
}

#[tokio::test]
async fn non_json_stdout_lines_are_skipped() {
    let hub = ready_hub(vec![("faults", fault_server(10_000))]).await;
    let output = hub
        .call("faults", "noisy", json!({ "text": "still fine" }), CALL)
        .await
        .unwrap();
    assert_eq!(output.text, "still fine");
    let again = hub
        .call("faults", "echo", json!({ "text": "after" }), CALL)
        .await
        .unwrap();
    assert_eq!(again.text, "after");
}

#[tokio::test]
async fn is_error_result_is_a_tool_error() {
    let hub = ready_hub(vec![("faults", fault_server(10_000))]).await;
    let output = hub
        .call("faults", "fail", json!({ "message": "disk full" }), CALL)
        .await
        .unwrap();
    assert!(output.is_error);
    assert!(output.text.contains("disk full"), "{}", output.text);
}

#[tokio::test]
async fn json_rpc_error_is_distinct_from_tool_error() {
    let hub = ready_hub(vec![("everything", everything_stdio())]).await;
    let result = hub
        .call("everything", "no-such-tool", json!({}), CALL)
        .await;
    match result {
        Err(McpError::Rpc { .. }) => {}
        Ok(output) => assert!(output.is_error, "an unknown tool is an error either way"),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[tokio::test]
async fn slow_tool_times_out() {
    let hub = ready_hub(vec![("faults", fault_server(10_000))]).await;
    let started = Instant::now();
    let limit = Duration::from_millis(500);
    let err = hub
        .call("faults", "sleep", json!({ "seconds": 5 }), limit)
        .await
        .unwrap_err();
    assert!(matches!(err, McpError::Timeout(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(4));
    let after = hub
        .call("faults", "echo", json!({ "text": "next" }), CALL)
        .await
        .unwrap();
    assert_eq!(
        after.text, "next",
        "a timed-out call leaves the session usable"
    );
}

#[tokio::test]
async fn structured_content_is_preferred() {
    let hub = ready_hub(vec![("faults", fault_server(10_000))]).await;
    let output = hub
        .call("faults", "add", json!({ "a": 2, "b": 3 }), CALL)
        .await
        .unwrap();
    let value: Value = serde_json::from_str(&output.text).expect("structured content as JSON");
    assert_eq!(value, json!({ "result": 5 }));
}

#[tokio::test]
async fn crash_mid_call_fails_at_once_and_restarts() {
    let hub = ready_hub(vec![("faults", fault_server(20_000))]).await;
    let first_pid = hub
        .call("faults", "pid", json!({}), CALL)
        .await
        .unwrap()
        .text;

    let started = Instant::now();
    let err = hub
        .call("faults", "crash", json!({ "code": 3 }), CALL)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed before the 20 s timeout"
    );
    assert!(err.to_string().contains("exit status 3"), "{err}");

    let second_pid = hub
        .call("faults", "pid", json!({}), CALL)
        .await
        .unwrap()
        .text;
    assert_ne!(first_pid, second_pid, "the server was restarted");
    assert_eq!(hub.statuses()[0].state, ServerPhase::Ready);
}

#[tokio::test]
async fn child_gets_only_configured_environment() {
    let hub = ready_hub(vec![("faults", fault_server(10_000))]).await;
    let call =
        |name: &'static str| hub.call("faults", "environment", json!({ "name": name }), CALL);
    assert_eq!(call("EXAMPLE").await.unwrap().text, "1");
    assert_eq!(call("CARGO_MANIFEST_DIR").await.unwrap().text, "(unset)");
    assert_ne!(call("PATH").await.unwrap().text, "(unset)");
}

#[tokio::test]
async fn six_megabytes_of_text_arrive_whole() {
    let hub = ready_hub(vec![("faults", fault_server(60_000))]).await;
    let size = 6 * 1024 * 1024;
    let ascii = hub
        .call("faults", "big", json!({ "size": size }), CALL)
        .await
        .unwrap();
    assert_eq!(ascii.text.chars().count(), size);
    // Mostly CJK: about 18 MB of UTF-8 on one line, above rmcp's default 16 MiB line limit.
    let cjk = hub
        .call("faults", "big", json!({ "size": size, "cjk": true }), CALL)
        .await
        .unwrap();
    assert_eq!(cjk.text.chars().count(), size);

    let cut = truncate_chars(&cjk.text, 12_000);
    assert!(cut.truncated);
    assert!(cut.text.chars().count() <= 12_000);
    assert!(
        cut.text.contains(&format!("of {size} characters")),
        "{}",
        &cut.text[cut.text.len() - 120..]
    );
}

#[test]
fn truncation_respects_char_boundaries() {
    let text = "汉".repeat(1000);
    for max in [200, 201, 333, 999] {
        let cut = truncate_chars(&text, max);
        assert!(cut.truncated);
        assert!(
            cut.text.chars().count() <= max,
            "{max}: {}",
            cut.text.chars().count()
        );
        assert!(cut.text.starts_with("汉"));
        assert!(
            cut.text.contains("of 1000 characters (3000 bytes)"),
            "{}",
            cut.text
        );
    }
    let whole = truncate_chars(&text, 1000);
    assert!(!whole.truncated);
    assert_eq!(whole.text, text);
}

#[tokio::test]
async fn arguments_must_be_an_object() {
    let hub = ready_hub(vec![("faults", fault_server(10_000))]).await;
    let err = hub
        .call("faults", "echo", Value::String("x".into()), CALL)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("a string"), "{err}");
    let err = hub
        .call("nobody", "echo", json!({}), CALL)
        .await
        .unwrap_err();
    assert!(matches!(err, McpError::UnknownServer(_)));
}

#[tokio::test]
async fn echoed_header_secrets_are_masked() {
    use axum::http::HeaderMap;

    async fn echo_headers(headers: HeaderMap) -> (axum::http::StatusCode, String) {
        let auth = headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned());
        let key = headers
            .get("x-api-key")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            axum::http::StatusCode::BAD_REQUEST,
            format!("rejected {auth:?} and {key:?}"),
        )
    }
    let app = axum::Router::new().fallback(echo_headers);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let mut config = http(&format!("http://{addr}/mcp"));
    if let xiaomaolv::config::McpServerTransport::Http { headers, .. } = &mut config.transport {
        headers.insert(
            "Authorization".into(),
            xiaomaolv::config::Secret::new("Bearer hdr-SECRET-abc".into()),
        );
        headers.insert(
            "X-Api-Key".into(),
            xiaomaolv::config::Secret::new("xkey-SECRET-def".into()),
        );
    }
    let hub = McpHub::start(&hub_config(vec![("echoer", config)]));
    hub.settled(SETTLE).await;
    let status = hub.statuses().remove(0);
    assert_eq!(status.state, ServerPhase::Failed);
    let error = status.last_error.unwrap();
    assert!(!error.contains("hdr-SECRET-abc"), "{error}");
    assert!(!error.contains("xkey-SECRET-def"), "{error}");
    assert!(
        error.contains("********"),
        "the echoed values were masked: {error}"
    );
    server.abort();
}
