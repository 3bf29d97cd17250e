//! The outcome of a store's most recent commit, which `GET /health` reports.
//!
//! A health check that wrote a row would add a write per check, and a read alone passes while
//! every write fails: a read-only or full file system, or a database role without `INSERT`. So
//! each store records how its commits end, and `/health` reads that record.
//!
//! Only faults of the store count as failures: errors that would fail any turn, such as an I/O
//! error, a full disk or a missing privilege. A turn rejected for its own content, such as one
//! with a NUL character that PostgreSQL refuses, neither fails nor clears the record.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The kind of store fault that failed a commit, with the check for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteFault {
    /// A short, stable name, such as `disk_full`, `read_only` or `permission_denied`.
    pub kind: &'static str,
    /// The database's own code: a SQLite result code, or a PostgreSQL SQLSTATE. It never
    /// contains SQL text, row values or credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The first thing an operator should check or do, as a sentence.
    pub check: &'static str,
}

/// A run of failed commits with no successful commit since the first of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteFailure {
    /// The backend: `sqlite` or `postgresql`.
    pub store: &'static str,
    /// The fault of the most recent failed commit.
    #[serde(flatten)]
    pub fault: WriteFault,
    /// When the first failed commit of the run ended, in Unix milliseconds.
    pub first_failed_at_ms: i64,
    /// When the most recent failed commit ended, in Unix milliseconds.
    pub last_failed_at_ms: i64,
    /// Failed commits since the last successful one.
    pub failed_commits: u64,
    /// When the last successful commit ended, in Unix milliseconds, or `None` when no commit has
    /// succeeded since the gateway started.
    pub last_success_at_ms: Option<i64>,
}

/// The record of how a store's commits ended. Shared by every thread that commits.
#[derive(Debug)]
pub(crate) struct WriteHealth {
    store: &'static str,
    /// Whether `failure` is `Some`. Read without the lock, so a successful commit takes the lock
    /// only while a failure is recorded.
    failing: AtomicBool,
    /// Unix milliseconds of the last successful commit, or 0 before the first one.
    last_success_ms: AtomicI64,
    failure: Mutex<Option<WriteFailure>>,
}

impl WriteHealth {
    pub(crate) fn new(store: &'static str) -> Self {
        Self {
            store,
            failing: AtomicBool::new(false),
            last_success_ms: AtomicI64::new(0),
            failure: Mutex::new(None),
        }
    }

    /// Records a successful commit, which clears a recorded failure. Without a recorded failure
    /// this is a clock read and two atomic operations, with no lock and no allocation.
    pub(crate) fn succeeded(&self) {
        self.last_success_ms.store(now_ms(), Ordering::Relaxed);
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut failure = self.lock();
        if let Some(ended) = failure.take() {
            self.failing.store(false, Ordering::Release);
            tracing::info!(
                store = self.store,
                kind = ended.fault.kind,
                failed_commits = ended.failed_commits,
                first_failed_at_ms = ended.first_failed_at_ms,
                "Store writes succeed again."
            );
        }
    }

    /// Records a commit that failed with `fault`. The first failure of a run is logged, later ones
    /// only counted, because the turns that fail are logged on their own.
    pub(crate) fn failed(&self, fault: WriteFault) {
        let now = now_ms();
        let mut failure = self.lock();
        match failure.as_mut() {
            Some(run) => {
                run.fault = fault;
                run.last_failed_at_ms = now;
                run.failed_commits += 1;
            }
            None => {
                tracing::error!(
                    store = self.store,
                    kind = fault.kind,
                    code = fault.code.as_deref().unwrap_or(""),
                    check = fault.check,
                    "A store commit failed; /health returns 503 until a commit succeeds."
                );
                let last_success = self.last_success_ms.load(Ordering::Relaxed);
                *failure = Some(WriteFailure {
                    store: self.store,
                    fault,
                    first_failed_at_ms: now,
                    last_failed_at_ms: now,
                    failed_commits: 1,
                    last_success_at_ms: (last_success != 0).then_some(last_success),
                });
            }
        }
        self.failing.store(true, Ordering::Release);
    }

    /// Returns the recorded failure: `Some` when the most recent commit failed and none succeeded
    /// since.
    pub(crate) fn failure(&self) -> Option<WriteFailure> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Option<WriteFailure>> {
        self.failure.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(kind: &'static str) -> WriteFault {
        WriteFault {
            kind,
            code: Some("CODE".to_owned()),
            check: "check something",
        }
    }

    #[test]
    fn new_record_has_no_failure() {
        let health = WriteHealth::new("sqlite");
        assert_eq!(health.failure(), None);
    }

    #[test]
    fn failures_count_until_success() {
        let health = WriteHealth::new("sqlite");
        health.succeeded();
        health.failed(fault("io_error"));
        health.failed(fault("disk_full"));

        let failure = health.failure().expect("a failure is recorded");
        assert_eq!(failure.store, "sqlite");
        assert_eq!(failure.fault.kind, "disk_full", "the most recent fault");
        assert_eq!(failure.failed_commits, 2);
        assert!(failure.first_failed_at_ms <= failure.last_failed_at_ms);
        let last_success = failure
            .last_success_at_ms
            .expect("a commit succeeded first");
        assert!(last_success <= failure.first_failed_at_ms);

        health.succeeded();
        assert_eq!(health.failure(), None);
    }

    #[test]
    fn failure_before_any_success_has_no_success_time() {
        let health = WriteHealth::new("postgresql");
        health.failed(fault("permission_denied"));
        let failure = health.failure().expect("a failure is recorded");
        assert_eq!(failure.last_success_at_ms, None);
    }

    #[test]
    fn new_run_starts_after_success() {
        let health = WriteHealth::new("sqlite");
        health.failed(fault("io_error"));
        health.failed(fault("io_error"));
        health.succeeded();
        health.failed(fault("read_only"));
        let failure = health.failure().expect("a failure is recorded");
        assert_eq!(failure.failed_commits, 1);
        assert_eq!(failure.fault.kind, "read_only");
    }

    #[test]
    fn failure_serializes_flat() {
        let health = WriteHealth::new("sqlite");
        health.failed(fault("io_error"));
        let json = serde_json::to_value(health.failure().unwrap()).unwrap();
        assert_eq!(json["store"], "sqlite");
        assert_eq!(json["kind"], "io_error");
        assert_eq!(json["code"], "CODE");
        assert_eq!(json["check"], "check something");
        assert_eq!(json["failed_commits"], 1);
        assert!(json["last_success_at_ms"].is_null());
    }
}
