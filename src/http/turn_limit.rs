//! The cap on turns running at once (`app.max_concurrent_turns`).
//!
//! Each turn holds a permit from its start until it finishes, also after its client went away,
//! because the turn keeps running then. A request that finds no free permit is rejected at once
//! with a 503 rather than queued, so a burst cannot pile up unbounded work and memory behind the
//! model. Only `POST /v1/messages` takes permits; `/health`, the session history and the
//! diagnostics routes never wait for one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::telemetry::Metrics;

/// Shortest time between two warnings about rejected turns.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Permits for running turns, shared by every handler.
#[derive(Debug)]
pub struct TurnLimit {
    permits: Arc<Semaphore>,
    limit: u32,
    metrics: Metrics,
    created: Instant,
    /// Rejections since the last warning.
    unlogged: AtomicU64,
    /// Time of the last warning in ms after `created`, or 0 before the first one.
    last_warning_ms: AtomicU64,
}

impl TurnLimit {
    pub fn new(limit: u32, metrics: Metrics) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
            metrics,
            created: Instant::now(),
            unlogged: AtomicU64::new(0),
            last_warning_ms: AtomicU64::new(0),
        }
    }

    /// Takes a permit for one turn, or counts and returns the rejection when all are in use.
    pub fn try_start(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => {
                self.metrics.count_turn_rejection();
                self.warn_rate_limited();
                Err(ApiError::TooManyTurns { limit: self.limit })
            }
        }
    }

    /// Logs one warning per [`WARN_INTERVAL`] at most, with the rejections since the last one.
    fn warn_rate_limited(&self) {
        self.unlogged.fetch_add(1, Ordering::Relaxed);
        // At least 1, because 0 stands for no warning yet.
        let now_ms = (self.created.elapsed().as_millis() as u64).max(1);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < WARN_INTERVAL.as_millis() as u64 {
            return;
        }
        let claimed = self.last_warning_ms.compare_exchange(
            last,
            now_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if claimed.is_err() {
            return;
        }
        let rejected = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            max_concurrent_turns = self.limit,
            rejected,
            "Rejected message requests with 503 because app.max_concurrent_turns turns are running"
        );
    }
}
