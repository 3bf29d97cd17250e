//! A scripted OpenAI-compatible server for deterministic tests.
//!
//! Tests queue replies; each `POST /v1/chat/completions` takes the next one (or a plain "pong"
//! completion when the queue is empty). Replies can stream in arbitrary byte pieces, delay, return
//! any status and headers, or send malformed bodies. Every request body is recorded, and the
//! server tracks how many requests were in flight at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt;
use serde_json::{Value, json};

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this JSON body.
    Json(Value),
    /// Any status, headers and raw body.
    Raw {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// 200 `text/event-stream`, each piece written separately with `pause` between pieces.
    Stream {
        pieces: Vec<Vec<u8>>,
        pause: Duration,
    },
    /// Waits, then answers with the inner reply.
    Delayed(Duration, Box<Reply>),
    /// `status` with a body of `len` bytes, sent in 64 KiB pieces as fast as the client reads
    /// them: an OpenAI-style error whose message never ends, `{"error":{"message":"xxx…`. With
    /// `stall`, the body then stays open without sending more, so a client that reads to the end
    /// waits until its timeout.
    Flood {
        status: u16,
        len: usize,
        stall: bool,
    },
}

impl Reply {
    pub fn text(content: &str) -> Self {
        Self::Json(completion(content, Some((3, 2))))
    }

    pub fn status(status: u16, body: &str) -> Self {
        Self::Raw {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    pub fn after(self, delay: Duration) -> Self {
        Self::Delayed(delay, Box::new(self))
    }

    /// A stream whose events are cut into pieces at the given byte offsets.
    pub fn stream_split(body: &str, cuts: &[usize]) -> Self {
        let bytes = body.as_bytes();
        let mut pieces = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            pieces.push(bytes[start..cut].to_vec());
            start = cut;
        }
        pieces.push(bytes[start..].to_vec());
        Self::Stream {
            pieces,
            pause: Duration::from_millis(5),
        }
    }
}

/// A `chat.completion` body; `usage` is `(prompt, completion)` tokens, or absent.
pub fn completion(content: &str, usage: Option<(u64, u64)>) -> Value {
    let mut body = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "fake-model",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": content },
            "finish_reason": "stop"
        }]
    });
    if let Some((prompt, completion)) = usage {
        body["usage"] = json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion
        });
    }
    body
}

/// A completion that calls tools: each entry is `(function name, raw arguments text)`.
pub fn tool_calls(calls: &[(&str, &str)], finish_reason: &str) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(index, (name, arguments))| {
            json!({
                "id": format!("call_{index}"),
                "type": "function",
                "function": { "name": name, "arguments": arguments }
            })
        })
        .collect();
    json!({
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": null, "tool_calls": calls },
            "finish_reason": finish_reason
        }],
        "usage": { "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15 }
    })
}

/// SSE text of a streamed answer: one chunk per fragment, a final reason, usage, `[DONE]`.
pub fn sse_body(fragments: &[&str]) -> String {
    let mut body = String::new();
    for fragment in fragments {
        let chunk = json!({ "choices": [{ "index": 0, "delta": { "content": fragment }, "finish_reason": null }] });
        body.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({ "choices": [{ "index": 0, "delta": {}, "finish_reason": "stop" }] });
    body.push_str(&format!("data: {last}\n\n"));
    let usage = json!({ "choices": [], "usage": { "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9 } });
    body.push_str(&format!("data: {usage}\n\n"));
    body.push_str("data: [DONE]\n\n");
    body
}

#[derive(Default)]
struct Shared {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<RecordedRequest>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub body: Value,
    pub authorization: Option<String>,
}

pub struct FakeOpenAi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeOpenAi {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, shared, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn push(&self, reply: Reply) {
        self.shared.replies.lock().unwrap().push_back(reply);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// The maximum number of requests handled at the same moment.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let authorization = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    shared.requests.lock().unwrap().push(RecordedRequest {
        body,
        authorization,
    });
    let reply = shared
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Reply::text("pong"));
    let response = respond(reply).await;
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn respond(reply: Reply) -> Response {
    let mut reply = reply;
    while let Reply::Delayed(delay, inner) = reply {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    match reply {
        Reply::Json(body) => axum::Json(body).into_response(),
        Reply::Raw {
            status,
            headers,
            body,
        } => {
            let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Reply::Stream { pieces, pause } => {
            let stream =
                futures_util::stream::unfold(pieces.into_iter(), move |mut rest| async move {
                    let piece = rest.next()?;
                    tokio::time::sleep(pause).await;
                    Some((Ok::<_, std::io::Error>(Bytes::from(piece)), rest))
                });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Reply::Flood { status, len, stall } => flood(status, len, stall),
        Reply::Delayed(..) => unreachable!("unwrapped above"),
    }
}

/// Builds the response of [`Reply::Flood`].
fn flood(status: u16, len: usize, stall: bool) -> Response {
    const PIECE: usize = 64 * 1024;
    let start = br#"{"error":{"message":""#;
    let mut first = start.to_vec();
    first.resize(PIECE.min(len).max(start.len()), b'x');
    first.truncate(len);
    let pieces = std::iter::once(Bytes::from(first)).chain(
        (PIECE..len)
            .step_by(PIECE)
            .map(move |offset| Bytes::from(vec![b'x'; PIECE.min(len - offset)])),
    );
    let sent = futures_util::stream::iter(pieces.map(Ok::<_, std::io::Error>));
    let body = if stall {
        Body::from_stream(sent.chain(futures_util::stream::pending()))
    } else {
        Body::from_stream(sent)
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .unwrap()
}
