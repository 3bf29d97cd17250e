//! The HTTP API: router, handlers, errors, bearer auth, and the server with graceful shutdown.

pub mod auth;
pub mod error;
mod routes;
mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use routes::MAX_ID_BYTES;
pub use state::AppState;

/// Builds the router; with `channels.http.enabled = false` only `/health` is served.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new().route("/health", get(routes::health::get));
    if state.http.enabled {
        let api = Router::new()
            .route("/v1/messages", post(routes::messages::post))
            .route(
                "/v1/sessions/{session_id}/messages",
                get(routes::sessions::messages),
            )
            .route_layer(from_fn_with_state(state.clone(), auth::require_api_token));
        router = router.merge(api);
    }
    router.fallback(not_found).with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

/// Serves `state` on `listener` until `shutdown` resolves, then drains within `grace`.
///
/// After the signal the listener stops accepting, open requests and running turns continue, and
/// the function returns when all are done or `grace` has elapsed, whichever comes first.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let stop_accepting = CancellationToken::new();
    let app = router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let server =
        axum::serve(listener, app).with_graceful_shutdown(stop_accepting.clone().cancelled_owned());
    let mut server = tokio::spawn(async move { server.await });

    tokio::select! {
        result = &mut server => return result.expect("server task panicked"),
        () = shutdown => {}
    }
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        turns_in_flight = state.turns.len(),
        "Shutdown signal received; no longer accepting connections"
    );
    stop_accepting.cancel();
    state.turns.close();
    let drain = async {
        let result = server.await.expect("server task panicked");
        state.turns.wait().await;
        result
    };
    match tokio::time::timeout(grace, drain).await {
        Ok(result) => {
            tracing::info!("All requests finished; shutting down");
            result
        }
        Err(_) => {
            tracing::warn!(
                turns_in_flight = state.turns.len(),
                "Grace period elapsed before all turns finished; exiting anyway"
            );
            Ok(())
        }
    }
}
