//! `GET /v1/mcp/servers`, `GET /v1/mcp/tools` and `POST /v1/mcp/tools/{server}/{tool}`.

use serde_json::{Value, json};

use crate::common::mcp_servers::{fault_server_script, python};
use crate::common::{FakeOpenAi, Options, TestGateway};

fn faults_table() -> String {
    format!(
        "[mcp.servers.faults]\ncommand = \"{}\"\nargs = [\"{}\"]\n",
        python(),
        fault_server_script()
    )
}

async fn admin_gateway(fake: &FakeOpenAi, token: bool) -> TestGateway {
    let http = if token {
        "api_bearer_token = \"admin-token\""
    } else {
        ""
    };
    let options = Options {
        http,
        extra: faults_table(),
        ..Default::default()
    };
    TestGateway::start_with(&fake.base_url(), options).await
}

async fn get(gateway: &TestGateway, path: &str) -> (u16, Value) {
    let response = gateway
        .client
        .get(gateway.url(path))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

async fn call(gateway: &TestGateway, path: &str, body: &str) -> (u16, Value) {
    let response = gateway
        .client
        .post(gateway.url(path))
        .bearer_auth("admin-token")
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn admin_routes_absent_without_api_token() {
    let fake = FakeOpenAi::start().await;
    let gateway = admin_gateway(&fake, false).await;
    for path in ["/v1/mcp/servers", "/v1/mcp/tools"] {
        let response = gateway.client.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    let response = gateway
        .client
        .post(gateway.url("/v1/mcp/tools/faults/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn admin_routes_require_the_token() {
    let fake = FakeOpenAi::start().await;
    let gateway = admin_gateway(&fake, true).await;
    let response = gateway
        .client
        .get(gateway.url("/v1/mcp/servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn servers_and_tools_are_listed() {
    let fake = FakeOpenAi::start().await;
    let gateway = admin_gateway(&fake, true).await;
    let (status, body) = get(&gateway, "/v1/mcp/servers").await;
    assert_eq!(status, 200);
    let server = &body["servers"][0];
    assert_eq!(server["name"], "faults");
    assert_eq!(server["transport"], "stdio");
    assert_eq!(server["state"], "ready");
    assert_eq!(server["tool_count"], 9);
    assert_eq!(server["last_error"], Value::Null);

    let (status, body) = get(&gateway, "/v1/mcp/tools").await;
    assert_eq!(status, 200);
    let echo = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "echo")
        .unwrap();
    assert_eq!(echo["server"], "faults");
    assert_eq!(echo["annotations"]["read_only"], true);
    assert_eq!(echo["annotations"]["idempotent"], true);
    assert_eq!(echo["input_schema"]["required"], json!(["text"]));
}

#[tokio::test]
async fn tool_call_route_runs_the_tool() {
    let fake = FakeOpenAi::start().await;
    let gateway = admin_gateway(&fake, true).await;
    let (status, body) = call(
        &gateway,
        "/v1/mcp/tools/faults/echo",
        r#"{"text": "direct"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["text"], "direct");
    assert_eq!(body["is_error"], false);
    assert!(body["duration_ms"].is_u64());

    let (status, body) = call(
        &gateway,
        "/v1/mcp/tools/faults/fail",
        r#"{"message": "nope"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["is_error"], true);

    let (status, body) = call(&gateway, "/v1/mcp/tools/faults/echo", r#"{"text": 5}"#).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "arguments");

    let (status, body) = call(&gateway, "/v1/mcp/tools/faults/nothing", "{}").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no tool `nothing`"),
        "{body}"
    );
    let (status, body) = call(&gateway, "/v1/mcp/tools/nowhere/echo", "{}").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown MCP server `nowhere`"),
        "{body}"
    );
    let (status, _) = call(&gateway, "/v1/mcp/tools/faults/echo", "[1]").await;
    assert_eq!(status, 400);
    assert_eq!(fake.request_count(), 0, "admin calls never reach the model");
}
