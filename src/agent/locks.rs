//! Per-session mutual exclusion, so turns on one session run one after another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// A lock per session id, created on first use and removed when nobody holds or waits on it.
///
/// NOTE: the lock is local to this process; replicas sharing one store need a store-side lock.
#[derive(Debug, Default)]
pub struct SessionLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds a session's lock until dropped.
pub struct SessionGuard<'a> {
    owner: &'a SessionLocks,
    session_id: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl SessionLocks {
    /// Waits until no other turn holds `session_id`, in arrival order.
    pub async fn lock(&self, session_id: &str) -> SessionGuard<'_> {
        let lock = {
            let mut locks = self.locks.lock().expect("session lock map poisoned");
            Arc::clone(locks.entry(session_id.to_owned()).or_default())
        };
        let guard = lock.lock_owned().await;
        SessionGuard {
            owner: self,
            session_id: session_id.to_owned(),
            guard: Some(guard),
        }
    }

    /// Sessions that currently have a holder or a waiter.
    pub fn active(&self) -> usize {
        self.locks.lock().expect("session lock map poisoned").len()
    }
}

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.owner.locks.lock().expect("session lock map poisoned");
        // Release first, then drop the map entry if only the map still refers to the lock.
        // Both happen under the map lock, which every new waiter also takes before cloning.
        self.guard.take();
        if let Some(lock) = locks.get(&self.session_id)
            && Arc::strong_count(lock) == 1
        {
            locks.remove(&self.session_id);
        }
    }
}
