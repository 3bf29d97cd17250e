//! The SQLite history store: atomic turns, ordering, limits, unknown usage, concurrency.

use std::sync::Arc;

use xiaomaolv::config::StoreConfig;
use xiaomaolv::provider::wire::{Role, Usage};
use xiaomaolv::store::{HistoryStore, NewMessage, NewTurn, SqliteStore};

async fn open(dir: &tempfile::TempDir) -> Arc<dyn HistoryStore> {
    let path = dir.path().join("history.db");
    let config = StoreConfig {
        url: format!("sqlite://{}", path.display()),
        max_connections: 4,
        busy_timeout_ms: 5000,
    };
    Arc::new(SqliteStore::open(&config).await.unwrap())
}

fn turn(session: &str, turn_id: &str, user: &str, reply: &str, usage: Option<Usage>) -> NewTurn {
    let message = |role, content: &str, usage| NewMessage {
        role,
        content: content.to_owned(),
        created_at_ms: 1_700_000_000_000,
        provider: None,
        model: None,
        finish_reason: None,
        usage,
    };
    NewTurn {
        session_id: session.to_owned(),
        user_id: "u1".to_owned(),
        turn_id: turn_id.to_owned(),
        messages: vec![
            message(Role::User, user, None),
            message(Role::Assistant, reply, usage),
        ],
        tool_calls: Vec::new(),
        code_mode: None,
    }
}

#[tokio::test]
async fn saved_turn_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let usage = Usage {
        prompt_tokens: 10,
        completion_tokens: 5,
        total_tokens: 15,
    };
    store
        .save_turn(&turn("s1", "t1", "hello", "hi!", Some(usage)))
        .await
        .unwrap();
    store
        .save_turn(&turn("s1", "t2", "again", "sure", None))
        .await
        .unwrap();

    let messages = store.session_messages("s1").await.unwrap().unwrap();
    let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["hello", "hi!", "again", "sure"]);
    assert_eq!(messages[0].role, Role::User);
    assert_eq!(messages[1].role, Role::Assistant);
    assert_eq!(messages[1].usage, Some(usage));
    assert_eq!(messages[3].usage, None, "unknown usage stays unknown");
    assert_eq!(messages[2].turn_id, "t2");
}

#[tokio::test]
async fn recent_messages_returns_newest_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    for i in 0..5 {
        store
            .save_turn(&turn(
                "s1",
                &format!("t{i}"),
                &format!("q{i}"),
                &format!("a{i}"),
                None,
            ))
            .await
            .unwrap();
    }
    let recent = store.recent_messages("s1", 3).await.unwrap();
    let contents: Vec<&str> = recent.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, ["a3", "q4", "a4"]);
}

#[tokio::test]
async fn unknown_session_is_none_and_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert!(store.session_messages("missing").await.unwrap().is_none());
    assert!(
        store
            .recent_messages("missing", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn failed_turn_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    // A trigger makes the assistant message fail after the session row and the user message
    // were inserted in the same transaction; all of it must roll back.
    let url = format!("sqlite://{}", dir.path().join("history.db").display());
    let mut raw = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER reject_boom BEFORE INSERT ON messages WHEN NEW.content = 'boom' \
         BEGIN SELECT RAISE(ABORT, 'rejected by test trigger'); END",
    )
    .execute(&mut raw)
    .await
    .unwrap();

    let result = store
        .save_turn(&turn("s1", "t1", "hello", "boom", None))
        .await;
    assert!(result.is_err());
    assert!(store.session_messages("s1").await.unwrap().is_none());
    assert!(store.recent_messages("s1", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let writers = (0..50).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let session = format!("s{}", i % 5);
            store
                .save_turn(&turn(&session, &format!("t{i}"), "q", "a", None))
                .await
        })
    });
    for writer in futures_util::future::join_all(writers).await {
        writer.unwrap().unwrap();
    }
    for session in 0..5 {
        let messages = store
            .session_messages(&format!("s{session}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(messages.len(), 20);
        for pair in messages.chunks(2) {
            assert_eq!(pair[0].turn_id, pair[1].turn_id, "turns never interleave");
        }
    }
}

#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir).await;
        store
            .save_turn(&turn("s1", "t1", "q", "a", None))
            .await
            .unwrap();
    }
    let store = open(&dir).await;
    assert_eq!(
        store.session_messages("s1").await.unwrap().unwrap().len(),
        2
    );
}

#[tokio::test]
async fn in_memory_store_reads_its_writes() {
    let config = StoreConfig {
        url: "sqlite::memory:".to_owned(),
        max_connections: 4,
        busy_timeout_ms: 5000,
    };
    let store = SqliteStore::open(&config).await.unwrap();
    store
        .save_turn(&turn("s1", "t1", "q", "a", None))
        .await
        .unwrap();
    assert_eq!(
        store.session_messages("s1").await.unwrap().unwrap().len(),
        2
    );
    assert_eq!(store.recent_messages("s1", 10).await.unwrap().len(), 2);
}
