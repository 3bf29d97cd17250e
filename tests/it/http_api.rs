//! The HTTP API against the scripted fake provider: replies, streaming, history, bad input,
//! bearer auth, provider failures, per-session ordering and graceful shutdown.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::common::fake_openai::{completion, sse_body};
use crate::common::{FakeOpenAi, Options, Reply, TestGateway, message};
use crate::store::all_messages;

#[tokio::test]
async fn health_answers_ok() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let response = gateway
        .client
        .get(gateway.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "ok");
}

#[tokio::test]
async fn message_returns_reply_and_stores_turn() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("hello there"));
    let gateway = TestGateway::start(&fake.base_url()).await;

    let (status, body) = gateway.send(message("s1", "hi")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["session_id"], "s1");
    assert_eq!(body["reply"], "hello there");
    assert_eq!(body["usage"]["total_tokens"], 5);
    assert_eq!(body["activity"]["mode"], "direct");
    assert_eq!(body["activity"]["provider_requests"], 1);

    let history = gateway.history("s1").await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["role"], "user");
    assert_eq!(history[0]["content"], "hi");
    assert_eq!(history[0]["user_id"], "user-1");
    assert_eq!(history[1]["role"], "assistant");
    assert_eq!(history[1]["content"], "hello there");
    assert_eq!(history[1]["usage"]["prompt_tokens"], 3);
    assert_eq!(history[0]["turn_id"], history[1]["turn_id"]);
}

#[tokio::test]
async fn second_turn_sends_history_to_model() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("first answer"));
    fake.push(Reply::text("second answer"));
    let gateway = TestGateway::start(&fake.base_url()).await;
    gateway.send(message("s1", "first question")).await;
    gateway.send(message("s1", "second question")).await;

    let sent = &fake.requests()[1].body["messages"];
    let contents: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["first question", "first answer", "second question"]
    );
    assert_eq!(sent[1]["role"], "assistant");
}

#[tokio::test]
async fn system_prompt_goes_first() {
    let fake = FakeOpenAi::start().await;
    let options = Options {
        agent: "system_prompt = \"Be brief.\"",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    gateway.send(message("s1", "hi")).await;
    let sent = &fake.requests()[0].body["messages"];
    assert_eq!(sent[0], json!({ "role": "system", "content": "Be brief." }));
    assert_eq!(sent[1]["content"], "hi");
}

#[tokio::test]
async fn missing_usage_is_stored_as_unknown() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(completion("no usage here", None)));
    let gateway = TestGateway::start(&fake.base_url()).await;
    let (status, body) = gateway.send(message("s1", "hi")).await;
    assert_eq!(status, 200);
    assert_eq!(body["usage"], Value::Null);
    let history = gateway.history("s1").await.unwrap();
    assert_eq!(history[1]["usage"], Value::Null);
}

async fn read_sse(response: reqwest::Response) -> Vec<(String, Value)> {
    let mut text = String::new();
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        text.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
    }
    text.split("\n\n")
        .filter(|block| block.contains("data:"))
        .map(|block| {
            let event = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("message")
                .to_owned();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            (event, serde_json::from_str(data).unwrap())
        })
        .collect()
}

fn streamed_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, data)| data["text"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn stream_flag_streams_deltas_then_done() {
    let fake = FakeOpenAi::start().await;
    let body = sse_body(&["Hel", "lo ", "wörld 你好"]);
    fake.push(Reply::stream_split(&body, &[7, 50, 120]));
    let gateway = TestGateway::start(&fake.base_url()).await;

    let mut request = message("s1", "hi");
    request["stream"] = json!(true);
    let response = gateway.post_message(request).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = read_sse(response).await;

    assert_eq!(streamed_text(&events), "Hello wörld 你好");
    let (name, done) = events.last().unwrap();
    assert_eq!(name, "done");
    assert_eq!(done["reply"], "Hello wörld 你好");
    assert_eq!(done["usage"]["total_tokens"], 9);
    assert_eq!(fake.requests()[0].body["stream"], true);
    let history = gateway.history("s1").await.unwrap();
    assert_eq!(history[1]["content"], "Hello wörld 你好");
}

#[tokio::test]
async fn accept_header_selects_streaming() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::stream_split(&sse_body(&["a", "b"]), &[]));
    let gateway = TestGateway::start(&fake.base_url()).await;
    let response = gateway
        .client
        .post(gateway.url("/v1/messages"))
        .header("accept", "text/event-stream")
        .json(&message("s1", "hi"))
        .send()
        .await
        .unwrap();
    let events = read_sse(response).await;
    assert_eq!(streamed_text(&events), "ab");
    assert_eq!(events.last().unwrap().0, "done");

    // An explicit `"stream": false` wins over the header.
    fake.push(Reply::text("plain"));
    let mut body = message("s2", "hi");
    body["stream"] = json!(false);
    let response = gateway
        .client
        .post(gateway.url("/v1/messages"))
        .header("accept", "text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["reply"], "plain");
}

#[tokio::test]
async fn streaming_provider_failure_before_text_is_http_error() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::status(400, r#"{"error":{"message":"bad model"}}"#));
    let gateway = TestGateway::start(&fake.base_url()).await;
    let mut request = message("s1", "hi");
    request["stream"] = json!(true);
    let response = gateway.post_message(request).await;
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("bad model"),
        "{body}"
    );
    assert!(gateway.history("s1").await.is_none());
}

#[tokio::test]
async fn client_disconnect_mid_stream_still_stores_turn() {
    let fake = FakeOpenAi::start().await;
    let body = sse_body(&["one ", "two ", "three"]);
    let pieces = body
        .split_inclusive("\n\n")
        .map(|p| p.as_bytes().to_vec())
        .collect();
    fake.push(Reply::Stream {
        pieces,
        pause: Duration::from_millis(150),
    });
    let gateway = TestGateway::start(&fake.base_url()).await;

    let mut request = message("s1", "hi");
    request["stream"] = json!(true);
    let response = gateway.post_message(request).await;
    let mut body = response.bytes_stream();
    let _first = body.next().await.unwrap().unwrap();
    drop(body);

    let mut stored = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(history) = gateway.history("s1").await {
            stored = Some(history);
            break;
        }
    }
    let history = stored.expect("turn stored after the client left");
    assert_eq!(history[1]["content"], "one two three");
}

#[tokio::test]
async fn bad_input_is_rejected_and_nothing_stored() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let long_id = "x".repeat(257);
    let long_text = "y".repeat(32 * 1024 + 1);
    let cases: Vec<(Value, &str)> = vec![
        (json!({ "user_id": "u", "text": "t" }), "session_id"),
        (json!({ "session_id": "s", "text": "t" }), "user_id"),
        (json!({ "session_id": "s", "user_id": "u" }), "text"),
        (
            json!({ "session_id": "", "user_id": "u", "text": "t" }),
            "session_id",
        ),
        (
            json!({ "session_id": "s", "user_id": " ", "text": "t" }),
            "user_id",
        ),
        (
            json!({ "session_id": "s", "user_id": "u", "text": "  \n" }),
            "text",
        ),
        (
            json!({ "session_id": long_id, "user_id": "u", "text": "t" }),
            "session_id",
        ),
        (
            json!({ "session_id": "s", "user_id": long_id, "text": "t" }),
            "user_id",
        ),
        (
            json!({ "session_id": "s", "user_id": "u", "text": long_text }),
            "text",
        ),
        (
            json!({ "session_id": 7, "user_id": "u", "text": "t" }),
            "session_id",
        ),
        (
            json!({ "session_id": "s", "user_id": "u", "text": null }),
            "text",
        ),
        (
            json!({ "session_id": "s\u{0}x", "user_id": "u", "text": "t" }),
            "session_id",
        ),
        (
            json!({ "session_id": "ad\u{200b}min", "user_id": "u", "text": "t" }),
            "session_id",
        ),
        (
            json!({ "session_id": "s", "user_id": "\u{202e}nimda", "text": "t" }),
            "user_id",
        ),
        (
            json!({ "session_id": "s", "user_id": "u", "text": "a\u{0}b" }),
            "text",
        ),
        (
            json!({ "session_id": "s", "user_id": "u", "text": "t", "txt": 1 }),
            "txt",
        ),
        (
            json!({ "session_id": "s", "user_id": "u", "text": "t", "stream": "yes" }),
            "stream",
        ),
    ];
    for (body, field) in cases {
        let (status, response) = gateway.send(body.clone()).await;
        assert_eq!(status, 400, "{body}: {response}");
        assert_eq!(response["error"]["field"], field, "{body}: {response}");
        assert!(
            response["error"]["message"]
                .as_str()
                .unwrap()
                .contains(field),
            "{response}"
        );
    }
    // The message names the character to remove.
    let (_, response) = gateway
        .send(json!({ "session_id": "s", "user_id": "\u{202e}nimda", "text": "t" }))
        .await;
    let text = response["error"]["message"].as_str().unwrap();
    assert!(text.ends_with("remove U+202E"), "{response}");
    assert_eq!(fake.request_count(), 0);
    assert!(gateway.history("s").await.is_none());
}

#[tokio::test]
async fn line_separators_in_ids_are_rejected() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let separators = [
        ('\u{2028}', "U+2028", "a%E2%80%A8b"),
        ('\u{2029}', "U+2029", "a%E2%80%A9b"),
    ];
    for (separator, code, in_path) in separators {
        for field in ["session_id", "user_id"] {
            let mut body = message("s", "hi");
            body[field] = json!(format!("a{separator}b"));
            let (status, response) = gateway.send(body).await;
            assert_eq!(status, 400, "{field} with {code}: {response}");
            assert_eq!(response["error"]["type"], "invalid_request");
            assert_eq!(response["error"]["field"], field, "{response}");
            let text = response["error"]["message"].as_str().unwrap();
            assert!(text.contains(field), "{text}");
            assert!(text.contains(code), "{text}");
        }
        let url = gateway.url(&format!("/v1/sessions/{in_path}/messages"));
        let response = gateway.client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 400, "session path with {code}");
    }
    assert_eq!(fake.request_count(), 0);
    assert!(gateway.history("s").await.is_none());
}

#[tokio::test]
async fn id_of_exactly_256_bytes_is_accepted() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let id = "é".repeat(128);
    let (status, body) = gateway.send(message(&id, "hi")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn malformed_json_and_wrong_content_type_are_rejected() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let url = gateway.url("/v1/messages");
    let cases = [
        (
            Some("application/json"),
            "{\"session_id\": \"s\",",
            400,
            "invalid_request",
        ),
        (Some("application/json"), "[1, 2]", 400, "invalid_request"),
        (Some("text/plain"), "{}", 415, "unsupported_media_type"),
        (None, "{}", 415, "unsupported_media_type"),
    ];
    for (content_type, body, status, kind) in cases {
        let mut request = gateway.client.post(&url).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"]["type"], kind, "{json}");
    }

    // A syntax error keeps its position and shows the expected shape.
    let response = gateway
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"session_id\": \"s\",")
        .send()
        .await
        .unwrap();
    let json: Value = response.json().await.unwrap();
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("at line 1 column 19"), "{message}");
    assert!(
        message.contains("send one JSON object such as"),
        "{message}"
    );
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let body = json!({ "session_id": "s", "user_id": "u", "text": "z".repeat(70_000) });
    let (status, response) = gateway.send(body).await;
    assert_eq!(status, 413);
    assert_eq!(response["error"]["type"], "payload_too_large");
    assert!(gateway.history("s").await.is_none());
}

#[tokio::test]
async fn unknown_session_history_is_404() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let response = gateway
        .client
        .get(gateway.url("/v1/sessions/nope/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("nope"));
}

#[tokio::test]
async fn unknown_route_is_json_404() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let response = gateway
        .client
        .get(gateway.url("/v2/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["type"],
        "not_found"
    );
}

#[tokio::test]
async fn api_token_protects_api_routes_only() {
    let fake = FakeOpenAi::start().await;
    let options = Options {
        http: "api_bearer_token = \"s3cret\"",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    let url = gateway.url("/v1/messages");
    let body = message("s1", "hi");

    for header in [
        None,
        Some("Bearer wrong"),
        Some("Basic s3cret"),
        Some("Bearer"),
        Some("s3cret"),
    ] {
        let mut request = gateway.client.post(&url).json(&body);
        if let Some(header) = header {
            request = request.header("authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{header:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    let twice = gateway
        .client
        .post(&url)
        .header("authorization", "Bearer wrong")
        .header("authorization", "Bearer s3cret")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        twice.status(),
        401,
        "two Authorization headers are ambiguous"
    );
    for header in ["Bearer s3cret", "bearer s3cret", "BEARER   s3cret  "] {
        let response = gateway
            .client
            .post(&url)
            .header("authorization", header)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{header}");
    }
    let history = gateway
        .client
        .get(gateway.url("/v1/sessions/s1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(history.status(), 401);
    let health = gateway
        .client
        .get(gateway.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn disabled_channel_serves_only_health() {
    let fake = FakeOpenAi::start().await;
    let options = Options {
        http: "enabled = false",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    let (status, _) = gateway.send(message("s1", "hi")).await;
    assert_eq!(status, 404);
    let health = gateway
        .client
        .get(gateway.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn provider_failures_map_to_gateway_statuses() {
    let cases: Vec<(Vec<Reply>, u16, &str)> = vec![
        (vec![Reply::status(500, "oops"); 3], 502, "provider_error"),
        (
            vec![Reply::status(400, r#"{"error":{"message":"bad"}}"#)],
            502,
            "provider_error",
        ),
        (
            vec![Reply::Raw {
                status: 200,
                headers: vec![],
                body: "{not json".into(),
            }],
            502,
            "provider_error",
        ),
        (
            vec![
                Reply::Raw {
                    status: 429,
                    headers: vec![("retry-after", "0".into())],
                    body: String::new()
                };
                3
            ],
            503,
            "provider_rate_limited",
        ),
        (
            vec![Reply::text("late").after(Duration::from_secs(5)); 3],
            504,
            "provider_timeout",
        ),
    ];
    for (replies, status, kind) in cases {
        let fake = FakeOpenAi::start().await;
        for reply in replies {
            fake.push(reply);
        }
        let options = Options {
            provider: "request_timeout_ms = 300",
            ..Default::default()
        };
        let gateway = TestGateway::start_with(&fake.base_url(), options).await;
        let (got, body) = gateway.send(message("s1", "hi")).await;
        assert_eq!(got, status, "{kind}: {body}");
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert!(
            gateway.history("s1").await.is_none(),
            "{kind}: nothing stored"
        );
    }
}

#[tokio::test]
async fn unreachable_provider_is_503() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let options = Options {
        provider: "max_retries = 0",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&format!("http://127.0.0.1:{port}/v1"), options).await;
    let (status, body) = gateway.send(message("s1", "hi")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "provider_unavailable");
}

#[tokio::test]
async fn rate_limit_passes_retry_after_to_client() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Raw {
        status: 429,
        headers: vec![("retry-after", "120".into())],
        body: String::new(),
    });
    let gateway = TestGateway::start(&fake.base_url()).await;
    let response = gateway.post_message(message("s1", "hi")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "120");
    assert_eq!(
        fake.request_count(),
        1,
        "a Retry-After beyond the backoff cap is not waited for"
    );
}

#[tokio::test]
async fn same_session_turns_run_one_after_another() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("first").after(Duration::from_millis(300)));
    fake.push(Reply::text("second"));
    let gateway = TestGateway::start(&fake.base_url()).await;

    let first = gateway.send(message("shared", "one"));
    let second = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        gateway.send(message("shared", "two")).await
    };
    let ((s1, _), (s2, _)) = tokio::join!(first, second);
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(fake.max_in_flight(), 1);
    let second_request = &fake.requests()[1].body["messages"];
    assert_eq!(
        second_request.as_array().unwrap().len(),
        3,
        "second turn saw the first"
    );
    let history = gateway.history("shared").await.unwrap();
    let contents: Vec<&str> = history
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["one", "first", "two", "second"]);
}

#[tokio::test]
async fn different_sessions_run_in_parallel() {
    let fake = FakeOpenAi::start().await;
    for _ in 0..4 {
        fake.push(Reply::text("slow").after(Duration::from_millis(300)));
    }
    let gateway = TestGateway::start(&fake.base_url()).await;
    let turns = (0..4).map(|i| gateway.send(message(&format!("s{i}"), "hi")));
    let results = futures_util::future::join_all(turns).await;
    assert!(results.iter().all(|(status, _)| *status == 200));
    assert_eq!(fake.max_in_flight(), 4);
}

#[tokio::test]
async fn concurrent_turns_lose_no_history() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let turns = (0..40).map(|i| gateway.send(message(&format!("s{}", i % 4), &format!("m{i}"))));
    let results = futures_util::future::join_all(turns).await;
    assert!(results.iter().all(|(status, _)| *status == 200));
    for session in 0..4 {
        let history = gateway.history(&format!("s{session}")).await.unwrap();
        assert_eq!(history.len(), 20);
        for pair in history.chunks(2) {
            assert_eq!(pair[0]["role"], "user");
            assert_eq!(pair[1]["role"], "assistant");
            assert_eq!(pair[0]["turn_id"], pair[1]["turn_id"]);
        }
    }
}

#[tokio::test]
async fn shutdown_lets_in_flight_turn_finish() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("finished").after(Duration::from_millis(500)));
    let mut gateway = TestGateway::start(&fake.base_url()).await;
    let url = gateway.url("/v1/messages");
    let client = gateway.client.clone();
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .json(&message("s1", "hi"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gateway.shut_down().await;

    let body = in_flight.await.unwrap().unwrap();
    assert_eq!(body["reply"], "finished");
    let refused = reqwest::Client::new()
        .get(gateway.url("/health"))
        .send()
        .await;
    assert!(refused.is_err(), "listener closed after shutdown");
    let stored = all_messages(&*gateway.state.store, "s1").await.unwrap();
    assert_eq!(stored.len(), 2);
}

#[tokio::test]
async fn non_object_and_trailing_bodies_are_rejected() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let url = gateway.url("/v1/messages");
    let bodies = [
        r#"["s1", "u1", "hi", false]"#,
        r#"{"session_id": "s1", "user_id": "u1", "text": "hi"} garbage"#,
        r#"{"session_id": "s1", "user_id": "u1", "text": "hi"}{}"#,
    ];
    for body in bodies {
        let response = gateway
            .client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(json["error"]["type"], "invalid_request", "{json}");
    }
    assert_eq!(fake.request_count(), 0);
    assert!(gateway.history("s1").await.is_none());
}

#[tokio::test]
async fn wrong_method_is_json_405() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    for (method, path) in [
        (reqwest::Method::GET, "/v1/messages"),
        (reqwest::Method::DELETE, "/v1/sessions/s1/messages"),
        (reqwest::Method::POST, "/health"),
    ] {
        let response = gateway
            .client
            .request(method.clone(), gateway.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(
            json["error"]["type"], "method_not_allowed",
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn api_token_covers_unknown_api_paths() {
    let fake = FakeOpenAi::start().await;
    let options = Options {
        http: "api_bearer_token = \"s3cret\"",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    let response = gateway
        .client
        .get(gateway.url("/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let with_token = gateway
        .client
        .get(gateway.url("/v1/nope"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(with_token.status(), 404);
}

#[tokio::test]
async fn declared_oversized_body_is_413_without_reading() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let head = "POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 100000000\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let mut response = vec![0u8; 512];
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut stream, &mut response),
    )
    .await
    .expect("answered without waiting for the body")
    .unwrap();
    let text = String::from_utf8_lossy(&response[..read]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test]
async fn invalid_percent_encoding_in_path_is_json_400() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    let response = gateway
        .client
        .get(gateway.url("/v1/sessions/%FF/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let json: Value = response.json().await.unwrap();
    assert_eq!(json["error"]["field"], "session_id", "{json}");
}

/// Saves `turns` turns `t0`, `t1`, … on `session` straight into the gateway's store, each with
/// messages `q{n}` and `a{n}` and one tool call named `lookup_{n}`.
async fn seed_history(gateway: &TestGateway, session: &str, turns: usize) {
    for t in 0..turns {
        let mut turn = crate::store::turn(
            session,
            &format!("t{t}"),
            &format!("q{t}"),
            &format!("a{t}"),
            None,
        );
        turn.tool_calls = vec![xiaomaolv::agent::ToolCallRecord {
            name: format!("lookup_{t}"),
            server: Some("search".to_owned()),
            tool: Some("lookup".to_owned()),
            arguments: json!({ "turn": t }),
            status: xiaomaolv::agent::ToolCallStatus::Ok,
            error: None,
            duration_ms: 4,
            truncated: false,
            origin: xiaomaolv::agent::ToolCallOrigin::ToolLoop,
        }];
        gateway.state.store.save_turn(&turn).await.unwrap();
    }
}

/// Gets `/v1/sessions/{session}/messages?{query}` and returns the status and the JSON body.
async fn get_history(gateway: &TestGateway, session: &str, query: &str) -> (u16, Value) {
    let url = gateway.url(&format!("/v1/sessions/{session}/messages?{query}"));
    let response = gateway.client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn contents(messages: &Value) -> Vec<&str> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn history_pages_cover_session_once() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    seed_history(&gateway, "long", 25).await;

    let mut pages = Vec::new();
    let mut query = "limit=7".to_owned();
    loop {
        let (status, body) = get_history(&gateway, "long", &query).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(body["session_id"], "long");
        let next_before = body["next_before"].clone();
        pages.push(body);
        if next_before.is_null() {
            break;
        }
        query = format!("limit=7&before={next_before}");
        assert!(pages.len() < 20, "paging does not end");
    }

    let sizes: Vec<usize> = pages
        .iter()
        .map(|page| page["messages"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [7, 7, 7, 7, 7, 7, 7, 1]);
    for page in &pages[..7] {
        assert_eq!(page["next_before"], page["messages"][0]["id"]);
    }
    let last = pages.last().unwrap();
    assert!(
        last.as_object().unwrap().contains_key("next_before"),
        "next_before is present as null on the last page: {last}"
    );
    let read: Vec<&str> = pages
        .iter()
        .rev()
        .flat_map(|page| contents(&page["messages"]))
        .collect();
    let expected: Vec<String> = (0..25)
        .flat_map(|t| [format!("q{t}"), format!("a{t}")])
        .collect();
    assert_eq!(read, expected);
}

#[tokio::test]
async fn history_without_parameters_returns_newest_100() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    seed_history(&gateway, "long", 60).await;

    let (status, first) = get_history(&gateway, "long", "").await;
    assert_eq!(status, 200, "{first}");
    let messages = first["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 100);
    assert_eq!(messages[0]["content"], "q10");
    assert_eq!(messages[99]["content"], "a59");
    assert_eq!(first["next_before"], messages[0]["id"]);

    let before = &first["next_before"];
    let (status, second) = get_history(&gateway, "long", &format!("before={before}")).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["messages"].as_array().unwrap().len(), 20);
    assert_eq!(second["messages"][0]["content"], "q0");
    assert_eq!(second["next_before"], Value::Null);
}

#[tokio::test]
async fn history_tool_calls_stay_with_turn_across_pages() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    seed_history(&gateway, "tools", 3).await;

    // Pages of 3 messages split turn t1: q1 is on the older page and a1 on the newer one.
    let (_, newer) = get_history(&gateway, "tools", "limit=3").await;
    assert_eq!(contents(&newer["messages"]), ["a1", "q2", "a2"]);
    let before = &newer["next_before"];
    let (_, older) = get_history(&gateway, "tools", &format!("limit=3&before={before}")).await;
    assert_eq!(contents(&older["messages"]), ["q0", "a0", "q1"]);

    let tool_names = |message: &Value| -> Vec<String> {
        message["tool_calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .map(|call| call["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(tool_names(&newer["messages"][0]), ["lookup_1"], "a1");
    assert_eq!(
        tool_names(&newer["messages"][1]),
        Vec::<String>::new(),
        "q2"
    );
    assert_eq!(tool_names(&newer["messages"][2]), ["lookup_2"], "a2");
    assert_eq!(
        tool_names(&older["messages"][0]),
        Vec::<String>::new(),
        "q0"
    );
    assert_eq!(tool_names(&older["messages"][1]), ["lookup_0"], "a0");
    assert_eq!(
        tool_names(&older["messages"][2]),
        Vec::<String>::new(),
        "q1"
    );
    assert_eq!(
        newer["messages"][0]["tool_calls"][0]["arguments"],
        json!({ "turn": 1 })
    );
}

#[tokio::test]
async fn history_bad_query_is_400() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    seed_history(&gateway, "s1", 1).await;
    // The query, the field, and what the message must contain.
    let cases: [(&str, &str, &[&str]); 7] = [
        ("limit=0", "limit", &["`limit`", "\"0\"", "from 1 to 1000"]),
        (
            "limit=5000",
            "limit",
            &["`limit`", "\"5000\"", "from 1 to 1000"],
        ),
        (
            "limit=abc",
            "limit",
            &["`limit`", "\"abc\"", "from 1 to 1000"],
        ),
        (
            "before=-1",
            "before",
            &["`before`", "\"-1\"", "from 1 to 9223372036854775807"],
        ),
        ("page=2", "page", &["\"page\"", "`limit`", "`before`"]),
        ("limit=5&limit=6", "limit", &["`limit`", "more than once"]),
        ("limit=5&offset=10", "offset", &["\"offset\"", "`limit`"]),
    ];
    for (query, field, expected) in cases {
        for session in ["s1", "missing"] {
            let (status, body) = get_history(&gateway, session, query).await;
            assert_eq!(status, 400, "{session}?{query}: {body}");
            assert_eq!(body["error"]["type"], "invalid_request", "{query}");
            assert_eq!(body["error"]["field"], field, "{query}");
            let message = body["error"]["message"].as_str().unwrap();
            for part in expected {
                assert!(message.contains(part), "{query}: {message}");
            }
        }
    }
}
