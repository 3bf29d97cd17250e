//! `POST /v1/messages`: one user message in, the agent's reply out, as JSON or Server-Sent Events.
//!
//! The turn runs in its own task, so a client that disconnects does not cancel it: the reply is
//! still generated and stored, and shutdown waits for it until `app.shutdown_grace_ms` runs out.
//! Then a turn that has not started to save ends, and its client gets a 503 or, when the stream
//! has already begun, a final `error` event.

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, Stream, StreamExt, stream};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{check_content_type, read_body, validate_id};
use crate::agent::{TurnOutcome, TurnRequest};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// The JSON body of `POST /v1/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    session_id: String,
    user_id: String,
    text: String,
    /// Whether to stream the reply. `None` when the body leaves it out, so the `Accept` header
    /// decides.
    #[serde(default)]
    stream: Option<bool>,
}

/// An event of a streaming turn: text fragments in order, then one final result.
enum TurnEvent {
    Delta(String),
    Done(Box<Result<TurnOutcome, ApiError>>),
}

pub async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = parse_body(&state, &headers, body).await?;
    // An explicit `"stream"` wins over the `Accept` header.
    let wants_stream = body
        .stream
        .unwrap_or_else(|| accepts_event_stream(&headers));
    let permit = state.turn_limit.try_start()?;
    let request = TurnRequest {
        session_id: body.session_id,
        user_id: body.user_id,
        text: body.text,
    };
    if wants_stream {
        return stream_turn(state, request, permit).await;
    }
    let agent = state.agent.clone();
    let outcome = state
        .turns
        .spawn(async move {
            let _permit = permit;
            agent.run_turn(request, None).await
        })
        .await
        .map_err(|err| ApiError::Internal(format!("turn task failed: {err}")))??;
    Ok(Json(outcome).into_response())
}

async fn parse_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<MessageBody, ApiError> {
    check_content_type(headers)?;
    let bytes = read_body(state, headers, body).await?;
    // serde accepts a JSON array for a struct, field by position; only an object is valid here.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidBody(
            "request body must be a JSON object".to_owned(),
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
    let body: MessageBody =
        serde_path_to_error::deserialize(&mut deserializer).map_err(json_error)?;
    deserializer.end().map_err(|_| {
        ApiError::InvalidBody("request body has data after the JSON object".to_owned())
    })?;
    validate_id("session_id", &body.session_id)?;
    validate_id("user_id", &body.user_id)?;
    validate_text(&body.text, state.http.max_text_bytes)?;
    Ok(body)
}

/// Turns a serde error into one that names the offending field.
fn json_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        // The line and column help to find the mistake, so they stay.
        return ApiError::InvalidBody(format!(
            "request body is not valid JSON: {inner}; send one JSON object such as \
             {{\"session_id\": \"s1\", \"user_id\": \"u1\", \"text\": \"hi\"}}"
        ));
    }
    let message = strip_position(&inner.to_string());
    if path != "." && !path.is_empty() {
        return ApiError::field(&path, format!("`{path}`: {message}"));
    }
    // Missing and unknown fields are reported at the root, with the name in backticks.
    let hint =
        "the body takes `session_id`, `user_id` and `text` (strings) and `stream` (a boolean)";
    match backticked(&message) {
        Some(field) => ApiError::field(field, format!("{message}; {hint}")),
        None => ApiError::InvalidBody(format!("invalid request body: {message}; {hint}")),
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let end = start + message[start..].find('`')?;
    Some(message[start..end].to_owned())
}

fn validate_text(text: &str, max_bytes: usize) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::field("text", "`text` must not be empty"));
    }
    if text.len() > max_bytes {
        return Err(ApiError::field(
            "text",
            format!(
                "`text` is {} bytes; the limit is {max_bytes} (channels.http.max_text_bytes)",
                text.len()
            ),
        ));
    }
    // PostgreSQL's text type cannot store it, and no chat text needs it, so both stores reject it
    // here rather than one of them failing the turn after the model replied.
    if text.contains('\0') {
        return Err(ApiError::field(
            "text",
            "`text` contains the NUL character U+0000, which the history store cannot keep; \
             remove it",
        ));
    }
    Ok(())
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|part| part.trim().starts_with("text/event-stream"))
        })
}

/// Starts the turn and answers with an event stream once the first event is known.
///
/// Waiting for that first event lets a turn that fails before writing anything (provider down,
/// rate limited) get a real HTTP error status instead of a 200 stream carrying an error.
async fn stream_turn(
    state: AppState,
    request: TurnRequest,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let agent = state.agent.clone();
    state.turns.spawn(async move {
        let _permit = permit;
        let (text_tx, mut text_rx) = mpsc::unbounded_channel();
        let forward = async {
            while let Some(text) = text_rx.recv().await {
                let _ = event_tx.send(TurnEvent::Delta(text));
            }
        };
        let turn = async {
            let result = agent.run_turn(request, Some(&text_tx)).await;
            drop(text_tx);
            result
        };
        // A panic must still end the stream with an error event, not cut it silently.
        let (result, ()) = tokio::join!(AssertUnwindSafe(turn).catch_unwind(), forward);
        let result = match result {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(ApiError::Internal("the streaming turn panicked".to_owned())),
        };
        let _ = event_tx.send(TurnEvent::Done(Box::new(result)));
    });

    let Some(first) = event_rx.recv().await else {
        return Err(ApiError::Internal(
            "the streaming turn ended without a result".to_owned(),
        ));
    };
    if let TurnEvent::Done(result) = first {
        let outcome = (*result)?;
        let events = stream::iter([Ok::<_, Infallible>(done_event(&outcome))]);
        return Ok(sse_response(events));
    }
    let rest = UnboundedReceiverStream::new(event_rx);
    let events = stream::iter([first]).chain(rest).map(to_sse_event);
    Ok(sse_response(events))
}

fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn to_sse_event(event: TurnEvent) -> Result<Event, Infallible> {
    Ok(match event {
        TurnEvent::Delta(text) => Event::default()
            .event("delta")
            .data(json!({ "text": text }).to_string()),
        TurnEvent::Done(result) => match *result {
            Ok(outcome) => done_event(&outcome),
            Err(err) => error_event(err),
        },
    })
}

fn done_event(outcome: &TurnOutcome) -> Event {
    Event::default()
        .event("done")
        .data(serde_json::to_string(outcome).expect("outcome serializes"))
}

fn error_event(error: ApiError) -> Event {
    let (status, kind) = error.status_and_kind();
    tracing::warn!(status = status.as_u16(), kind, error = %error, "Streaming turn failed");
    let body = json!({ "error": { "type": kind, "status": status.as_u16(), "message": error.client_message() } });
    Event::default().event("error").data(body.to_string())
}
