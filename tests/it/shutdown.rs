//! The real binary on SIGTERM when turns outlast `app.shutdown_grace_ms`: clients get a 503 or a
//! final SSE `error` event instead of a cut connection, and the stopped turns store nothing.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::common::message;
use crate::common::process::GatewayProcess;
use crate::common::raw_upstream::{End, RawReply, RawUpstream, content_chunk, head};
use crate::common::sse_client::{parse_events, streamed_text};

/// Far longer than the grace period, so the model is still working when it ends.
const STALL: Duration = Duration::from_secs(60);

fn write_config(dir: &tempfile::TempDir, provider_url: &str) -> String {
    let text = format!(
        r#"[app]
bind = "127.0.0.1:0"
default_provider = "fake"
shutdown_grace_ms = 1000

[store]
url = "sqlite://history.db"

[providers.fake]
kind = "openai-compatible"
base_url = "{provider_url}"
model = "fake-model"
"#
    );
    let path = dir.path().join("xiaomaolv.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Builds a JSON reply whose head arrives at once and whose body never arrives in time.
fn stalled_json() -> RawReply {
    let body = crate::common::fake_openai::completion("too late", None).to_string();
    RawReply {
        pieces: vec![
            head("application/json", Some(body.len())),
            body.into_bytes(),
        ],
        pause: STALL,
        end: End::Close,
    }
}

/// Builds an event stream whose first fragment arrives at once and whose rest never arrives in time.
fn stalled_stream() -> RawReply {
    let mut first = head("text/event-stream", None);
    first.extend_from_slice(content_chunk("partial ").as_bytes());
    RawReply {
        pieces: vec![first, content_chunk("rest").into_bytes()],
        pause: STALL,
        end: End::Close,
    }
}

async fn wait_for_requests(upstream: &RawUpstream, count: usize) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while upstream.request_count() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.expect("the turn reaches the model");
}

async fn history_status(gateway: &GatewayProcess, session: &str) -> u16 {
    let url = gateway.url(&format!("/v1/sessions/{session}/messages"));
    let response = reqwest::get(url).await.unwrap();
    response.status().as_u16()
}

#[tokio::test]
async fn turns_cut_by_shutdown_get_clear_errors() {
    let upstream = RawUpstream::start().await;
    upstream.push(stalled_json());
    upstream.push(stalled_stream());
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &upstream.base_url());
    let mut gateway = GatewayProcess::start(dir.path(), &["--config", &path], &[]);
    let client = reqwest::Client::new();

    let plain = client
        .post(gateway.url("/v1/messages"))
        .json(&message("plain", "hi"))
        .send();
    let plain = tokio::spawn(plain);
    wait_for_requests(&upstream, 1).await;

    let mut request = message("streamed", "hi");
    request["stream"] = json!(true);
    let streamed = client
        .post(gateway.url("/v1/messages"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 200);
    let mut body = streamed.bytes_stream();
    let mut text = String::new();
    while !text.contains("event: delta") {
        let piece = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the first fragment arrives")
            .expect("the stream is open")
            .unwrap();
        text.push_str(std::str::from_utf8(&piece).unwrap());
    }

    gateway.signal("TERM");
    gateway.wait_for_log("Shutdown signal received", Duration::from_secs(5));

    let plain = plain.await.unwrap().unwrap();
    assert_eq!(plain.status(), 503);
    let error: Value = plain.json().await.unwrap();
    assert_eq!(error["error"]["type"], "shutting_down");
    let message_text = error["error"]["message"].as_str().unwrap();
    assert!(message_text.contains("shutting down"), "{message_text}");

    while let Some(piece) = body.next().await {
        text.push_str(std::str::from_utf8(&piece.unwrap()).unwrap());
    }
    let events = parse_events(&text);
    assert_eq!(streamed_text(&events), "partial ");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{events:?}");
    assert_eq!(data["error"]["type"], "shutting_down");
    assert_eq!(data["error"]["status"], 503);
    let event_text = data["error"]["message"].as_str().unwrap();
    assert!(event_text.contains("shutting down"), "{event_text}");

    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));
    gateway.drain_log(Duration::from_secs(2));
    assert!(
        gateway
            .log
            .iter()
            .any(|l| l.contains("Grace period elapsed")),
        "{:?}",
        gateway.log
    );

    let restarted = GatewayProcess::start(dir.path(), &["--config", &path], &[]);
    assert_eq!(history_status(&restarted, "plain").await, 404);
    assert_eq!(history_status(&restarted, "streamed").await, 404);
}
