//! Request metrics: each request is counted by its matched route pattern and status class.
//!
//! The API routes live in a router that the outer one reaches through its fallback, so the outer
//! middleware cannot read their matched path from the request. [`label_route`] runs inside that
//! router and copies the pattern into the response, where [`record_request`] finds it.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::telemetry::Metrics;

/// The route pattern that served a response, such as `/v1/sessions/{session_id}/messages`.
#[derive(Debug, Clone)]
struct RouteLabel(String);

/// Label for requests that matched no route, so unknown paths never become label values.
const UNMATCHED: &str = "unmatched";

pub async fn label_route(request: Request, next: Next) -> Response {
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| RouteLabel(path.as_str().to_owned()));
    let mut response = next.run(request).await;
    if let Some(label) = matched {
        response.extensions_mut().insert(label);
    }
    response
}

pub async fn record_request(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let response = next.run(request).await;
    let route = matched
        .as_deref()
        .or_else(|| {
            response
                .extensions()
                .get::<RouteLabel>()
                .map(|l| l.0.as_str())
        })
        .unwrap_or(UNMATCHED);
    metrics.observe_http_request(route, response.status().as_u16(), started.elapsed());
    response
}
