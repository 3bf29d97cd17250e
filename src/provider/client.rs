//! The HTTP client of one OpenAI-compatible provider: requests, retries and streaming.

use std::future::Future;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ProviderError;
use super::completion::{Completion, CompletionBuilder};
use super::redact::Redactor;
use super::retry::{RetryPolicy, parse_retry_after};
use super::sse::{InvalidUtf8, SseDecoder};
use super::wire::{ChatChunk, ChatCompletion, ChatMessage, ChatRequest, StreamOptions, ToolSpec};
use crate::config::{ProviderConfig, Secret};
use crate::telemetry::Metrics;

/// Maximum bytes read of an error body. Only its first 300 characters are quoted, and a server
/// that sends a huge or endless error body must hold neither the request nor much memory.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// The start of a streaming request: an event stream to read, or the whole JSON body of a server
/// that ignored `stream: true`.
enum StreamStart {
    Events(reqwest::Response, Duration),
    Json(Vec<u8>),
}

/// A client for one `[providers.NAME]` entry.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    name: String,
    http: reqwest::Client,
    /// The chat-completions URL, parsed once. Parsing it for every request took about 1% of the
    /// gateway's CPU time in a profile at 2,000 messages/s.
    endpoint: reqwest::Url,
    api_key: Option<Secret>,
    redactor: Redactor,
    model: String,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    request_timeout: Duration,
    retry: RetryPolicy,
    max_response_bytes: usize,
    metrics: Metrics,
}

impl ProviderClient {
    pub fn new(name: &str, config: &ProviderConfig) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            // A redirect could carry the API key to another host, so none is followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| ProviderError::Setup(err.to_string()))?;
        let endpoint = format!("{}/chat/completions", config.base_url);
        let endpoint = reqwest::Url::parse(&endpoint).map_err(|err| {
            ProviderError::Setup(format!(
                "invalid base_url of provider `{name}`: {err}; expected a URL such as \
                 http://127.0.0.1:8081/v1"
            ))
        })?;
        Ok(Self {
            name: name.to_owned(),
            http,
            endpoint,
            api_key: config.api_key.clone(),
            redactor: Redactor::new(config.api_key.as_ref()),
            model: config.model.clone(),
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            request_timeout: Duration::from_millis(config.request_timeout_ms),
            retry: RetryPolicy {
                max_retries: config.max_retries,
                initial_backoff: Duration::from_millis(config.retry_initial_backoff_ms),
                max_backoff: Duration::from_millis(config.retry_max_backoff_ms),
            },
            max_response_bytes: config.max_response_bytes,
            metrics: Metrics::default(),
        })
    }

    /// Records each request's outcome and duration in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        metrics.register_provider(&self.name);
        self.metrics = metrics;
        self
    }

    /// Counts a finished request by its outcome, `ok` or the error's kind.
    fn observe<T>(&self, started: Instant, result: &Result<T, ProviderError>) {
        let outcome = result.as_ref().map_or_else(ProviderError::kind, |_| "ok");
        self.metrics
            .observe_provider_request(&self.name, outcome, started.elapsed());
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    fn request(
        &self,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
        stream: bool,
    ) -> ChatRequest {
        ChatRequest {
            model: self.model.clone(),
            messages,
            tools,
            stream,
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
            temperature: self.temperature,
            max_tokens: self.max_tokens,
        }
    }

    /// Sends one non-streaming request, retrying as the policy allows until `deadline`.
    pub async fn complete(
        &self,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        let started = Instant::now();
        let result = self.complete_once(messages, tools, deadline).await;
        let result = result.map_err(|err| self.redactor.error(err));
        self.observe(started, &result);
        result
    }

    async fn complete_once(
        &self,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
        deadline: Instant,
    ) -> Result<Completion, ProviderError> {
        let request = self.request(messages, tools, false);
        let bytes = self
            .with_retries(deadline, |timeout| self.fetch_body(&request, timeout))
            .await?;
        parse_completion(&bytes)
    }

    /// Sends `request` once and reads the whole body, so that a connection that breaks
    /// mid-body is retried like one that breaks before the status line.
    async fn fetch_body(
        &self,
        request: &ChatRequest,
        timeout: Duration,
    ) -> Result<Vec<u8>, ProviderError> {
        let response = self.send_once(request, timeout).await?;
        self.read_body(response, timeout).await
    }

    /// Sends one streaming request; each text fragment goes to `text_tx` as it arrives.
    ///
    /// Retries happen only before the first byte of the body is read, so no fragment is ever
    /// sent twice. A server that ignores `stream: true` and answers with plain JSON still works.
    pub async fn complete_streaming(
        &self,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
        deadline: Instant,
        text_tx: &mpsc::UnboundedSender<String>,
    ) -> Result<Completion, ProviderError> {
        let started = Instant::now();
        let result = self
            .complete_streaming_once(messages, tools, deadline, text_tx)
            .await;
        let result = result.map_err(|err| self.redactor.error(err));
        self.observe(started, &result);
        result
    }

    async fn complete_streaming_once(
        &self,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
        deadline: Instant,
        text_tx: &mpsc::UnboundedSender<String>,
    ) -> Result<Completion, ProviderError> {
        let request = self.request(messages, tools, true);
        let start = self
            .with_retries(deadline, |timeout| self.start_stream(&request, timeout))
            .await?;
        let (response, timeout) = match start {
            StreamStart::Events(response, timeout) => (response, timeout),
            StreamStart::Json(bytes) => {
                let completion = parse_completion(&bytes)?;
                if !completion.content.is_empty() {
                    let _ = text_tx.send(completion.content.clone());
                }
                return Ok(completion);
            }
        };
        self.read_event_stream(response, timeout, text_tx)
            .await
            .map_err(|err| self.attribute_timeout(err))
    }

    /// Sends `request` once. A server that ignored `stream: true` has its JSON body read here,
    /// inside the retry loop, because no fragment of it has reached the client yet.
    async fn start_stream(
        &self,
        request: &ChatRequest,
        timeout: Duration,
    ) -> Result<StreamStart, ProviderError> {
        let response = self.send_once(request, timeout).await?;
        let is_event_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/event-stream"));
        if is_event_stream {
            return Ok(StreamStart::Events(response, timeout));
        }
        let bytes = self.read_body(response, timeout).await?;
        Ok(StreamStart::Json(bytes))
    }

    /// Reads a whole response body, up to `max_response_bytes`.
    async fn read_body(
        &self,
        response: reqwest::Response,
        timeout: Duration,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut body = response.bytes_stream();
        let mut bytes = Vec::new();
        while let Some(piece) = body.next().await {
            let piece = piece
                .map_err(|err| self.attribute_timeout(ProviderError::from_reqwest(err, timeout)))?;
            if bytes.len() + piece.len() > self.max_response_bytes {
                return Err(too_large(self.max_response_bytes));
            }
            bytes.extend_from_slice(&piece);
        }
        Ok(bytes)
    }

    /// Reports a timeout as `DeadlineExceeded` when the turn's deadline, not
    /// `request_timeout_ms`, set the timeout that fired.
    fn attribute_timeout(&self, error: ProviderError) -> ProviderError {
        match error {
            ProviderError::Timeout(timeout) if timeout < self.request_timeout => {
                ProviderError::DeadlineExceeded
            }
            other => other,
        }
    }

    /// Runs `attempt` with the time left for it until it succeeds, a non-retryable error
    /// occurs, the retries run out, or the next backoff would pass `deadline`.
    async fn with_retries<T, F, Fut>(
        &self,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut(Duration) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        let mut retry = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ProviderError::DeadlineExceeded);
            }
            let timeout = self.request_timeout.min(remaining);
            let error = match attempt(timeout).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            // Masked here already, because the retry below logs it.
            let error = self.redactor.error(self.attribute_timeout(error));
            if matches!(error, ProviderError::DeadlineExceeded) {
                return Err(error);
            }
            if !error.is_retryable() || retry >= self.retry.max_retries {
                return Err(error);
            }
            let wait = match error.retry_after() {
                Some(requested) if requested > self.retry.max_backoff => return Err(error),
                Some(requested) => requested,
                None => self.retry.backoff(retry),
            };
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            retry += 1;
            tracing::warn!(
                provider = %self.name,
                retry,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "Retrying provider request"
            );
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once(
        &self,
        request: &ChatRequest,
        timeout: Duration,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut builder = self
            .http
            .post(self.endpoint.clone())
            .json(request)
            .timeout(timeout);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key.expose());
        }
        let response = builder
            .send()
            .await
            .map_err(|err| ProviderError::from_reqwest(err, timeout))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(status_error(response, &self.redactor).await)
    }

    /// Reads an event stream up to `[DONE]` or its end, sending each text fragment to `text_tx`.
    async fn read_event_stream(
        &self,
        response: reqwest::Response,
        timeout: Duration,
        text_tx: &mpsc::UnboundedSender<String>,
    ) -> Result<Completion, ProviderError> {
        let mut decoder = SseDecoder::new();
        let mut builder = CompletionBuilder::default();
        let mut body = response.bytes_stream();
        let mut received = 0;
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|err| ProviderError::from_reqwest(err, timeout))?;
            received += piece.len();
            if received > self.max_response_bytes {
                return Err(too_large(self.max_response_bytes));
            }
            for event in decoder.push(&piece).map_err(invalid_utf8)? {
                let flow = apply_event(&event.data, &mut builder, &self.redactor, text_tx)?;
                if flow.is_break() {
                    return finish_stream(builder, StreamEnd::Done);
                }
            }
        }
        if let Some(event) = decoder.finish().map_err(invalid_utf8)? {
            let flow = apply_event(&event.data, &mut builder, &self.redactor, text_tx)?;
            if flow.is_break() {
                return finish_stream(builder, StreamEnd::Done);
            }
        }
        finish_stream(builder, StreamEnd::Closed)
    }
}

/// The end of a streamed body: `data: [DONE]`, or the close of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    Done,
    Closed,
}

async fn status_error(response: reqwest::Response, redactor: &Redactor) -> ProviderError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let (body, was_cut) = read_error_body(response).await;
    let body = if was_cut {
        redactor.mask_cut(&body)
    } else {
        body
    };
    ProviderError::Status {
        status,
        message: upstream_message(&body, redactor),
        retry_after,
    }
}

/// Reads an error body up to [`MAX_ERROR_BODY_BYTES`] and drops the response, which closes the
/// connection when more was sent. Returns the text and whether it reached the maximum. Bytes
/// that are not UTF-8 become U+FFFD, and a body that breaks off keeps what arrived.
async fn read_error_body(response: reqwest::Response) -> (String, bool) {
    let mut body = response.bytes_stream();
    let mut bytes = Vec::new();
    let mut was_cut = false;
    while let Some(Ok(piece)) = body.next().await {
        let room = MAX_ERROR_BODY_BYTES - bytes.len();
        // A body of exactly the maximum counts as cut too, because waiting to learn whether more
        // follows could stall.
        if piece.len() >= room {
            bytes.extend_from_slice(&piece[..room]);
            was_cut = true;
            break;
        }
        bytes.extend_from_slice(&piece);
    }
    if was_cut {
        // The cut may fall inside a character, whose first bytes would become U+FFFD.
        if let Err(err) = std::str::from_utf8(&bytes)
            && err.error_len().is_none()
        {
            bytes.truncate(err.valid_up_to());
        }
    }
    (String::from_utf8_lossy(&bytes).into_owned(), was_cut)
}

/// Returns the `error.message` of an OpenAI-style error body, else the body, masked and cut by
/// [`Redactor::quote`].
fn upstream_message(body: &str, redactor: &Redactor) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message").or_else(|| v.get("error")))
        .and_then(|v| v.as_str())
        .unwrap_or(body)
        .trim();
    if message.is_empty() {
        return "(empty body)".to_owned();
    }
    redactor.quote(message)
}

fn parse_completion(bytes: &[u8]) -> Result<Completion, ProviderError> {
    // Checked before serde so that the error names the problem instead of "invalid unicode code
    // point", and so that bad bytes are rejected the same way as in a streamed reply.
    if let Err(err) = std::str::from_utf8(bytes) {
        return Err(ProviderError::InvalidResponse(format!(
            "the response body is not valid UTF-8 ({err})"
        )));
    }
    let response: ChatCompletion = serde_json::from_slice(bytes).map_err(|err| {
        ProviderError::InvalidResponse(format!("body is not a chat completion: {err}"))
    })?;
    Completion::try_from(response)
}

fn too_large(limit: usize) -> ProviderError {
    ProviderError::InvalidResponse(format!(
        "the response is larger than {limit} bytes; raise max_response_bytes of the provider if \
         that is expected"
    ))
}

fn invalid_utf8(err: InvalidUtf8) -> ProviderError {
    ProviderError::InvalidResponse(err.to_string())
}

fn apply_event(
    data: &str,
    builder: &mut CompletionBuilder,
    redactor: &Redactor,
    text_tx: &mpsc::UnboundedSender<String>,
) -> Result<std::ops::ControlFlow<()>, ProviderError> {
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(std::ops::ControlFlow::Break(()));
    }
    if data.is_empty() {
        return Ok(std::ops::ControlFlow::Continue(()));
    }
    let value: serde_json::Value = serde_json::from_str(data).map_err(|err| {
        ProviderError::InvalidResponse(format!("stream event is not JSON: {err}"))
    })?;
    if let Some(error) = value.get("error") {
        let message = error
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("unknown error");
        return Err(ProviderError::InvalidResponse(format!(
            "error event in stream: {}",
            redactor.quote(message)
        )));
    }
    let chunk: ChatChunk = serde_json::from_value(value).map_err(|err| {
        ProviderError::InvalidResponse(format!("stream event is not a chunk: {err}"))
    })?;
    if let Some(text) = builder.apply(chunk) {
        let _ = text_tx.send(text);
    }
    Ok(std::ops::ControlFlow::Continue(()))
}

/// Builds the completion of a stream that ended with `end`.
///
/// A stream that closed without `[DONE]` is accepted only when a `finish_reason` arrived, since
/// without either it is indistinguishable from a reply that was cut off.
fn finish_stream(builder: CompletionBuilder, end: StreamEnd) -> Result<Completion, ProviderError> {
    if end == StreamEnd::Closed && !builder.has_finish_reason() {
        return Err(ProviderError::IncompleteStream);
    }
    if builder.is_empty() {
        return Err(ProviderError::InvalidResponse(
            "the stream ended without any choice".into(),
        ));
    }
    Ok(builder.finish())
}
