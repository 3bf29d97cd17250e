//! `app.max_concurrent_turns`: a full gateway rejects new turns at once with a 503 and counts
//! them, while `/health`, the history and the diagnostics routes keep serving requests.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{FakeOpenAi, Options, Reply, TestGateway, message};

const DIAG_TOKEN: &str = "diag-test-token";

/// How long the fake model delays the first reply. It only needs to outlast the requests that the
/// test sends while that turn runs.
const HOLD: Duration = Duration::from_secs(3);

async fn wait_for_model_requests(fake: &FakeOpenAi, count: usize) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while fake.request_count() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.expect("the turn reaches the model");
}

async fn scrape(gateway: &TestGateway) -> (u16, String) {
    let response = gateway
        .client
        .get(gateway.url("/v1/code-mode/metrics"))
        .bearer_auth(DIAG_TOKEN)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn rejected_total(metrics: &str) -> Option<&str> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("xiaomaolv_turns_rejected_total "))
}

#[tokio::test]
async fn full_gateway_rejects_turns_with_503() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("slow reply").after(HOLD));
    let options = Options {
        app: "max_concurrent_turns = 1",
        http: "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 0",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    let (_, metrics) = scrape(&gateway).await;
    assert_eq!(rejected_total(&metrics), Some("0"), "{metrics}");

    let first = gateway
        .client
        .post(gateway.url("/v1/messages"))
        .json(&message("slow", "hold the slot"))
        .send();
    let first = tokio::spawn(first);
    wait_for_model_requests(&fake, 1).await;

    let response = gateway.post_message(message("rejected", "no room")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded");
    let text = body["error"]["message"].as_str().unwrap();
    assert!(text.contains("app.max_concurrent_turns"), "{text}");

    let mut streaming = message("rejected-stream", "no room either");
    streaming["stream"] = json!(true);
    let (status, body) = gateway.send(streaming).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "overloaded");

    let health = gateway.client.get(gateway.url("/health")).send().await;
    assert_eq!(health.unwrap().status(), 200);
    let (status, metrics) = scrape(&gateway).await;
    assert_eq!(status, 200);
    assert_eq!(rejected_total(&metrics), Some("2"), "{metrics}");
    assert!(gateway.history("rejected").await.is_none());
    assert!(gateway.history("rejected-stream").await.is_none());
    assert_eq!(
        fake.request_count(),
        1,
        "a rejected turn never reaches the model"
    );

    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    let (status, body) = gateway.send(message("after", "room again")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "pong");
    assert_eq!(gateway.history("slow").await.unwrap().len(), 2);
}

#[tokio::test]
async fn turn_limit_counts_running_turns_only() {
    let fake = FakeOpenAi::start().await;
    let options = Options {
        app: "max_concurrent_turns = 2",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    for round in 0..5 {
        let (status, body) = gateway.send(message("sequential", "hi")).await;
        assert_eq!(status, 200, "round {round}: {body}");
    }
    assert_eq!(gateway.history("sequential").await.unwrap().len(), 10);
}
