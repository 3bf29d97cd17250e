//! A SQLite database file that is deleted or replaced while the gateway runs: the store and
//! `/health` report it, and turns fail with 503 instead of being confirmed and lost.

use std::path::{Path, PathBuf};

use xiaomaolv::config::StoreConfig;
use xiaomaolv::store::{HistoryStore, SqliteStore, StoreError};

use crate::common::{FakeOpenAi, Options, Reply, TestGateway, message, now_ms};
use crate::store::{page_request, turn};

async fn open_store(path: &Path) -> SqliteStore {
    let config = StoreConfig {
        url: format!("sqlite://{}", path.display()),
        max_connections: 4,
        busy_timeout_ms: 5000,
    };
    SqliteStore::open(&config).await.unwrap()
}

fn assert_file_moved(result: Result<impl std::fmt::Debug, StoreError>, reason: &str) {
    let err = result.expect_err("the store notices the file change");
    assert!(matches!(err, StoreError::FileMoved { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("moved, deleted or replaced"), "{text}");
    assert!(text.contains(reason), "{text}");
    assert!(text.contains("restart the gateway"), "{text}");
}

fn database(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("history.db")
}

/// Starts a gateway whose store is the SQLite file [`database`] in `dir`.
async fn gateway_on_file(provider: &FakeOpenAi, dir: &tempfile::TempDir) -> TestGateway {
    let options = Options {
        store_url: Some(format!("sqlite://{}", database(dir).display())),
        ..Options::default()
    };
    TestGateway::start_with(&provider.base_url(), options).await
}

#[tokio::test]
async fn deleted_file_fails_ping_reads_and_saves() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&database(&dir)).await;
    store
        .save_turn(&turn("s1", "t1", "q", "a", None))
        .await
        .unwrap();
    store.ping().await.unwrap();

    std::fs::remove_file(database(&dir)).unwrap();

    assert_file_moved(store.ping().await, "no file is at that path");
    let second = turn("s1", "t2", "q", "a", None);
    assert_file_moved(store.save_turn(&second).await, "no file is at that path");
    assert_file_moved(store.recent_messages("s1", 10).await, "no file");
    assert_file_moved(
        store.message_page("s1", page_request(10, None)).await,
        "no file",
    );
}

#[tokio::test]
async fn replaced_file_fails_ping_and_saves() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&database(&dir)).await;
    store
        .save_turn(&turn("s1", "t1", "q", "a", None))
        .await
        .unwrap();

    let moved = dir.path().join("moved.db");
    std::fs::rename(database(&dir), &moved).unwrap();
    std::fs::copy(&moved, database(&dir)).unwrap();

    assert_file_moved(store.ping().await, "another file is at that path");
    let second = turn("s1", "t2", "q", "a", None);
    assert_file_moved(store.save_turn(&second).await, "another file");
}

#[tokio::test]
async fn deleted_file_makes_health_and_turns_503() {
    let provider = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_on_file(&provider, &dir).await;
    provider.push(Reply::text("first"));
    let (status, body) = gateway.send(message("s1", "hello")).await;
    assert_eq!(status, 200, "{body}");

    std::fs::remove_file(database(&dir)).unwrap();

    assert_eq!(gateway.health().await.0, 503);
    provider.push(Reply::text("second"));
    let (status, body) = gateway.send(message("s1", "again")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "store_unavailable", "{body}");
    let text = body["error"]["message"].as_str().unwrap();
    assert!(text.contains("moved or deleted"), "{text}");
    assert!(text.contains("Restart the gateway"), "{text}");
}

/// Files with the immutable attribute (`chattr +i`) while it lives. Writes to an immutable file
/// fail with EPERM even through a descriptor opened before, and for root too, so SQLite gets a
/// real I/O error. Dropping it clears the attribute, so the temporary directory can be deleted.
struct Immutable {
    paths: Vec<PathBuf>,
}

impl Immutable {
    /// Returns `None` when `chattr +i` fails, as it does without CAP_LINUX_IMMUTABLE or on a file
    /// system without the attribute.
    fn set(paths: &[PathBuf]) -> Option<Self> {
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .args(paths)
            .status()
            .ok()?;
        let immutable = Self {
            paths: paths.to_vec(),
        };
        status.success().then_some(immutable)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let status = std::process::Command::new("chattr")
            .arg("-i")
            .args(&self.paths)
            .status();
        assert!(
            status.is_ok_and(|status| status.success()),
            "chattr -i failed on {:?}",
            self.paths
        );
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn unwritable_file_makes_health_503_until_commit() {
    let provider = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = gateway_on_file(&provider, &dir).await;
    let (status, body) = gateway.send(message("s1", "hello")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.health().await.0, 200);

    // A commit appends to the write-ahead log, and a checkpoint copies it into the database file.
    let wal = dir.path().join("history.db-wal");
    assert!(wal.exists(), "the store runs in WAL mode");
    let Some(immutable) = Immutable::set(&[database(&dir), wal]) else {
        // NOTE: without CAP_LINUX_IMMUTABLE this test checks nothing. Root ignores file modes,
        // and a descriptor that SQLite opened before keeps writing after a chmod.
        assert!(!is_root(), "chattr +i failed as root; is chattr installed?");
        eprintln!("skipped: chattr +i needs root (CAP_LINUX_IMMUTABLE)");
        return;
    };
    let before_failure = now_ms();
    let (status, body) = gateway.send(message("s1", "again")).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["type"], "store_error", "{body}");

    let (status, body) = gateway.health().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable", "{body}");
    assert_eq!(body["store"], "write_failed", "{body}");
    let error = &body["error"];
    assert_eq!(error["type"], "store_write_failed", "{body}");
    assert_eq!(error["store"], "sqlite", "{body}");
    assert_eq!(error["kind"], "io_error", "{body}");
    let code = error["code"].as_str().unwrap();
    assert!(code.starts_with("SQLITE_IOERR ("), "{body}");
    assert_eq!(error["failed_commits"], 1, "{body}");
    let first_failed = error["first_failed_at_ms"].as_i64().unwrap();
    assert!(first_failed >= before_failure, "{body}");
    assert!(first_failed <= now_ms(), "{body}");
    let last_success = error["last_success_at_ms"].as_i64().unwrap();
    assert!(last_success <= first_failed, "{body}");
    let text = error["message"].as_str().unwrap();
    assert!(
        text.contains("SQLite history store failed (io_error)"),
        "{text}"
    );
    assert!(text.contains("immutable attribute"), "{text}");
    assert!(!text.contains("INSERT"), "{text}");

    let (status, body) = gateway.send(message("s2", "still failing")).await;
    assert_eq!(status, 500, "{body}");
    let (status, body) = gateway.health().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["failed_commits"], 2, "{body}");
    assert_eq!(
        body["error"]["first_failed_at_ms"], first_failed,
        "the run keeps its start"
    );

    drop(immutable);
    let (status, body) = gateway.send(message("s1", "recovered")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gateway.health().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!({ "status": "ok" }));
    let history = gateway.history("s1").await.unwrap();
    assert_eq!(history.len(), 4, "the failed turn left no rows");
}
