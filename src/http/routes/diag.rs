//! `GET /v1/code-mode/diag` and `GET /v1/code-mode/metrics`, and the guard in front of both.
//!
//! The guard runs three checks in order. Without `channels.http.diag_bearer_token` both routes
//! return 404, as if they did not exist. Then `diag_rate_limit_per_minute` counts the request
//! against its client, before the token is looked at, so a client guessing tokens is slowed down
//! as much as any other. Last, the bearer token is compared in constant time. The API token plays
//! no part here: the routes have their own token and work whether or not the API has one.

use std::time::Instant;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::auth::has_token;
use crate::http::client_ip::{client_ip, peer_ip, rate_key};
use crate::http::error::{ApiError, retry_after_secs};
use crate::http::rate_limit::RateStatus;
use crate::http::state::AppState;
use crate::telemetry::Format;
use crate::telemetry::diag::{DiagSnapshot, snapshot};

pub const DIAG_PATH: &str = "/v1/code-mode/diag";
pub const METRICS_PATH: &str = "/v1/code-mode/metrics";

/// Middleware of both routes: disabled check, rate limit, then the token.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = &state.http.diag_bearer_token else {
        return ApiError::NotFound(format!("no route for {}", request.uri().path()))
            .into_response();
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    let client = client_ip(
        peer_ip(peer),
        request.headers(),
        &state.http.trusted_proxies,
    );
    let status = state
        .diag_limiter
        .as_ref()
        .map(|limiter| limiter.check(rate_key(client), Instant::now()));
    if let Some(status) = status.filter(|status| !status.allowed) {
        reject_rate_limited(&state, client, status);
        return with_rate_headers(ApiError::RateLimited(status.reset).into_response(), status);
    }
    let response = if has_token(request.headers(), expected) {
        next.run(request).await
    } else {
        reject_unauthorized(&state, client);
        ApiError::Unauthorized.into_response()
    };
    match status {
        Some(status) => with_rate_headers(response, status),
        None => response,
    }
}

/// Logs the first rejection of a client's window and counts every one, so a client hammering
/// the endpoint fills the log with one line per minute at most.
fn reject_rate_limited(state: &AppState, client: std::net::IpAddr, status: RateStatus) {
    state.telemetry.metrics.count_diag_rejection("rate_limited");
    if status.first_rejection {
        tracing::warn!(
            %client,
            limit_per_minute = status.limit,
            retry_after_s = retry_after_secs(status.reset),
            "Diagnostics client exceeded its rate limit; rejecting it until its window ends"
        );
    }
}

/// Logs and counts a request without the right token; the rate limit bounds how often.
fn reject_unauthorized(state: &AppState, client: std::net::IpAddr) {
    state.telemetry.metrics.count_diag_rejection("unauthorized");
    tracing::warn!(%client, "Rejected a diagnostics request without a valid bearer token");
}

/// Adds the `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers (seconds until
/// the window ends) of the IETF draft on rate-limit header fields.
fn with_rate_headers(mut response: Response, status: RateStatus) -> Response {
    let headers = response.headers_mut();
    let mut set = |name: &'static str, value: u64| {
        headers.insert(HeaderName::from_static(name), HeaderValue::from(value));
    };
    set("ratelimit-limit", status.limit.into());
    set("ratelimit-remaining", status.remaining.into());
    set("ratelimit-reset", retry_after_secs(status.reset));
    response
}

pub async fn diag(State(state): State<AppState>) -> Json<DiagSnapshot> {
    Json(snapshot(&state.telemetry.sources))
}

pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let format = negotiate(&headers);
    let body = state.telemetry.exposition.encode(format);
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

/// Picks OpenMetrics when `Accept` prefers it over plain text, else the Prometheus text format.
///
/// Prometheus 2.x requests OpenMetrics first with a lower `q` for `text/plain`; a client without
/// `Accept`, or with `*/*`, gets the text format.
pub fn negotiate(headers: &HeaderMap) -> Format {
    let mut openmetrics = 0.0_f32;
    let mut text = 0.0_f32;
    let ranges = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for range in ranges {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let quality = parts
            .filter_map(|param| param.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
            "text/plain" | "text/*" | "*/*" => text = text.max(quality),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics > text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn prometheus_accept_header_gets_openmetrics() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(&accept(prometheus)), Format::OpenMetrics);
    }

    #[test]
    fn missing_or_plain_accept_gets_text() {
        assert_eq!(negotiate(&HeaderMap::new()), Format::Text);
        assert_eq!(negotiate(&accept("*/*")), Format::Text);
        assert_eq!(negotiate(&accept("text/plain")), Format::Text);
    }

    #[test]
    fn openmetrics_with_lower_quality_than_text_gets_text() {
        let headers = accept("application/openmetrics-text;q=0.3, text/plain");
        assert_eq!(negotiate(&headers), Format::Text);
    }
}
