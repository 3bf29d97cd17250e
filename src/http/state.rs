//! Shared state of the HTTP handlers.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::rate_limit::RateLimiter;
use super::turn_limit::TurnLimit;
use crate::agent::Agent;
use crate::config::HttpChannelConfig;
use crate::store::HistoryStore;
use crate::telemetry::Telemetry;

#[derive(Clone)]
pub struct AppState {
    pub agent: Arc<Agent>,
    pub store: Arc<dyn HistoryStore>,
    pub http: Arc<HttpChannelConfig>,
    /// Every running turn, so shutdown can wait for them.
    pub turns: TaskTracker,
    /// The cap on turns running at once.
    pub turn_limit: Arc<TurnLimit>,
    /// Metric instruments, the exposition and what the diag endpoint reads.
    pub telemetry: Arc<Telemetry>,
    /// The diagnostics endpoints' limiter; `None` when `diag_rate_limit_per_minute` is 0.
    pub diag_limiter: Option<Arc<RateLimiter>>,
}
