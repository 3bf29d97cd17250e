//! Model servers that misbehave below the JSON layer: bytes that are not UTF-8, bodies that break
//! off after the status line, streams reset after some text reached the client, and streams that
//! close cleanly before the reply is complete.

use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use xiaomaolv::config::{ProviderConfig, ProviderKind};
use xiaomaolv::provider::wire::{ChatMessage, Role};
use xiaomaolv::provider::{Completion, ProviderClient, ProviderError};

use crate::common::fake_openai::completion;
use crate::common::raw_upstream::{End, RawReply, RawUpstream, content_chunk as chunk};
use crate::common::sse_client::{read_events, streamed_text};
use crate::common::{FakeOpenAi, Options, Reply, TestGateway, message};

/// `text` as bytes with its one `@` replaced by 0xFF, a byte that never occurs in UTF-8.
fn with_invalid_byte(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    let at = bytes
        .iter()
        .position(|&b| b == b'@')
        .expect("text has a marker");
    bytes[at] = 0xff;
    bytes
}

/// Builds a completion whose content is not valid UTF-8.
fn body_with_invalid_utf8() -> Vec<u8> {
    with_invalid_byte(&completion("caf@", None).to_string())
}

fn provider_config(base_url: String, max_retries: u32) -> ProviderConfig {
    ProviderConfig {
        kind: ProviderKind::OpenAiCompatible,
        base_url,
        api_key: None,
        model: "fake-model".to_owned(),
        connect_timeout_ms: 2_000,
        request_timeout_ms: 10_000,
        max_retries,
        retry_initial_backoff_ms: 10,
        retry_max_backoff_ms: 100,
        temperature: None,
        max_tokens: None,
        max_response_bytes: 1024 * 1024,
    }
}

fn client(upstream: &RawUpstream, max_retries: u32) -> ProviderClient {
    ProviderClient::new("fake", &provider_config(upstream.base_url(), max_retries)).unwrap()
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn conversation() -> Vec<ChatMessage> {
    vec![ChatMessage::text(Role::User, "Say hello.")]
}

async fn complete(client: &ProviderClient) -> Result<Completion, ProviderError> {
    client
        .complete(conversation(), Vec::new(), deadline())
        .await
}

async fn complete_streaming(
    client: &ProviderClient,
) -> (Result<Completion, ProviderError>, String) {
    let (text_tx, mut text_rx) = mpsc::unbounded_channel();
    let result = client
        .complete_streaming(conversation(), Vec::new(), deadline(), &text_tx)
        .await;
    drop(text_tx);
    let mut text = String::new();
    while let Some(fragment) = text_rx.recv().await {
        text.push_str(&fragment);
    }
    (result, text)
}

fn invalid_response_message(error: ProviderError) -> String {
    match error {
        ProviderError::InvalidResponse(message) => message,
        other => panic!("expected InvalidResponse, got {other:?}"),
    }
}

// Bytes that are not UTF-8.

#[tokio::test]
async fn invalid_utf8_body_is_rejected() {
    let upstream = RawUpstream::start().await;
    upstream.push(RawReply::ok("application/json", &body_with_invalid_utf8()));
    let error = complete(&client(&upstream, 2)).await.unwrap_err();
    let message = invalid_response_message(error);
    assert!(message.contains("not valid UTF-8"), "{message}");
    assert_eq!(
        upstream.request_count(),
        1,
        "an invalid body is not retried"
    );
}

#[tokio::test]
async fn invalid_utf8_stream_is_rejected() {
    let upstream = RawUpstream::start().await;
    let bad = with_invalid_byte(&chunk("caf@"));
    let good = chunk("ok ");
    let pieces: [&[u8]; 2] = [good.as_bytes(), &bad];
    upstream.push(RawReply::event_stream(&pieces, Duration::ZERO, End::Close));
    let (result, text) = complete_streaming(&client(&upstream, 2)).await;
    let message = invalid_response_message(result.unwrap_err());
    assert!(message.contains("not valid UTF-8"), "{message}");
    assert!(
        !text.contains('\u{fffd}'),
        "replacement character sent: {text:?}"
    );
}

#[tokio::test]
async fn invalid_utf8_json_answer_to_stream_is_rejected() {
    let upstream = RawUpstream::start().await;
    upstream.push(RawReply::ok("application/json", &body_with_invalid_utf8()));
    let (result, text) = complete_streaming(&client(&upstream, 2)).await;
    let message = invalid_response_message(result.unwrap_err());
    assert!(message.contains("not valid UTF-8"), "{message}");
    assert_eq!(text, "");
}

#[tokio::test]
async fn character_split_across_reads_decodes_exactly() {
    let upstream = RawUpstream::start().await;
    let event = chunk("世界🦀");
    let bytes = event.as_bytes();
    let first_char = event.find('世').unwrap();
    let crab = event.find('🦀').unwrap();
    // Cut inside "世" and inside the crab, with a pause so the pieces arrive as separate reads.
    let pieces: [&[u8]; 4] = [
        &bytes[..first_char + 1],
        &bytes[first_char + 1..crab + 2],
        &bytes[crab + 2..],
        b"data: [DONE]\n\n",
    ];
    upstream.push(RawReply::event_stream(
        &pieces,
        Duration::from_millis(20),
        End::Close,
    ));
    let (result, text) = complete_streaming(&client(&upstream, 0)).await;
    assert_eq!(result.unwrap().content, "世界🦀");
    assert_eq!(text, "世界🦀");
}

#[tokio::test]
async fn gateway_answers_invalid_utf8_with_502() {
    let upstream = RawUpstream::start().await;
    let gateway = TestGateway::start(&upstream.base_url()).await;
    for stream in [false, true] {
        let session = format!("utf8-{stream}");
        if stream {
            let event = with_invalid_byte(&chunk("caf@"));
            upstream.push(RawReply::event_stream(
                &[&event],
                Duration::ZERO,
                End::Close,
            ));
        } else {
            upstream.push(RawReply::ok("application/json", &body_with_invalid_utf8()));
        }
        let mut request = message(&session, "hi");
        request["stream"] = json!(stream);
        let (status, body) = gateway.send(request).await;
        assert_eq!(status, 502, "stream={stream}: {body}");
        assert_eq!(body["error"]["type"], "provider_error", "stream={stream}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains("not valid UTF-8"), "stream={stream}: {text}");
        assert!(gateway.history(&session).await.is_none(), "stream={stream}");
    }
}

#[tokio::test]
async fn huge_error_body_returns_502_quickly() {
    let fake = FakeOpenAi::start().await;
    let gateway = TestGateway::start(&fake.base_url()).await;
    for stream in [false, true] {
        // 8 MiB, and then the body stays open, so a client that read it all would wait for
        // request_timeout_ms (60 s by default).
        fake.push(Reply::Flood {
            status: 400,
            len: 8 * 1024 * 1024,
            stall: true,
        });
        let session = format!("flood-{stream}");
        let mut request = message(&session, "hi");
        request["stream"] = json!(stream);
        let started = Instant::now();
        let (status, body) = gateway.send(request).await;

        assert_eq!(status, 502, "stream={stream}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stream={stream}: took {:?}",
            started.elapsed()
        );
        assert_eq!(body["error"]["type"], "provider_error", "stream={stream}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains("400"), "stream={stream}: {text}");
        assert!(
            text.contains(r#"{"error":{"message":"xxx"#),
            "stream={stream}: {text}"
        );
        assert!(text.len() < 1_000, "stream={stream}: {} bytes", text.len());
        assert!(gateway.history(&session).await.is_none(), "stream={stream}");
    }
}

// Bodies that break off after the status line.

fn pong_body() -> Vec<u8> {
    completion("pong after retry", None)
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn truncated_body_is_retried() {
    let upstream = RawUpstream::start().await;
    upstream.push(RawReply::truncated_json(&pong_body(), 20, End::Close));
    upstream.push(RawReply::ok("application/json", &pong_body()));
    let completion = complete(&client(&upstream, 2)).await.unwrap();
    assert_eq!(completion.content, "pong after retry");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn reset_mid_body_is_retried() {
    let upstream = RawUpstream::start().await;
    upstream.push(RawReply::truncated_json(&pong_body(), 20, End::Reset));
    upstream.push(RawReply::ok("application/json", &pong_body()));
    let completion = complete(&client(&upstream, 2)).await.unwrap();
    assert_eq!(completion.content, "pong after retry");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn truncated_json_answer_to_stream_is_retried() {
    let upstream = RawUpstream::start().await;
    upstream.push(RawReply::truncated_json(&pong_body(), 20, End::Close));
    upstream.push(RawReply::ok("application/json", &pong_body()));
    let (result, text) = complete_streaming(&client(&upstream, 2)).await;
    assert_eq!(result.unwrap().content, "pong after retry");
    assert_eq!(text, "pong after retry");
    assert_eq!(upstream.request_count(), 2);
}

#[tokio::test]
async fn truncated_body_after_last_retry_is_transport_error() {
    let upstream = RawUpstream::start().await;
    for _ in 0..3 {
        upstream.push(RawReply::truncated_json(&pong_body(), 20, End::Close));
    }
    upstream.push(RawReply::ok("application/json", &pong_body()));
    let error = complete(&client(&upstream, 2)).await.unwrap_err();
    assert!(matches!(error, ProviderError::Transport(_)), "{error:?}");
    assert!(error.to_string().contains("response body"), "{error}");
    assert_eq!(upstream.request_count(), 3, "one request plus two retries");
}

#[tokio::test]
async fn gateway_answers_truncated_body_with_502() {
    let upstream = RawUpstream::start().await;
    for _ in 0..2 {
        upstream.push(RawReply::truncated_json(&pong_body(), 20, End::Reset));
    }
    let options = Options {
        provider: "max_retries = 1",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&upstream.base_url(), options).await;
    let (status, body) = gateway.send(message("cut", "hi")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["type"], "provider_error");
    let text = body["error"]["message"].as_str().unwrap();
    assert!(text.contains("response body"), "{text}");
    assert_eq!(upstream.request_count(), 2);
    assert!(gateway.history("cut").await.is_none());
}

#[tokio::test]
async fn stream_reset_after_text_ends_with_error_event() {
    let upstream = RawUpstream::start().await;
    let first = chunk("partial ");
    upstream.push(RawReply::event_stream(
        &[first.as_bytes()],
        Duration::from_millis(50),
        End::Reset,
    ));
    let gateway = TestGateway::start(&upstream.base_url()).await;
    let mut request = message("reset", "hi");
    request["stream"] = json!(true);
    let response = gateway.post_message(request).await;
    assert_eq!(response.status(), 200);
    let events = read_events(response).await;
    assert_eq!(streamed_text(&events), "partial ");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(data["error"]["status"], 502);
    assert_eq!(data["error"]["type"], "provider_error");
    assert_eq!(
        upstream.request_count(),
        1,
        "a stream that sent text is not retried"
    );
    assert!(gateway.history("reset").await.is_none());
    assert!(!events.iter().any(|(name, _)| name == "done"));
}

// Streams that close cleanly before the reply is complete.

/// Builds a chunk that opens the assistant's message without any text, like the first chunk of
/// OpenAI's streamed replies.
fn role_chunk() -> String {
    let chunk = json!({ "choices": [{ "index": 0, "delta": { "role": "assistant" }, "finish_reason": null }] });
    format!("data: {chunk}\n\n")
}

#[tokio::test]
async fn stream_closed_without_end_ends_with_error_event() {
    let upstream = RawUpstream::start().await;
    let (first, second) = (chunk("partial "), chunk("answer"));
    upstream.push(RawReply::event_stream(
        &[first.as_bytes(), second.as_bytes()],
        Duration::from_millis(20),
        End::Close,
    ));
    let gateway = TestGateway::start(&upstream.base_url()).await;
    let mut request = message("closed", "hi");
    request["stream"] = json!(true);
    let response = gateway.post_message(request).await;
    assert_eq!(response.status(), 200);
    let events = read_events(response).await;
    assert_eq!(streamed_text(&events), "partial answer");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(data["error"]["status"], 502);
    assert_eq!(data["error"]["type"], "provider_error");
    let text = data["error"]["message"].as_str().unwrap();
    assert!(text.contains("finish_reason nor [DONE]"), "{text}");
    assert!(!events.iter().any(|(name, _)| name == "done"));
    assert!(gateway.history("closed").await.is_none());
}

#[tokio::test]
async fn stream_closed_before_any_text_is_502() {
    let upstream = RawUpstream::start().await;
    let opening = role_chunk();
    upstream.push(RawReply::event_stream(
        &[opening.as_bytes()],
        Duration::ZERO,
        End::Close,
    ));
    let gateway = TestGateway::start(&upstream.base_url()).await;
    let mut request = message("empty", "hi");
    request["stream"] = json!(true);
    let (status, body) = gateway.send(request).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["type"], "provider_error");
    let text = body["error"]["message"].as_str().unwrap();
    assert!(text.contains("finish_reason nor [DONE]"), "{text}");
    assert_eq!(upstream.request_count(), 1, "a stream is not retried");
    assert!(gateway.history("empty").await.is_none());
}
