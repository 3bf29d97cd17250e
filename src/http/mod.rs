//! The HTTP API: router, handlers, errors, bearer auth, the diagnostics endpoints with their rate
//! limit, and the server with graceful shutdown.

pub mod auth;
pub mod client_ip;
mod connection;
pub mod error;
pub mod rate_limit;
mod routes;
mod state;
mod track;
mod turn_errors;
mod turn_limit;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{any, get, post};
use tokio::net::TcpListener;

pub use error::ApiError;
pub use routes::MAX_ID_BYTES;
pub use routes::diag::{DIAG_PATH, METRICS_PATH};
pub use state::AppState;
pub use turn_limit::TurnLimit;

/// Builds the router; with `channels.http.enabled = false` only `/health` is served.
///
/// Everything except `/health` and the two diagnostics routes sits behind the API token check,
/// unknown paths included, so a client without the token learns nothing about which routes
/// exist. The diagnostics routes have their own token, rate limit and guard. Every request is
/// counted in `xiaomaolv_http_requests_total` by its matched route pattern.
pub fn router(state: AppState) -> Router {
    let router = Router::new().route("/health", get(routes::health::get));
    let router = if state.http.enabled {
        let router = router.merge(diag_routes(&state));
        let mut api = Router::new()
            .route("/v1/messages", post(routes::messages::post))
            .route(
                "/v1/sessions/{session_id}/messages",
                get(routes::sessions::messages),
            );
        // The MCP admin routes can run any tool, so they need the API token to exist at all.
        if state.http.api_bearer_token.is_some() {
            api = api
                .route("/v1/mcp/servers", get(routes::mcp::servers))
                .route("/v1/mcp/tools", get(routes::mcp::tools))
                .route("/v1/mcp/tools/{server}/{tool}", post(routes::mcp::call));
        }
        let api = api
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(from_fn_with_state(state.clone(), auth::require_api_token))
            .layer(from_fn(track::label_route))
            .with_state(state.clone());
        router.fallback_service(api)
    } else {
        router.fallback(not_found)
    };
    let metrics = state.telemetry.metrics.clone();
    router
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(metrics, track::record_request))
        .with_state(state)
}

/// The diagnostics routes; without a diag token they answer 404 to every method.
fn diag_routes(state: &AppState) -> Router<AppState> {
    if state.http.diag_bearer_token.is_none() {
        return Router::new()
            .route(DIAG_PATH, any(not_found))
            .route(METRICS_PATH, any(not_found));
    }
    Router::new()
        .route(DIAG_PATH, get(routes::diag::diag))
        .route(METRICS_PATH, get(routes::diag::metrics))
        .route_layer(from_fn_with_state(state.clone(), routes::diag::guard))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// How long the turns stopped at the end of the grace period have to send their clients a 503 or
/// a final SSE `error` event before the process exits anyway.
const STOPPED_TURNS_FLUSH: Duration = Duration::from_secs(2);

/// Serves `state` on `listener` until `shutdown` resolves, then drains within `grace`.
///
/// After the signal the listener is closed, open requests and running turns continue, and the
/// function returns when all are done or `grace` has elapsed, whichever comes first. Turns still
/// running then are stopped before they save anything, and their clients get a 503 or a final
/// SSE `error` event, within [`STOPPED_TURNS_FLUSH`] at most. Connections
/// are served by hyper directly rather than through `axum::serve` so that slow and idle clients
/// are disconnected (see [`connection`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let connections = connection::Connections::new(&state.http);
    let mut accept_errors = connection::AcceptErrorLog::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning until descriptors free up.
                    accept_errors.record(&err);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        connections.spawn(stream, peer, app.clone());
    }
    drop(listener);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        turns_in_flight = state.turns.len(),
        "Shutdown signal received; no longer accepting connections"
    );
    state.turns.close();
    let drain = async {
        connections.shut_down().await;
        state.turns.wait().await;
    };
    let mut drain = std::pin::pin!(drain);
    if tokio::time::timeout(grace, drain.as_mut()).await.is_ok() {
        tracing::info!("All requests finished; shutting down");
        return Ok(());
    }
    tracing::warn!(
        turns_in_flight = state.turns.len(),
        "Grace period elapsed before all turns finished; stopping them and telling their clients"
    );
    state.agent.stop_turns();
    if tokio::time::timeout(STOPPED_TURNS_FLUSH, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            turns_in_flight = state.turns.len(),
            "Connections were still open after the stopped turns; exiting anyway"
        );
    }
    Ok(())
}
