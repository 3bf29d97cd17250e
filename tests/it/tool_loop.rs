//! The classic tool loop end to end through `POST /v1/messages`: the scripted fake model asks for
//! tools, real MCP servers (the Python fault server and server-everything) run them.

use serde_json::{Value, json};

use crate::common::fake_openai::tool_calls;
use crate::common::mcp_servers::{everything_script, fault_server_script, python};
use crate::common::{FakeOpenAi, Options, Reply, TestGateway, message};

fn mcp_tables() -> String {
    format!(
        r#"
[mcp.servers.faults]
command = "{python}"
args = ["{fault}"]
timeout_ms = 20000

[mcp.servers.everything]
command = "node"
args = ["{everything}", "stdio"]
timeout_ms = 20000
"#,
        python = python(),
        fault = fault_server_script(),
        everything = everything_script(),
    )
}

async fn gateway_with_tools(fake: &FakeOpenAi, agent: &'static str) -> TestGateway {
    let options = Options {
        agent,
        extra: mcp_tables(),
        ..Default::default()
    };
    TestGateway::start_with(&fake.base_url(), options).await
}

/// The `tool` messages of a recorded request, as `(tool_call_id, content)`.
fn tool_messages(request: &Value) -> Vec<(String, String)> {
    request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| {
            (
                m["tool_call_id"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn single_call_answers_with_tool_result() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_calls(
        &[("everything__get-sum", r#"{"a": 2, "b": 40}"#)],
        "tool_calls",
    )));
    fake.push(Reply::text("The sum is 42."));
    let gateway = gateway_with_tools(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "What is 2 + 40?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "The sum is 42.");
    assert_eq!(body["activity"]["mode"], "tool_loop");
    assert_eq!(body["activity"]["provider_requests"], 2);
    assert_eq!(
        body["usage"]["total_tokens"], 20,
        "usage summed over both requests"
    );
    let call = &body["tool_calls"][0];
    assert_eq!(call["server"], "everything");
    assert_eq!(call["tool"], "get-sum");
    assert_eq!(call["status"], "ok");
    assert_eq!(call["arguments"], json!({ "a": 2, "b": 40 }));

    let requests = fake.requests();
    let tools = requests[0].body["tools"].as_array().unwrap();
    assert!(
        tools
            .iter()
            .any(|t| t["function"]["name"] == "everything__get-sum")
    );
    assert!(
        tools
            .iter()
            .any(|t| t["function"]["name"] == "faults__echo")
    );
    let sent_back = &requests[1].body["messages"];
    let assistant = sent_back
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "assistant")
        .unwrap();
    assert!(
        assistant["tool_calls"][0]["function"]["arguments"].is_string(),
        "arguments go back as a string"
    );
    let results = tool_messages(&requests[1].body);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0, "call_0");
    assert!(results[0].1.contains("42"), "{}", results[0].1);

    let history = gateway.history("s1").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["tool_calls"][0]["tool"], "get-sum");
    assert_eq!(history[1]["tool_calls"][0]["status"], "ok");
    assert!(history[1]["tool_calls"][0]["duration_ms"].is_u64());
    assert_eq!(history[1]["tool_calls"][0]["truncated"], false);
}

#[tokio::test]
async fn parallel_calls_run_concurrently_in_order() {
    let fake = FakeOpenAi::start().await;
    let sleep = r#"{"seconds": 0.6}"#;
    fake.push(Reply::Json(tool_calls(
        &[
            ("faults__sleep", sleep),
            ("faults__sleep", sleep),
            ("faults__echo", r#"{"text": "third"}"#),
        ],
        "tool_calls",
    )));
    fake.push(Reply::text("done"));
    let gateway = gateway_with_tools(&fake, "max_parallel_tool_calls = 3").await;

    let started = std::time::Instant::now();
    let (status, body) = gateway.send(message("s1", "go")).await;
    let wall = started.elapsed().as_millis() as u64;
    assert_eq!(status, 200, "{body}");
    let calls = body["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c["status"] == "ok"), "{body}");
    let summed: u64 = calls
        .iter()
        .map(|c| c["duration_ms"].as_u64().unwrap())
        .sum();
    assert!(
        wall < summed,
        "calls overlapped: wall {wall} ms, summed {summed} ms"
    );

    let results = tool_messages(&fake.requests()[1].body);
    let ids: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["call_0", "call_1", "call_2"]);
    assert_eq!(results[2].1, "third");
}

#[tokio::test]
async fn malformed_arguments_then_corrected_call() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_calls(
        &[("faults__add", r#"{"a": 2, "b":"#)],
        "length",
    )));
    fake.push(Reply::Json(tool_calls(
        &[("faults__add", r#"{"a": "two", "b": 3}"#)],
        "tool_calls",
    )));
    fake.push(Reply::Json(tool_calls(
        &[("faults__add", r#"{"a": 2, "b": 3}"#)],
        "tool_calls",
    )));
    fake.push(Reply::text("5"));
    let gateway = gateway_with_tools(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "add")).await;
    assert_eq!(status, 200, "{body}");
    let statuses: Vec<&str> = body["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["rejected", "rejected", "ok"]);

    let requests = fake.requests();
    let invalid_json = &tool_messages(&requests[1].body)[0].1;
    assert!(invalid_json.contains("not valid JSON"), "{invalid_json}");
    assert!(
        invalid_json.contains("finish_reason = length"),
        "{invalid_json}"
    );
    let schema = &tool_messages(&requests[2].body)[1].1;
    assert!(schema.contains("input schema"), "{schema}");
    assert!(schema.contains("/a"), "names the field: {schema}");
    let ok = &tool_messages(&requests[3].body)[2].1;
    assert!(ok.contains('5'), "{ok}");
}

#[tokio::test]
async fn unknown_tool_is_reported_to_model() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_calls(
        &[("weather__forecast", "{}")],
        "tool_calls",
    )));
    fake.push(Reply::text("Sorry, I cannot check the weather."));
    let gateway = gateway_with_tools(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "weather?")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tool_calls"][0]["status"], "rejected");
    assert_eq!(body["tool_calls"][0]["server"], Value::Null);
    let content = &tool_messages(&fake.requests()[1].body)[0].1;
    assert!(
        content.contains("Unknown tool `weather__forecast`"),
        "{content}"
    );
    assert!(
        content.contains("faults__echo"),
        "lists the tools: {content}"
    );
}

#[tokio::test]
async fn iteration_limit_forces_final_answer() {
    let fake = FakeOpenAi::start().await;
    for _ in 0..2 {
        fake.push(Reply::Json(tool_calls(
            &[("faults__echo", r#"{"text": "again"}"#)],
            "tool_calls",
        )));
    }
    fake.push(Reply::text("final without tools"));
    let gateway = gateway_with_tools(&fake, "max_tool_iterations = 2").await;

    let (status, body) = gateway.send(message("s1", "loop")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "final without tools");
    assert_eq!(body["activity"]["tool_iterations_exhausted"], true);
    assert_eq!(body["activity"]["provider_requests"], 3);
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests[1].body["tools"].is_array());
    assert!(
        requests[2].body.get("tools").is_none(),
        "the last request offers no tools"
    );
}

#[tokio::test]
async fn tool_error_and_empty_arguments() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_calls(
        &[
            ("faults__fail", r#"{"message": "quota exceeded"}"#),
            ("faults__pid", ""),
        ],
        "tool_calls",
    )));
    fake.push(Reply::text("ok"));
    let gateway = gateway_with_tools(&fake, "").await;

    let (status, body) = gateway.send(message("s1", "try")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tool_calls"][0]["status"], "tool_error");
    assert_eq!(body["tool_calls"][1]["status"], "ok");
    assert_eq!(body["tool_calls"][1]["arguments"], json!({}));
    let results = tool_messages(&fake.requests()[1].body);
    assert!(results[0].1.contains("quota exceeded"), "{}", results[0].1);
    assert!(
        results[0].1.starts_with("The tool reported an error"),
        "{}",
        results[0].1
    );
}

#[tokio::test]
async fn large_result_is_truncated_for_model() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_calls(
        &[("faults__big", r#"{"size": 50000, "cjk": true}"#)],
        "tool_calls",
    )));
    fake.push(Reply::text("long"));
    let gateway = gateway_with_tools(&fake, "max_tool_result_chars = 1000").await;

    let (status, body) = gateway.send(message("s1", "big")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tool_calls"][0]["truncated"], true);
    let content = &tool_messages(&fake.requests()[1].body)[0].1;
    assert!(content.chars().count() <= 1000);
    assert!(content.contains("of 50000 characters"), "{content}");
}

#[tokio::test]
async fn streaming_turn_runs_tools_and_reports_them() {
    use futures_util::StreamExt;

    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_calls(
        &[("faults__echo", r#"{"text": "streamed"}"#)],
        "tool_calls",
    )));
    fake.push(Reply::stream_split(
        &crate::common::fake_openai::sse_body(&["echo ", "said streamed"]),
        &[9],
    ));
    let gateway = gateway_with_tools(&fake, "").await;

    let mut request = message("s1", "echo it");
    request["stream"] = json!(true);
    let response = gateway.post_message(request).await;
    assert_eq!(response.status(), 200);
    let mut text = String::new();
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        text.push_str(&String::from_utf8_lossy(&piece.unwrap()));
    }
    let done = text
        .split("\n\n")
        .find(|b| b.starts_with("event: done"))
        .expect("done event");
    let done: Value = serde_json::from_str(done.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(done["reply"], "echo said streamed");
    assert_eq!(done["tool_calls"][0]["status"], "ok");
    assert_eq!(done["activity"]["mode"], "tool_loop");
    let history = gateway.history("s1").await.unwrap();
    assert_eq!(history[1]["tool_calls"][0]["tool"], "echo");
}

#[tokio::test]
async fn duplicate_call_ids_are_made_distinct() {
    let fake = FakeOpenAi::start().await;
    let mut reply = tool_calls(
        &[
            ("faults__echo", r#"{"text": "one"}"#),
            ("faults__echo", r#"{"text": "two"}"#),
        ],
        "tool_calls",
    );
    for call in reply["choices"][0]["message"]["tool_calls"]
        .as_array_mut()
        .unwrap()
    {
        call["id"] = json!("same");
    }
    fake.push(Reply::Json(reply));
    fake.push(Reply::text("ok"));
    let gateway = gateway_with_tools(&fake, "").await;

    let (status, _) = gateway.send(message("s1", "twice")).await;
    assert_eq!(status, 200);
    let results = tool_messages(&fake.requests()[1].body);
    assert_eq!(results.len(), 2);
    assert_ne!(results[0].0, results[1].0);
    assert_eq!(results[0].1, "one");
    assert_eq!(results[1].1, "two");
}
