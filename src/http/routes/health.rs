//! `GET /health`: liveness, a store round trip, and the outcome of the store's most recent commit.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::http::state::AppState;
use crate::store::WriteFailure;

pub async fn get(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if let Err(err) = state.store.ping().await {
        tracing::warn!(error = %err, "Health check found the store unavailable");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "store": "unreachable" })),
        );
    }
    // The store logged the failure when it began, so a check that polls often adds no log line.
    if let Some(failure) = state.store.write_failure() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "store": "write_failed",
                "error": write_failure_detail(&failure),
            })),
        );
    }
    (StatusCode::OK, Json(json!({ "status": "ok" })))
}

/// Builds the `error` object of a 503 for failing writes: the recorded failure with the usual
/// `type` and `message` of an API error.
fn write_failure_detail(failure: &WriteFailure) -> Value {
    let backend = match failure.store {
        "postgresql" => "PostgreSQL",
        "sqlite" => "SQLite",
        other => other,
    };
    let message = format!(
        "the most recent commit to the {backend} history store failed ({kind}), and none has \
         succeeded since the first failure at {first}; turns are not saved. To fix: {check}",
        kind = failure.fault.kind,
        first = http_date(failure.first_failed_at_ms),
        check = failure.fault.check,
    );
    let mut detail = serde_json::to_value(failure).unwrap_or_else(|_| json!({}));
    if let Value::Object(fields) = &mut detail {
        fields.insert("type".to_owned(), json!("store_write_failed"));
        fields.insert("message".to_owned(), json!(message));
    }
    detail
}

/// Formats Unix milliseconds as an HTTP date, such as `Sat, 05 Dec 2026 00:08:05 GMT`.
fn http_date(unix_ms: i64) -> String {
    let since_epoch = std::time::Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + since_epoch)
}
