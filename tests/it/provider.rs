//! The provider client against the scripted fake OpenAI server: wire format, streaming, retries,
//! timeouts and deadlines.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use xiaomaolv::config::{ProviderConfig, ProviderKind, Secret};
use xiaomaolv::provider::wire::{
    ChatMessage, FunctionCall, FunctionSpec, Role, ToolArguments, ToolCall, ToolSpec, Usage,
};
use xiaomaolv::provider::{Completion, ProviderClient, ProviderError};

use crate::common::fake_openai::{completion, sse_body};
use crate::common::{FakeOpenAi, Reply};

/// Upper bound on a call that must return without waiting for a long `Retry-After` or delay.
const MAX_ELAPSED_WITHOUT_WAIT: Duration = Duration::from_secs(5);

fn config(base_url: String) -> ProviderConfig {
    ProviderConfig {
        kind: ProviderKind::OpenAiCompatible,
        base_url,
        api_key: None,
        model: "fake-model".to_owned(),
        connect_timeout_ms: 2_000,
        request_timeout_ms: 10_000,
        max_retries: 2,
        retry_initial_backoff_ms: 10,
        retry_max_backoff_ms: 5_000,
        temperature: None,
        max_tokens: None,
        max_response_bytes: 1024 * 1024,
    }
}

fn client_with(config: &ProviderConfig) -> ProviderClient {
    ProviderClient::new("fake", config).expect("client builds")
}

fn client(fake: &FakeOpenAi) -> ProviderClient {
    client_with(&config(fake.base_url()))
}

fn deadline_in(duration: Duration) -> Instant {
    Instant::now() + duration
}

fn far_deadline() -> Instant {
    deadline_in(Duration::from_secs(60))
}

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::text(Role::System, "You are terse."),
        ChatMessage::text(Role::User, "Say hello."),
    ]
}

fn weather_tool() -> ToolSpec {
    ToolSpec {
        kind: "function",
        function: FunctionSpec {
            name: "get_weather".to_owned(),
            description: Some("Current weather of a city".to_owned()),
            parameters: json!({
                "type": "object",
                "properties": { "city": { "type": "string" } },
                "required": ["city"]
            }),
        },
    }
}

async fn complete(client: &ProviderClient) -> Result<Completion, ProviderError> {
    client
        .complete(conversation(), Vec::new(), far_deadline())
        .await
}

/// Runs a streaming request and returns its result and every text fragment sent on the channel.
async fn complete_streaming(
    client: &ProviderClient,
    deadline: Instant,
) -> (Result<Completion, ProviderError>, Vec<String>) {
    let (text_tx, mut text_rx) = mpsc::unbounded_channel();
    let result = client
        .complete_streaming(conversation(), Vec::new(), deadline, &text_tx)
        .await;
    drop(text_tx);
    let mut fragments = Vec::new();
    while let Some(fragment) = text_rx.recv().await {
        fragments.push(fragment);
    }
    (result, fragments)
}

/// SSE text with one `data:` event per chunk, without `[DONE]`.
fn sse_events(chunks: &[Value]) -> String {
    chunks
        .iter()
        .map(|chunk| format!("data: {chunk}\n\n"))
        .collect()
}

fn content_chunk(text: &str) -> Value {
    json!({ "choices": [{ "index": 0, "delta": { "content": text }, "finish_reason": null }] })
}

/// Builds a chat completion whose only choice calls tools with these `tool_calls` entries.
fn tool_call_completion(tool_calls: Value) -> Value {
    json!({
        "model": "fake-model",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": null, "tool_calls": tool_calls },
            "finish_reason": "tool_calls"
        }]
    })
}

fn tool_call_entry(id: &str, arguments: Value) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": { "name": "get_weather", "arguments": arguments }
    })
}

fn paris() -> ToolArguments {
    ToolArguments::Json(json!({ "city": "Paris" }))
}

fn status_reply(status: u16, retry_after: &str) -> Reply {
    Reply::Raw {
        status,
        headers: vec![("retry-after", retry_after.to_owned())],
        body: json!({ "error": { "message": "slow down" } }).to_string(),
    }
}

fn expect_status(error: ProviderError) -> (u16, String, Option<Duration>) {
    match error {
        ProviderError::Status {
            status,
            message,
            retry_after,
        } => (status, message, retry_after),
        other => panic!("expected ProviderError::Status, got {other:?}"),
    }
}

fn byte_offset(body: &str, needle: &str) -> usize {
    body.find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in body"))
}

// Non-streaming requests.

#[tokio::test]
async fn completion_parses_content_usage_and_reason() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("Hello there."));

    let completion = complete(&client(&fake)).await.unwrap();

    assert_eq!(completion.content, "Hello there.");
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    assert_eq!(completion.model.as_deref(), Some("fake-model"));
    assert!(completion.tool_calls.is_empty());
    let usage = completion.usage.expect("usage was sent");
    assert_eq!(usage.prompt_tokens, 3);
    assert_eq!(usage.completion_tokens, 2);
    assert_eq!(usage.total_tokens, 5);
}

#[tokio::test]
async fn request_body_carries_model_and_messages() {
    let fake = FakeOpenAi::start().await;

    complete(&client(&fake)).await.unwrap();

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    assert_eq!(body["model"], "fake-model");
    assert_eq!(
        body["messages"],
        json!([
            { "role": "system", "content": "You are terse." },
            { "role": "user", "content": "Say hello." }
        ])
    );
    assert_eq!(body["stream"], false);
    assert!(body.get("stream_options").is_none());
    assert!(body.get("tools").is_none(), "no tools given: {body}");
    assert!(body.get("temperature").is_none());
    assert!(body.get("max_tokens").is_none());
}

#[tokio::test]
async fn request_body_carries_tools_when_given() {
    let fake = FakeOpenAi::start().await;

    client(&fake)
        .complete(conversation(), vec![weather_tool()], far_deadline())
        .await
        .unwrap();

    let body = &fake.requests()[0].body;
    let tools = body["tools"].as_array().expect("tools is an array");
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0]["type"], "function");
    assert_eq!(tools[0]["function"]["name"], "get_weather");
    assert_eq!(
        tools[0]["function"]["description"],
        "Current weather of a city"
    );
    assert_eq!(
        tools[0]["function"]["parameters"]["required"],
        json!(["city"])
    );
}

#[tokio::test]
async fn request_body_carries_sampling_settings() {
    let fake = FakeOpenAi::start().await;
    let mut settings = config(fake.base_url());
    settings.temperature = Some(0.5);
    settings.max_tokens = Some(64);

    complete(&client_with(&settings)).await.unwrap();

    let body = &fake.requests()[0].body;
    assert_eq!(body["temperature"], 0.5);
    assert_eq!(body["max_tokens"], 64);
}

#[tokio::test]
async fn bearer_token_sent_when_api_key_set() {
    let fake = FakeOpenAi::start().await;
    let mut settings = config(fake.base_url());
    settings.api_key = Secret::non_empty("sk-test-123".to_owned());

    complete(&client_with(&settings)).await.unwrap();

    let authorization = fake.requests()[0].authorization.clone();
    assert_eq!(authorization.as_deref(), Some("Bearer sk-test-123"));
}

#[tokio::test]
async fn no_authorization_without_api_key() {
    let fake = FakeOpenAi::start().await;

    complete(&client(&fake)).await.unwrap();

    assert_eq!(fake.requests()[0].authorization, None);
}

#[tokio::test]
async fn missing_usage_is_none_not_zero() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(completion("no usage here", None)));

    let completion = complete(&client(&fake)).await.unwrap();

    assert_eq!(completion.content, "no usage here");
    assert_eq!(completion.usage, None);
}

#[tokio::test]
async fn empty_or_null_finish_reason_is_none() {
    let fake = FakeOpenAi::start().await;
    for reason in [json!(""), Value::Null] {
        let mut body = completion("text", Some((1, 1)));
        body["choices"][0]["finish_reason"] = reason;
        fake.push(Reply::Json(body));
    }
    let mut body = completion("text", Some((1, 1)));
    body["choices"][0]
        .as_object_mut()
        .unwrap()
        .remove("finish_reason");
    fake.push(Reply::Json(body));

    let client = client(&fake);
    for case in ["empty string", "null", "absent"] {
        let completion = complete(&client).await.unwrap();
        assert_eq!(completion.finish_reason, None, "finish_reason {case}");
    }
}

#[tokio::test]
async fn response_without_choices_is_invalid() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(json!({ "model": "fake-model", "choices": [] })));

    let error = complete(&client(&fake)).await.unwrap_err();

    assert!(
        matches!(error, ProviderError::InvalidResponse(_)),
        "{error:?}"
    );
}

// Tool-call arguments.

#[tokio::test]
async fn tool_arguments_in_any_shape_become_same_json() {
    let as_text = json!({ "city": "Paris" }).to_string();
    let as_encoded_string = Value::String(as_text.clone()).to_string();
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_call_completion(json!([
        tool_call_entry("call_text", json!(as_text)),
        tool_call_entry("call_object", json!({ "city": "Paris" })),
        tool_call_entry("call_encoded", json!(as_encoded_string)),
    ]))));

    let completion = complete(&client(&fake)).await.unwrap();

    assert_eq!(completion.content, "");
    assert_eq!(completion.finish_reason.as_deref(), Some("tool_calls"));
    let ids: Vec<&str> = completion
        .tool_calls
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(ids, ["call_text", "call_object", "call_encoded"]);
    for call in &completion.tool_calls {
        assert_eq!(call.kind, "function", "{}", call.id);
        assert_eq!(call.function.name, "get_weather", "{}", call.id);
        assert_eq!(call.function.arguments, paris(), "{}", call.id);
    }
}

#[tokio::test]
async fn invalid_tool_arguments_kept_verbatim() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_call_completion(json!([
        tool_call_entry("call_cut", json!("{\"city\": \"Par")),
        tool_call_entry("call_prose", json!("city=Paris")),
    ]))));

    let completion = complete(&client(&fake)).await.unwrap();

    assert_eq!(completion.tool_calls.len(), 2);
    assert_eq!(
        completion.tool_calls[0].function.arguments,
        ToolArguments::Invalid("{\"city\": \"Par".to_owned())
    );
    assert_eq!(
        completion.tool_calls[1].function.arguments,
        ToolArguments::Invalid("city=Paris".to_owned())
    );
}

#[tokio::test]
async fn empty_tool_arguments_become_empty_object() {
    let fake = FakeOpenAi::start().await;
    let mut absent = tool_call_entry("call_absent", Value::Null);
    absent["function"]
        .as_object_mut()
        .unwrap()
        .remove("arguments");
    fake.push(Reply::Json(tool_call_completion(json!([
        tool_call_entry("call_empty", json!("")),
        tool_call_entry("call_blank", json!("  ")),
        tool_call_entry("call_null", Value::Null),
        absent,
    ]))));

    let completion = complete(&client(&fake)).await.unwrap();

    assert_eq!(completion.tool_calls.len(), 4);
    for call in &completion.tool_calls {
        assert_eq!(
            call.function.arguments,
            ToolArguments::Json(json!({})),
            "{}",
            call.id
        );
    }
}

#[test]
fn tool_arguments_serialize_as_one_json_string() {
    let message = ChatMessage {
        role: Role::Assistant,
        content: None,
        tool_calls: vec![
            ToolCall {
                id: "call_json".to_owned(),
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: "get_weather".to_owned(),
                    arguments: paris(),
                },
            },
            ToolCall {
                id: "call_invalid".to_owned(),
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: "get_weather".to_owned(),
                    arguments: ToolArguments::Invalid("city=Paris".to_owned()),
                },
            },
        ],
        tool_call_id: None,
    };

    let wire = serde_json::to_value(&message).unwrap();

    let calls = wire["tool_calls"].as_array().unwrap();
    let json_arguments = calls[0]["function"]["arguments"]
        .as_str()
        .expect("arguments is a JSON string");
    let reparsed: Value = serde_json::from_str(json_arguments).unwrap();
    assert_eq!(reparsed, json!({ "city": "Paris" }));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[1]["function"]["arguments"], "city=Paris");
    assert!(wire.get("content").is_none());
}

#[tokio::test]
async fn tool_call_history_sent_with_string_arguments() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(tool_call_completion(json!([tool_call_entry(
        "call_1",
        json!({ "city": "Paris" })
    )]))));
    let client = client(&fake);
    let first = complete(&client).await.unwrap();
    let mut messages = conversation();
    messages.push(ChatMessage {
        role: Role::Assistant,
        content: None,
        tool_calls: first.tool_calls,
        tool_call_id: None,
    });
    messages.push(ChatMessage {
        role: Role::Tool,
        content: Some("18 °C".to_owned()),
        tool_calls: Vec::new(),
        tool_call_id: Some("call_1".to_owned()),
    });

    client
        .complete(messages, vec![weather_tool()], far_deadline())
        .await
        .unwrap();

    let body = &fake.requests()[1].body;
    let assistant = &body["messages"][2];
    assert_eq!(assistant["role"], "assistant");
    let arguments = &assistant["tool_calls"][0]["function"]["arguments"];
    let text = arguments.as_str().expect("arguments sent as a string");
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        json!({ "city": "Paris" })
    );
    assert_eq!(body["messages"][3]["role"], "tool");
    assert_eq!(body["messages"][3]["tool_call_id"], "call_1");
}

// Streaming.

#[tokio::test]
async fn streaming_request_asks_for_usage() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::stream_split(&sse_body(&["hi"]), &[]));

    let (result, _) = complete_streaming(&client(&fake), far_deadline()).await;

    result.unwrap();
    let body = &fake.requests()[0].body;
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn stream_cut_at_awkward_offsets() {
    let fake = FakeOpenAi::start().await;
    let fragments = ["Hello, ", "世界", "! 🦀", " done"];
    let body = sse_body(&fragments);
    let mut cuts = vec![
        byte_offset(&body, "\"delta\"") + 3,
        byte_offset(&body, "世") + 1,
        byte_offset(&body, "界") + 2,
        byte_offset(&body, "🦀") + 1,
        byte_offset(&body, "🦀") + 3,
        byte_offset(&body, "\n\n") + 1,
        byte_offset(&body, "[DONE]") + 3,
        byte_offset(&body, "\"usage\"") + 1,
    ];
    cuts.sort_unstable();
    cuts.dedup();
    fake.push(Reply::stream_split(&body, &cuts));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let completion = result.unwrap();
    assert_eq!(received.concat(), fragments.concat());
    assert_eq!(completion.content, fragments.concat());
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn stream_crlf_cut_between_cr_and_lf() {
    let fake = FakeOpenAi::start().await;
    let fragments = ["line endings ", "are ", "\r\n here"];
    // Each chunk's JSON spans two `data:` lines, so a `\n` misread as a blank line would
    // dispatch half a chunk and fail to parse.
    let body = sse_body(&fragments)
        .replace(",\"finish_reason\"", "\ndata: ,\"finish_reason\"")
        .replace('\n', "\r\n");
    assert!(body.contains("\r\ndata: ,\"finish_reason\""));
    let cuts: Vec<usize> = body.match_indices('\r').map(|(at, _)| at + 1).collect();
    assert!(cuts.len() > 8);
    fake.push(Reply::stream_split(&body, &cuts));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let completion = result.unwrap();
    assert_eq!(received.concat(), fragments.concat());
    assert_eq!(completion.content, fragments.concat());
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn stream_in_one_byte_pieces() {
    let fake = FakeOpenAi::start().await;
    let fragments = ["一", "二三", " 🦀🦀 ", "end"];
    let body = sse_body(&fragments);
    fake.push(Reply::Stream {
        pieces: body.bytes().map(|byte| vec![byte]).collect(),
        pause: Duration::ZERO,
    });

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    assert_eq!(result.unwrap().content, fragments.concat());
    assert_eq!(received, fragments);
}

#[tokio::test]
async fn stream_with_all_events_in_one_piece() {
    let fake = FakeOpenAi::start().await;
    let fragments = ["several ", "events ", "in ", "one ", "read"];
    fake.push(Reply::stream_split(&sse_body(&fragments), &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let completion = result.unwrap();
    assert_eq!(received, fragments);
    assert_eq!(completion.content, fragments.concat());
    let usage = completion.usage.expect("usage chunk was sent");
    assert_eq!(
        usage,
        Usage {
            prompt_tokens: 5,
            completion_tokens: 4,
            total_tokens: 9
        }
    );
}

#[tokio::test]
async fn streamed_tool_calls_assembled_by_index() {
    let fake = FakeOpenAi::start().await;
    let tool_delta =
        |calls: Value| json!({ "choices": [{ "index": 0, "delta": { "tool_calls": calls } }] });
    let mut body = sse_events(&[
        json!({ "choices": [{ "index": 0, "delta": { "role": "assistant", "content": null } }] }),
        tool_delta(json!([{
            "index": 0, "id": "call_weather", "type": "function",
            "function": { "name": "get_", "arguments": "" }
        }])),
        tool_delta(json!([{
            "index": 1, "id": "call_time", "type": "function",
            "function": { "name": "get_time", "arguments": "{\"tz\":" }
        }])),
        tool_delta(
            json!([{ "index": 0, "function": { "name": "weather", "arguments": "{\"ci" } }]),
        ),
        tool_delta(json!([
            { "index": 1, "function": { "arguments": "\"UTC\"}" } },
            { "index": 0, "function": { "arguments": "ty\": \"Par" } }
        ])),
        tool_delta(json!([{ "index": 0, "function": { "arguments": "is\"}" } }])),
        tool_delta(json!([{
            "index": 2, "id": "call_object", "type": "function",
            "function": { "name": "get_weather", "arguments": { "city": "Paris" } }
        }])),
        json!({ "choices": [{ "index": 0, "delta": {}, "finish_reason": "tool_calls" }] }),
    ]);
    body.push_str("data: [DONE]\n\n");
    fake.push(Reply::stream_split(&body, &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let completion = result.unwrap();
    assert!(received.is_empty(), "tool calls sent text: {received:?}");
    assert_eq!(completion.content, "");
    assert_eq!(completion.finish_reason.as_deref(), Some("tool_calls"));
    let calls = &completion.tool_calls;
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0].id, "call_weather");
    assert_eq!(calls[0].function.name, "get_weather");
    assert_eq!(calls[0].function.arguments, paris());
    assert_eq!(calls[1].id, "call_time");
    assert_eq!(calls[1].function.name, "get_time");
    assert_eq!(
        calls[1].function.arguments,
        ToolArguments::Json(json!({ "tz": "UTC" }))
    );
    assert_eq!(calls[2].id, "call_object");
    assert_eq!(calls[2].function.arguments, paris());
}

#[tokio::test]
async fn stream_reason_absent_until_last_chunk() {
    let fake = FakeOpenAi::start().await;
    let mut body = sse_events(&[
        json!({ "choices": [{ "index": 0, "delta": { "content": "a" }, "finish_reason": null }] }),
        json!({ "choices": [{ "index": 0, "delta": { "content": "b" }, "finish_reason": "" }] }),
        json!({ "choices": [{ "index": 0, "delta": { "content": "c" } }] }),
        json!({ "choices": [{ "index": 0, "delta": {}, "finish_reason": "length" }] }),
        // Some servers repeat an empty reason after the real one, and it must not erase it.
        json!({ "choices": [{ "index": 0, "delta": {}, "finish_reason": "" }] }),
    ]);
    body.push_str("data: [DONE]\n\n");
    fake.push(Reply::stream_split(&body, &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let completion = result.unwrap();
    assert_eq!(received.concat(), "abc");
    assert_eq!(completion.finish_reason.as_deref(), Some("length"));
}

#[tokio::test]
async fn stream_done_without_reason_or_usage() {
    let fake = FakeOpenAi::start().await;
    let mut body = sse_events(&[content_chunk("no "), content_chunk("reason")]);
    body.push_str("data: [DONE]\n\n");
    fake.push(Reply::stream_split(&body, &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let completion = result.unwrap();
    assert_eq!(received.concat(), "no reason");
    assert_eq!(completion.finish_reason, None);
    assert_eq!(completion.usage, None);
}

#[tokio::test]
async fn stream_ends_without_done() {
    let fake = FakeOpenAi::start().await;
    let body = sse_events(&[
        content_chunk("cut "),
        json!({ "choices": [{ "index": 0, "delta": { "content": "short" }, "finish_reason": "stop" }] }),
    ]);
    fake.push(Reply::stream_split(&body, &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let completion = result.unwrap();
    assert_eq!(received.concat(), "cut short");
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn stream_last_event_without_blank_line() {
    let fake = FakeOpenAi::start().await;
    let last = json!({ "choices": [{ "index": 0, "delta": { "content": "last" }, "finish_reason": "stop" }] });
    let body = format!("{}data: {last}", sse_events(&[content_chunk("first ")]));
    fake.push(Reply::stream_split(&body, &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    assert_eq!(result.unwrap().content, "first last");
    assert_eq!(received.concat(), "first last");
}

#[tokio::test]
async fn stream_done_without_blank_line() {
    let fake = FakeOpenAi::start().await;
    let body = format!("{}data: [DONE]", sse_events(&[content_chunk("unreasoned")]));
    fake.push(Reply::stream_split(&body, &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let completion = result.unwrap();
    assert_eq!(completion.content, "unreasoned");
    assert_eq!(completion.finish_reason, None);
    assert_eq!(received.concat(), "unreasoned");
}

#[tokio::test]
async fn stream_closed_without_reason_or_done_is_incomplete() {
    let fake = FakeOpenAi::start().await;
    let body = sse_events(&[content_chunk("partial "), content_chunk("answer")]);
    fake.push(Reply::stream_split(&body, &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let error = result.unwrap_err();
    assert!(
        matches!(error, ProviderError::IncompleteStream),
        "{error:?}"
    );
    assert_eq!(received.concat(), "partial answer");
    assert_eq!(
        fake.request_count(),
        1,
        "a stream that sent text is not retried"
    );
}

#[tokio::test]
async fn stream_stops_reading_at_done() {
    let fake = FakeOpenAi::start().await;
    let mut body = sse_events(&[content_chunk("kept")]);
    body.push_str("data: [DONE]\n\n");
    body.push_str(&sse_events(&[content_chunk(" dropped")]));
    fake.push(Reply::stream_split(&body, &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    assert_eq!(result.unwrap().content, "kept");
    assert_eq!(received, ["kept"]);
}

#[tokio::test]
async fn stream_without_choices_is_invalid() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::stream_split("data: [DONE]\n\n", &[]));

    let (result, _) = complete_streaming(&client(&fake), far_deadline()).await;

    let error = result.unwrap_err();
    assert!(
        matches!(error, ProviderError::InvalidResponse(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn error_event_in_stream_is_an_error() {
    let fake = FakeOpenAi::start().await;
    let mut body = sse_events(&[
        content_chunk("partial"),
        json!({ "error": { "message": "boom", "type": "server_error" } }),
    ]);
    body.push_str("data: [DONE]\n\n");
    fake.push(Reply::stream_split(&body, &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let error = result.unwrap_err();
    let ProviderError::InvalidResponse(message) = &error else {
        panic!("expected InvalidResponse, got {error:?}");
    };
    assert!(message.contains("boom"), "{message}");
    assert!(
        !received.concat().contains("boom"),
        "the error became text: {received:?}"
    );
}

#[tokio::test]
async fn malformed_stream_event_is_invalid() {
    let fake = FakeOpenAi::start().await;
    let body = format!(
        "{}data: {{\"choices\": [\n\n",
        sse_events(&[content_chunk("ok")])
    );
    fake.push(Reply::stream_split(&body, &[]));

    let (result, _) = complete_streaming(&client(&fake), far_deadline()).await;

    let error = result.unwrap_err();
    assert!(
        matches!(error, ProviderError::InvalidResponse(_)),
        "{error:?}"
    );
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn plain_json_answer_to_streaming_request() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("not streamed after all"));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    let completion = result.unwrap();
    assert_eq!(completion.content, "not streamed after all");
    assert_eq!(received, ["not streamed after all"]);
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    assert!(completion.usage.is_some());
}

#[tokio::test]
async fn plain_json_without_usage_to_streaming_request() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(completion("plain", None)));

    let (result, _) = complete_streaming(&client(&fake), far_deadline()).await;

    assert_eq!(result.unwrap().usage, None);
}

#[tokio::test]
async fn streaming_retries_before_first_byte() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::status(503, "busy"));
    fake.push(Reply::stream_split(&sse_body(&["once"]), &[]));

    let (result, received) = complete_streaming(&client(&fake), far_deadline()).await;

    assert_eq!(result.unwrap().content, "once");
    assert_eq!(received, ["once"]);
    assert_eq!(fake.request_count(), 2);
}

// Retries.

#[tokio::test]
async fn retry_after_seconds_delays_retry() {
    let fake = FakeOpenAi::start().await;
    fake.push(status_reply(429, "1"));
    fake.push(Reply::text("after the wait"));

    let started = Instant::now();
    let completion = complete(&client(&fake)).await.unwrap();
    let elapsed = started.elapsed();

    assert_eq!(completion.content, "after the wait");
    assert_eq!(fake.request_count(), 2);
    assert!(elapsed >= Duration::from_millis(950), "waited {elapsed:?}");
}

#[tokio::test]
async fn retry_after_http_date_delays_retry() {
    let fake = FakeOpenAi::start().await;
    // HTTP dates have whole-second precision, so a date two seconds ahead is more than one
    // second away.
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
    fake.push(status_reply(429, &date));
    fake.push(Reply::text("after the date"));

    let started = Instant::now();
    let completion = complete(&client(&fake)).await.unwrap();
    let elapsed = started.elapsed();

    assert_eq!(completion.content, "after the date");
    assert_eq!(fake.request_count(), 2);
    assert!(elapsed >= Duration::from_millis(950), "waited {elapsed:?}");
}

#[tokio::test]
async fn server_error_then_success() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::status(500, "oops"));
    fake.push(Reply::text("recovered"));

    let completion = complete(&client(&fake)).await.unwrap();

    assert_eq!(completion.content, "recovered");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn unavailable_twice_then_success() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::status(503, "busy"));
    fake.push(Reply::status(503, "still busy"));
    fake.push(Reply::text("third time"));

    let completion = complete(&client(&fake)).await.unwrap();

    assert_eq!(completion.content, "third time");
    assert_eq!(fake.request_count(), 3);
}

#[tokio::test]
async fn request_timeout_status_is_retried() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::status(408, ""));
    fake.push(Reply::text("second try"));

    let completion = complete(&client(&fake)).await.unwrap();

    assert_eq!(completion.content, "second try");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    for status in [400, 404] {
        let fake = FakeOpenAi::start().await;
        let body = json!({ "error": { "message": "model not found" } }).to_string();
        fake.push(Reply::status(status, &body));
        fake.push(Reply::text("must not be requested"));

        let error = complete(&client(&fake)).await.unwrap_err();

        let (returned, message, _) = expect_status(error);
        assert_eq!(returned, status);
        assert_eq!(message, "model not found", "HTTP {status}");
        assert_eq!(fake.request_count(), 1, "HTTP {status}");
    }
}

#[tokio::test]
async fn malformed_json_is_invalid_and_not_retried() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Raw {
        status: 200,
        headers: vec![("content-type", "application/json".to_owned())],
        body: "{\"choices\": [".to_owned(),
    });
    fake.push(Reply::text("must not be requested"));

    let error = complete(&client(&fake)).await.unwrap_err();

    assert!(
        matches!(error, ProviderError::InvalidResponse(_)),
        "{error:?}"
    );
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let fake = FakeOpenAi::start().await;
    let mut settings = config(fake.base_url());
    settings.max_retries = 3;
    for _ in 0..6 {
        fake.push(Reply::status(500, "down"));
    }

    let error = complete(&client_with(&settings)).await.unwrap_err();

    let (status, message, _) = expect_status(error);
    assert_eq!(status, 500);
    assert_eq!(message, "down");
    assert_eq!(fake.request_count(), 4);
}

#[tokio::test]
async fn zero_max_retries_sends_once() {
    let fake = FakeOpenAi::start().await;
    let mut settings = config(fake.base_url());
    settings.max_retries = 0;
    fake.push(Reply::status(503, "busy"));

    let error = complete(&client_with(&settings)).await.unwrap_err();

    assert_eq!(expect_status(error).0, 503);
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn retry_after_past_deadline_returns_at_once() {
    let fake = FakeOpenAi::start().await;
    let mut settings = config(fake.base_url());
    settings.retry_max_backoff_ms = 120_000;
    fake.push(status_reply(429, "30"));
    fake.push(Reply::text("must not be requested"));

    let started = Instant::now();
    let error = client_with(&settings)
        .complete(
            conversation(),
            Vec::new(),
            deadline_in(Duration::from_secs(10)),
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    let (status, _, retry_after) = expect_status(error);
    assert_eq!(status, 429);
    assert_eq!(retry_after, Some(Duration::from_secs(30)));
    assert_eq!(fake.request_count(), 1);
    assert!(elapsed < MAX_ELAPSED_WITHOUT_WAIT, "took {elapsed:?}");
}

#[tokio::test]
async fn retry_after_beyond_max_backoff_not_waited() {
    let fake = FakeOpenAi::start().await;
    let mut settings = config(fake.base_url());
    settings.retry_max_backoff_ms = 100;
    fake.push(status_reply(503, "30"));
    fake.push(Reply::text("must not be requested"));

    let started = Instant::now();
    let error = complete(&client_with(&settings)).await.unwrap_err();
    let elapsed = started.elapsed();

    let (status, message, retry_after) = expect_status(error);
    assert_eq!(status, 503);
    assert_eq!(message, "slow down");
    assert_eq!(retry_after, Some(Duration::from_secs(30)));
    assert_eq!(fake.request_count(), 1);
    assert!(elapsed < MAX_ELAPSED_WITHOUT_WAIT, "took {elapsed:?}");
}

// Timeouts, deadlines and connection failures.

#[tokio::test]
async fn slow_replies_time_out_after_retries() {
    let fake = FakeOpenAi::start().await;
    let mut settings = config(fake.base_url());
    settings.request_timeout_ms = 200;
    settings.max_retries = 1;
    fake.push(Reply::text("too late").after(Duration::from_secs(30)));
    fake.push(Reply::text("too late").after(Duration::from_secs(30)));

    let started = Instant::now();
    let error = complete(&client_with(&settings)).await.unwrap_err();
    let elapsed = started.elapsed();

    assert!(
        matches!(error, ProviderError::Timeout(timeout) if timeout == Duration::from_millis(200)),
        "{error:?}"
    );
    assert_eq!(fake.request_count(), 2);
    assert!(elapsed < MAX_ELAPSED_WITHOUT_WAIT, "took {elapsed:?}");
}

#[tokio::test]
async fn slow_reply_retried_then_fast_succeeds() {
    let fake = FakeOpenAi::start().await;
    let mut settings = config(fake.base_url());
    settings.request_timeout_ms = 200;
    fake.push(Reply::text("too late").after(Duration::from_secs(30)));
    fake.push(Reply::text("in time"));

    let completion = complete(&client_with(&settings)).await.unwrap();

    assert_eq!(completion.content, "in time");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn deadline_before_reply_is_deadline_exceeded() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("too late").after(Duration::from_secs(30)));
    fake.push(Reply::text("must not be requested"));

    let started = Instant::now();
    let error = client(&fake)
        .complete(
            conversation(),
            Vec::new(),
            deadline_in(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    assert!(
        matches!(error, ProviderError::DeadlineExceeded),
        "{error:?}"
    );
    assert_eq!(fake.request_count(), 1);
    assert!(elapsed < MAX_ELAPSED_WITHOUT_WAIT, "took {elapsed:?}");
}

#[tokio::test]
async fn deadline_already_passed_sends_nothing() {
    let fake = FakeOpenAi::start().await;

    let error = client(&fake)
        .complete(conversation(), Vec::new(), Instant::now())
        .await
        .unwrap_err();

    assert!(
        matches!(error, ProviderError::DeadlineExceeded),
        "{error:?}"
    );
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test]
async fn stalled_stream_stops_at_deadline() {
    let fake = FakeOpenAi::start().await;
    let body = sse_body(&["never ", "arrives"]);
    fake.push(Reply::Stream {
        pieces: vec![body.into_bytes()],
        pause: Duration::from_secs(30),
    });

    let started = Instant::now();
    let (result, received) =
        complete_streaming(&client(&fake), deadline_in(Duration::from_millis(300))).await;
    let elapsed = started.elapsed();

    // The body read times out inside reqwest with the timeout cut to the time left, which the
    // client reports as the turn's deadline, like a late response head.
    let error = result.unwrap_err();
    assert!(
        matches!(error, ProviderError::DeadlineExceeded),
        "{error:?}"
    );
    assert!(received.is_empty());
    assert_eq!(fake.request_count(), 1);
    assert!(elapsed < MAX_ELAPSED_WITHOUT_WAIT, "took {elapsed:?}");
}

#[tokio::test]
async fn connection_refused_is_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut settings = config(format!("http://127.0.0.1:{port}/v1"));
    settings.max_retries = 1;

    let error = complete(&client_with(&settings)).await.unwrap_err();

    assert!(matches!(error, ProviderError::Connect(_)), "{error:?}");
    assert_eq!(error.kind(), "connect");
}

// Hostile or unusual provider behaviour.

#[tokio::test]
async fn api_key_quoted_in_error_is_masked() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::status(
        401,
        r#"{"error":{"message":"Incorrect API key provided: Bearer sk-leaky-987"}}"#,
    ));
    let mut settings = config(fake.base_url());
    settings.api_key = Secret::non_empty("sk-leaky-987".to_owned());

    let error = complete(&client_with(&settings)).await.unwrap_err();
    let text = error.to_string();
    assert!(!text.contains("sk-leaky-987"), "{text}");
    assert!(text.contains("Incorrect API key provided"), "{text}");
}

/// Builds a chat completion whose `usage.prompt_tokens` is the string `value`, where a number
/// belongs, so that its parse error quotes `value`.
fn completion_with_text_usage(value: &str) -> Value {
    let mut body = completion("unread", Some((1, 1)));
    body["usage"]["prompt_tokens"] = json!(value);
    body
}

#[tokio::test]
async fn api_key_quoted_in_parse_error_is_masked() {
    let key = "sk-echoed-in-usage-4711";
    let echoed = format!("Bearer {key}");
    let fake = FakeOpenAi::start().await;
    // One reply for each path: a plain request, a streaming request given a plain JSON reply, and
    // a streamed chunk.
    fake.push(Reply::Json(completion_with_text_usage(&echoed)));
    fake.push(Reply::Json(completion_with_text_usage(&echoed)));
    let mut chunk = content_chunk("unread");
    chunk["usage"] = json!({ "prompt_tokens": echoed });
    fake.push(Reply::stream_split(&sse_events(&[chunk]), &[]));
    let mut settings = config(fake.base_url());
    settings.api_key = Secret::non_empty(key.to_owned());
    let client = client_with(&settings);

    let errors = [
        complete(&client).await.unwrap_err(),
        complete_streaming(&client, far_deadline())
            .await
            .0
            .unwrap_err(),
        complete_streaming(&client, far_deadline())
            .await
            .0
            .unwrap_err(),
    ];

    for (index, error) in errors.into_iter().enumerate() {
        assert!(
            matches!(error, ProviderError::InvalidResponse(_)),
            "reply {index}: {error:?}"
        );
        let text = error.to_string();
        assert!(!text.contains(key), "reply {index}: {text}");
        assert!(text.contains("Bearer ********"), "reply {index}: {text}");
    }
}

#[tokio::test]
async fn api_key_across_quote_limit_is_masked() {
    let key = "sk-across-the-cut-8080";
    // 292 characters come before the key, so the 300-character limit falls inside it.
    let message = format!("{}Bearer {key}", "x".repeat(285));
    let body = json!({ "error": { "message": message } }).to_string();

    let (status, text) = error_with_key(key, &body).await;

    assert_eq!(status, 400);
    assert!(!text.contains("sk-"), "{text}");
    assert!(text.ends_with("Bearer ********"), "{text}");
}

/// Sends one request with `key` as the API key to a fake that returns 400 with `body`, and
/// returns the status and the message of the error.
async fn error_with_key(key: &str, body: &str) -> (u16, String) {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::status(400, body));
    let mut settings = config(fake.base_url());
    settings.api_key = Secret::non_empty(key.to_owned());
    let error = complete(&client_with(&settings)).await.unwrap_err();
    let (status, text, _) = expect_status(error);
    (status, text)
}

#[tokio::test]
async fn api_key_across_error_body_limit_is_masked() {
    let key = "sk-across-64-kib-2718";
    // Spaces fill the first 65,526 bytes, so the 64 KiB read limit falls after the key's tenth
    // byte. The body is not JSON, so its trimmed text is quoted: the start of the key alone.
    let body = format!("{}{key} and more", " ".repeat(64 * 1024 - 10));

    let (status, text) = error_with_key(key, &body).await;

    assert_eq!(status, 400);
    assert!(!text.contains("sk-"), "{text}");
    assert!(text.contains("(empty body)"), "{text}");
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let fake = FakeOpenAi::start().await;
    let target = FakeOpenAi::start().await;
    fake.push(Reply::Raw {
        status: 307,
        headers: vec![(
            "location",
            format!("{}/chat/completions", target.base_url()),
        )],
        body: String::new(),
    });
    let mut settings = config(fake.base_url());
    settings.api_key = Secret::non_empty("sk-stay-home".to_owned());

    let error = complete(&client_with(&settings)).await.unwrap_err();
    let (status, _, _) = expect_status(error);
    assert_eq!(status, 307);
    assert_eq!(
        target.request_count(),
        0,
        "the key never reaches the redirect target"
    );
}

#[tokio::test]
async fn oversized_response_is_rejected() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text(&"x".repeat(2 * 1024 * 1024)));
    let error = complete(&client(&fake)).await.unwrap_err();
    assert!(
        matches!(error, ProviderError::InvalidResponse(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("max_response_bytes"), "{error}");
}

#[tokio::test]
async fn oversized_stream_is_rejected() {
    let fake = FakeOpenAi::start().await;
    let chunk = content_chunk(&"y".repeat(64 * 1024));
    let chunks: Vec<Value> = (0..20).map(|_| chunk.clone()).collect();
    fake.push(Reply::stream_split(&sse_events(&chunks), &[]));
    let (result, _) = complete_streaming(&client(&fake), far_deadline()).await;
    let error = result.unwrap_err();
    assert!(error.to_string().contains("max_response_bytes"), "{error}");
}

#[tokio::test]
async fn absurd_retry_after_does_not_panic() {
    let fake = FakeOpenAi::start().await;
    fake.push(status_reply(429, "1e20"));
    let mut settings = config(fake.base_url());
    settings.max_retries = 0;
    let error = complete(&client_with(&settings)).await.unwrap_err();
    let (status, _, retry_after) = expect_status(error);
    assert_eq!(status, 429);
    assert_eq!(retry_after, None);
}

#[tokio::test]
async fn null_usage_fields_and_content_parts_are_accepted() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::Json(json!({
        "choices": [{
            "message": { "role": "assistant", "content": [
                { "type": "text", "text": "Hello, " },
                { "type": "text", "text": "parts" }
            ] },
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 4, "completion_tokens": null, "total_tokens": 4 }
    })));
    let completion = complete(&client(&fake)).await.unwrap();
    assert_eq!(completion.content, "Hello, parts");
    let usage = completion.usage.unwrap();
    assert_eq!(usage.prompt_tokens, 4);
    assert_eq!(usage.completion_tokens, 0);
}

#[tokio::test]
async fn uppercase_event_stream_type_is_streamed() {
    let fake = FakeOpenAi::start().await;
    let body = format!("{}data: [DONE]\n\n", sse_events(&[content_chunk("shout")]));
    fake.push(Reply::Raw {
        status: 200,
        headers: vec![(
            "content-type",
            "Text/Event-Stream; charset=utf-8".to_owned(),
        )],
        body,
    });
    let (result, fragments) = complete_streaming(&client(&fake), far_deadline()).await;
    assert_eq!(result.unwrap().content, "shout");
    assert_eq!(fragments, ["shout"]);
}
