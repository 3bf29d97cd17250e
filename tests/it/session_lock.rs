//! Turns that wait for their session's lock: a turn left with too little time after the wait fails
//! as `session_busy` without calling the model, and a model timeout after a wait states how long
//! the turn waited.

use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;

use crate::common::{FakeOpenAi, Options, Reply, TestGateway, message};

/// How long the fake model takes to reply to each turn.
const MODEL_DELAY: Duration = Duration::from_millis(300);

/// More turns than fit one after another into the 4 s turn timeout at [`MODEL_DELAY`] each.
const TURNS: usize = 20;

/// Waits until the fake model has received `count` requests.
async fn wait_for_requests(fake: &FakeOpenAi, count: usize) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while fake.request_count() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    waited.await.expect("the turn reaches the model");
}

#[tokio::test]
async fn short_time_after_lock_is_busy() {
    let fake = FakeOpenAi::start().await;
    for turn in 0..TURNS {
        fake.push(Reply::text(&format!("reply {turn}")).after(MODEL_DELAY));
    }
    let options = Options {
        agent: "turn_timeout_ms = 4000",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;

    let turns = (0..TURNS).map(|turn| gateway.send(message("queue", &format!("turn {turn}"))));
    let results: Vec<(u16, Value)> = join_all(turns).await;

    let mut answered = 0;
    let mut busy = 0;
    for (status, body) in &results {
        assert_ne!(
            body["error"]["type"], "provider_timeout",
            "a turn's time went to the lock, not the model: {body}"
        );
        if *status == 200 {
            answered += 1;
            continue;
        }
        assert_eq!(*status, 503, "{body}");
        assert_eq!(body["error"]["type"], "session_busy", "{body}");
        let text = body["error"]["message"].as_str().unwrap();
        assert!(text.contains("earlier turn on this session"), "{text}");
        busy += 1;
    }
    assert!(answered >= 1, "{results:?}");
    assert!(busy >= 1, "{results:?}");
    assert_eq!(
        fake.request_count(),
        answered,
        "the model got a request only for turns that were answered"
    );
    let history = gateway
        .history("queue")
        .await
        .expect("answered turns stored");
    assert_eq!(history.len(), 2 * answered);
}

#[tokio::test]
async fn model_timeout_states_lock_wait() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("first").after(Duration::from_secs(1)));
    fake.push(Reply::text("too late").after(Duration::from_secs(30)));
    let options = Options {
        agent: "turn_timeout_ms = 3000",
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;

    let first = gateway.send(message("slow", "one"));
    let second = async {
        wait_for_requests(&fake, 1).await;
        gateway.send(message("slow", "two")).await
    };
    let ((first_status, first_body), (status, body)) = tokio::join!(first, second);

    assert_eq!(first_status, 200, "{first_body}");
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["type"], "provider_timeout");
    let text = body["error"]["message"].as_str().unwrap();
    assert!(
        text.contains("ms of it waiting for earlier turns on this session"),
        "{text}"
    );
    assert_eq!(fake.request_count(), 2, "the second turn called the model");
    let history = gateway.history("slow").await.unwrap();
    assert_eq!(history.len(), 2, "only the first turn is stored");
}
