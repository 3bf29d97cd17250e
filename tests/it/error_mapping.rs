//! Every error a turn can end with becomes a 4xx or 5xx JSON body that states what happened and
//! what to do, with `Retry-After` where a quick retry is likely to work.

use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use serde_json::Value;
use xiaomaolv::agent::AgentError;
use xiaomaolv::http::ApiError;
use xiaomaolv::provider::ProviderError;
use xiaomaolv::store::StoreError;

fn sqlite_error(code: i32) -> StoreError {
    let error = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
    StoreError::Query(Arc::new(error))
}

fn status(code: u16, message: &str) -> ProviderError {
    ProviderError::Status {
        status: code,
        message: message.to_owned(),
        retry_after: None,
    }
}

/// One case: the error, its expected status and type, words its message must contain, and
/// whether the response carries `Retry-After`.
struct Case {
    error: AgentError,
    status: u16,
    kind: &'static str,
    words: &'static [&'static str],
    retry_after: bool,
}

fn case(
    error: impl Into<AgentError>,
    status: u16,
    kind: &'static str,
    words: &'static [&'static str],
) -> Case {
    Case {
        error: error.into(),
        status,
        kind,
        words,
        retry_after: false,
    }
}

fn cases() -> Vec<Case> {
    let mut busy = case(sqlite_error(5), 503, "store_busy", &["busy", "try again"]);
    busy.retry_after = true;
    let mut locked = case(sqlite_error(6), 503, "store_busy", &["busy", "not saved"]);
    locked.retry_after = true;
    let mut rate_limited = case(
        ProviderError::Status {
            status: 429,
            message: "slow down".to_owned(),
            retry_after: Some(Duration::from_secs(7)),
        },
        503,
        "provider_rate_limited",
        &["429", "Retry-After"],
    );
    rate_limited.retry_after = true;
    vec![
        case(
            ProviderError::Timeout(Duration::from_secs(60)),
            504,
            "provider_timeout",
            &["timed out", "request_timeout_ms"],
        ),
        case(
            ProviderError::DeadlineExceeded,
            504,
            "provider_timeout",
            &["deadline", "agent.turn_timeout_ms"],
        ),
        case(
            ProviderError::Connect("connection refused".to_owned()),
            503,
            "provider_unavailable",
            &["cannot connect", "base_url"],
        ),
        case(
            ProviderError::Transport("reset".to_owned()),
            502,
            "provider_error",
            &["connection failed", "try again"],
        ),
        rate_limited,
        case(
            status(401, "bad key"),
            502,
            "provider_error",
            &["401", "api_key"],
        ),
        case(
            status(404, "no such model"),
            502,
            "provider_error",
            &["404", "model"],
        ),
        case(
            status(400, "too long"),
            502,
            "provider_error",
            &["too long", "rejected"],
        ),
        case(
            status(503, "down"),
            502,
            "provider_error",
            &["503", "try again later"],
        ),
        case(
            ProviderError::InvalidResponse("not JSON".to_owned()),
            502,
            "provider_error",
            &["invalid response", "OpenAI-compatible"],
        ),
        case(
            ProviderError::IncompleteStream,
            502,
            "provider_error",
            &["finish_reason nor [DONE]", "try again"],
        ),
        case(
            ProviderError::Setup("no TLS".to_owned()),
            502,
            "provider_error",
            &["provider client", "configuration"],
        ),
        busy,
        locked,
        case(
            sqlite_error(1),
            500,
            "store_error",
            &["failed", "not saved", "log"],
        ),
        case(
            StoreError::Stopped,
            503,
            "store_unavailable",
            &["stopped", "Restart the gateway"],
        ),
        case(
            StoreError::Corrupt("role `x`".to_owned()),
            500,
            "store_error",
            &["invalid row", "not saved"],
        ),
        case(
            AgentError::SessionBusy(Duration::from_secs(120)),
            503,
            "session_busy",
            &["120000 ms", "earlier turn", "send the message again"],
        ),
        case(
            AgentError::DeadlineAfterLockWait(Duration::from_millis(2500)),
            504,
            "provider_timeout",
            &["2500 ms", "earlier turns", "agent.turn_timeout_ms"],
        ),
        case(
            AgentError::ShuttingDown,
            503,
            "shutting_down",
            &["shutting down", "nothing was stored"],
        ),
    ]
}

async fn body_of(response: axum::response::Response) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn turn_errors_map_to_clear_json() {
    for case in cases() {
        let label = format!("{:?}", case.error);
        let response = ApiError::Agent(case.error).into_response();
        assert_eq!(response.status().as_u16(), case.status, "{label}");
        assert_eq!(
            response.headers().contains_key("retry-after"),
            case.retry_after,
            "{label}"
        );
        let body = body_of(response).await;
        assert_eq!(body["error"]["type"], case.kind, "{label}");
        let message = body["error"]["message"].as_str().unwrap();
        for word in case.words {
            assert!(
                message.contains(word),
                "{label}: {message:?} lacks {word:?}"
            );
        }
    }
}

#[tokio::test]
async fn history_read_error_says_nothing_changed() {
    let response = ApiError::Store(StoreError::Stopped).into_response();
    assert_eq!(response.status(), 503);
    let body = body_of(response).await;
    assert_eq!(body["error"]["type"], "store_unavailable");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("nothing was changed"), "{message}");
    assert!(!message.contains("turn"), "{message}");
}

#[tokio::test]
async fn internal_error_hides_details() {
    let response = ApiError::Internal("panicked at src/agent/mod.rs:42".to_owned()).into_response();
    assert_eq!(response.status(), 500);
    let body = body_of(response).await;
    assert_eq!(body["error"]["type"], "internal_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(!message.contains("src/agent"), "{message}");
    assert!(message.contains("gateway log"), "{message}");
    assert!(message.contains("history"), "{message}");
}
