//! A SQLite database file that is deleted or replaced while the gateway runs: the store and
//! `/health` report it, and turns fail with 503 instead of being confirmed and lost.

use std::path::{Path, PathBuf};

use xiaomaolv::config::StoreConfig;
use xiaomaolv::store::{HistoryStore, SqliteStore, StoreError};

use crate::common::{FakeOpenAi, Options, Reply, TestGateway, message};
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
    let options = Options {
        store_url: Some(format!("sqlite://{}", database(&dir).display())),
        ..Options::default()
    };
    let gateway = TestGateway::start_with(&provider.base_url(), options).await;
    provider.push(Reply::text("first"));
    let (status, body) = gateway.send(message("s1", "hello")).await;
    assert_eq!(status, 200, "{body}");

    std::fs::remove_file(database(&dir)).unwrap();

    let health = gateway
        .client
        .get(gateway.url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    provider.push(Reply::text("second"));
    let (status, body) = gateway.send(message("s1", "again")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "store_unavailable", "{body}");
    let text = body["error"]["message"].as_str().unwrap();
    assert!(text.contains("moved or deleted"), "{text}");
    assert!(text.contains("Restart the gateway"), "{text}");
}
