//! A model server that writes scripted raw bytes on the socket, for faults above the HTTP layer.
//!
//! The axum-based fake always sends well-formed HTTP. This one reads one request per connection,
//! then writes the next scripted reply byte for byte: status line, headers and body as given. So
//! a test can send a body shorter than its `Content-Length`, bytes that are not UTF-8, or reset
//! the connection halfway. Every reply closes its connection. With an empty queue it responds
//! with a plain "pong" completion.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How a scripted reply ends after its bytes are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Close the socket normally (FIN).
    Close,
    /// Reset the connection (RST), by closing with a zero linger time.
    Reset,
}

/// One scripted reply: byte pieces written in order with `pause` between them, then `end`.
#[derive(Debug, Clone)]
pub struct RawReply {
    pub pieces: Vec<Vec<u8>>,
    pub pause: Duration,
    pub end: End,
}

impl RawReply {
    /// Builds a complete 200 response with this content type and body, then a normal close.
    pub fn ok(content_type: &str, body: &[u8]) -> Self {
        let mut bytes = head(content_type, Some(body.len()));
        bytes.extend_from_slice(body);
        Self {
            pieces: vec![bytes],
            pause: Duration::ZERO,
            end: End::Close,
        }
    }

    /// Builds a 200 JSON response that announces `body.len()` bytes but sends only the first `sent`.
    pub fn truncated_json(body: &[u8], sent: usize, end: End) -> Self {
        let mut bytes = head("application/json", Some(body.len()));
        bytes.extend_from_slice(&body[..sent]);
        Self {
            pieces: vec![bytes],
            pause: Duration::ZERO,
            end,
        }
    }

    /// Builds a 200 event stream without a length: the head, then each piece after `pause`, then
    /// `end`.
    pub fn event_stream(pieces: &[&[u8]], pause: Duration, end: End) -> Self {
        let mut all = vec![head("text/event-stream", None)];
        all.extend(pieces.iter().map(|piece| piece.to_vec()));
        Self {
            pieces: all,
            pause,
            end,
        }
    }
}

/// Builds the status line and headers of a 200 response. Without a length, the body ends at the
/// close.
pub fn head(content_type: &str, length: Option<usize>) -> Vec<u8> {
    let mut text =
        format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n");
    if let Some(length) = length {
        text.push_str(&format!("content-length: {length}\r\n"));
    }
    text.push_str("\r\n");
    text.into_bytes()
}

/// Builds one `data:` event of a streamed completion that adds `text` to the reply.
pub fn content_chunk(text: &str) -> String {
    let delta = serde_json::json!({ "content": text });
    let chunk =
        serde_json::json!({ "choices": [{ "index": 0, "delta": delta, "finish_reason": null }] });
    format!("data: {chunk}\n\n")
}

#[derive(Default)]
struct Shared {
    replies: Mutex<VecDeque<RawReply>>,
    requests: Mutex<usize>,
}

pub struct RawUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, state.clone()));
            }
        });
        Self { addr, shared, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn push(&self, reply: RawReply) {
        self.shared.replies.lock().unwrap().push_back(reply);
    }

    /// Requests whose head and body were read completely.
    pub fn request_count(&self) -> usize {
        *self.shared.requests.lock().unwrap()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
    if read_request(&mut stream).await.is_none() {
        return;
    }
    *shared.requests.lock().unwrap() += 1;
    let reply = shared.replies.lock().unwrap().pop_front();
    let reply = reply.unwrap_or_else(|| {
        let body = super::fake_openai::completion("pong", None).to_string();
        RawReply::ok("application/json", body.as_bytes())
    });
    for (index, piece) in reply.pieces.iter().enumerate() {
        if index > 0 {
            tokio::time::sleep(reply.pause).await;
        }
        if stream.write_all(piece).await.is_err() {
            return;
        }
    }
    let _ = stream.flush().await;
    match reply.end {
        End::Close => {
            let _ = stream.shutdown().await;
        }
        End::Reset => {
            // Gives the peer time to read what was written, which a reset may discard.
            tokio::time::sleep(reply.pause).await;
            let _ = stream.set_zero_linger();
        }
    }
    drop(stream);
}

/// Reads one request head and its `Content-Length` body; `None` when the client went away.
async fn read_request(stream: &mut TcpStream) -> Option<()> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buffer.len() < head_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Some(())
}
