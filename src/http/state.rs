//! Shared state of the HTTP handlers.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::agent::Agent;
use crate::config::HttpChannelConfig;
use crate::store::HistoryStore;

#[derive(Clone)]
pub struct AppState {
    pub agent: Arc<Agent>,
    pub store: Arc<dyn HistoryStore>,
    pub http: Arc<HttpChannelConfig>,
    /// Every running turn, so shutdown can wait for them.
    pub turns: TaskTracker,
}
