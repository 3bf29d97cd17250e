//! A SQLite database written by an earlier release: opening it migrates the tables to the compact
//! schema and keeps every row, id and link between them.

use std::path::Path;

use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor, SqliteConnection};
use xiaomaolv::config::StoreConfig;
use xiaomaolv::store::{HistoryStore, SqliteStore};

use crate::store::{all_messages, turn};

/// Version of the migration that rebuilds the tables.
const COMPACT_ROWS: i64 = 4;

/// Creates a database at `path` with the migrations before [`COMPACT_ROWS`], as an earlier
/// release left it.
async fn create_earlier_database(path: &Path) -> SqliteConnection {
    let earlier = tempfile::tempdir().unwrap();
    let embedded = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for entry in std::fs::read_dir(embedded).unwrap() {
        let entry = entry.unwrap().path();
        let name = entry.file_name().unwrap().to_str().unwrap().to_owned();
        let version: i64 = name.split('_').next().unwrap().parse().unwrap();
        if version < COMPACT_ROWS {
            std::fs::copy(&entry, earlier.path().join(name)).unwrap();
        }
    }
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut connection = SqliteConnection::connect(&url).await.unwrap();
    Migrator::new(earlier.path())
        .await
        .unwrap()
        .run(&mut connection)
        .await
        .unwrap();
    connection
}

/// Two sessions, the first with a turn that has a tool call and a code-mode record. Message ids 1 and
/// 2 are in `s1`, 3 and 4 in `s2`.
const EARLIER_ROWS: &str = "
    INSERT INTO sessions VALUES ('s1', 10, 20), ('s2', 30, 40);
    INSERT INTO messages (session_id, turn_id, role, content, user_id, created_at_ms, provider,
            model, finish_reason, prompt_tokens, completion_tokens, total_tokens)
        VALUES ('s1', 't1', 'user', 'what is 2+2', 'u1', 11, NULL, NULL, NULL, NULL, NULL, NULL),
               ('s1', 't1', 'assistant', 'four', 'u1', 12, 'local', 'm', 'stop', 7, 1, 8),
               ('s2', 't2', 'user', 'hello', 'u2', 31, NULL, NULL, NULL, NULL, NULL, NULL),
               ('s2', 't2', 'assistant', 'hi', 'u2', 32, 'local', 'm', NULL, NULL, NULL, NULL);
    INSERT INTO tool_calls (session_id, turn_id, seq, name, server, tool, arguments, status, error,
            duration_ms, truncated, origin)
        VALUES ('s1', 't1', 0, 'calc__add', 'calc', 'add', '{\"a\":2,\"b\":2}', 'ok', NULL, 3, 0,
            'code_mode');
    INSERT INTO code_mode_attempts (session_id, turn_id, record)
        VALUES ('s1', 't1', '{\"outcome\":\"ok\"}');
";

fn config(path: &Path) -> StoreConfig {
    StoreConfig {
        url: format!("sqlite://{}", path.display()),
        max_connections: 2,
        busy_timeout_ms: 5000,
    }
}

async fn open_store(path: &Path) -> SqliteStore {
    SqliteStore::open(&config(path)).await.unwrap()
}

/// Runs `query`, which returns one integer.
async fn number(connection: &mut SqliteConnection, query: &str) -> i64 {
    sqlx::query_scalar(query)
        .fetch_one(connection)
        .await
        .unwrap()
}

async fn schema_of(connection: &mut SqliteConnection, table: &str) -> String {
    sqlx::query_scalar("SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1")
        .bind(table)
        .fetch_one(connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn earlier_database_keeps_rows_ids_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let mut earlier = create_earlier_database(&path).await;
    earlier.execute(EARLIER_ROWS).await.unwrap();
    earlier.close().await.unwrap();

    let store = open_store(&path).await;

    let s1 = all_messages(&store, "s1").await.unwrap();
    let ids: Vec<i64> = s1.iter().map(|m| m.id).collect();
    assert_eq!(ids, [1, 2]);
    assert_eq!(s1[0].content, "what is 2+2");
    let reply = &s1[1];
    assert_eq!(
        (reply.content.as_str(), reply.finish_reason.as_deref()),
        ("four", Some("stop"))
    );
    assert_eq!(reply.usage.map(|u| u.total_tokens), Some(8));
    assert_eq!(reply.tool_calls.len(), 1, "{reply:?}");
    assert_eq!(reply.tool_calls[0].arguments["a"], 2);
    assert_eq!(
        reply.code_mode,
        Some(serde_json::json!({"outcome": "ok"})),
        "the code-mode record stays with its turn"
    );
    let s2 = all_messages(&store, "s2").await.unwrap();
    assert_eq!(s2.iter().map(|m| m.id).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(s2[1].usage, None, "unknown usage stays unknown");

    // New messages get ids after the copied ones, so paging cursors keep their order.
    store
        .save_turn(&turn("s1", "t3", "and 3+3", "six", None))
        .await
        .unwrap();
    let s1 = all_messages(&store, "s1").await.unwrap();
    assert_eq!(s1.iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2, 5, 6]);

    let url = format!("sqlite://{}", path.display());
    let mut check = SqliteConnection::connect(&url).await.unwrap();
    assert!(
        schema_of(&mut check, "sessions")
            .await
            .ends_with("WITHOUT ROWID")
    );
    for table in ["messages", "tool_calls", "code_mode_attempts"] {
        let schema = schema_of(&mut check, table).await;
        assert!(!schema.contains("AUTOINCREMENT"), "{schema}");
        assert!(
            schema.contains("REFERENCES \"sessions\"") || schema.contains("REFERENCES sessions"),
            "{table} still refers to sessions: {schema}"
        );
    }
    let broken: Vec<(String,)> = sqlx::query_as("PRAGMA foreign_key_check")
        .fetch_all(&mut check)
        .await
        .unwrap();
    assert!(broken.is_empty(), "{broken:?}");
    check.execute("PRAGMA foreign_keys = ON").await.unwrap();
    let rejected_rows = [
        (
            "INSERT INTO messages (session_id, turn_id, role, content, user_id, created_at_ms) \
             VALUES ('missing', 't9', 'user', 'x', 'u1', 1)",
            "FOREIGN KEY",
        ),
        (
            "INSERT INTO messages (session_id, turn_id, role, content, user_id, created_at_ms) \
             VALUES ('s1', 't9', 'robot', 'x', 'u1', 1)",
            "CHECK",
        ),
        (
            "INSERT INTO tool_calls (session_id, turn_id, seq, name, arguments, status, \
             duration_ms, truncated) VALUES ('s1', 't9', 0, 'f', '{}', 'lost', 1, 0)",
            "CHECK",
        ),
    ];
    for (insert, constraint) in rejected_rows {
        let error = check.execute(insert).await.expect_err(insert);
        assert!(error.to_string().contains(constraint), "{insert}: {error}");
    }
}

#[tokio::test]
async fn failed_migration_names_file_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let mut earlier = create_earlier_database(&path).await;
    earlier.execute(EARLIER_ROWS).await.unwrap();
    // A view added by hand names `messages`, which the rebuild drops and renames.
    earlier
        .execute("CREATE VIEW daily_usage AS SELECT session_id, count(*) FROM messages GROUP BY 1")
        .await
        .unwrap();
    earlier.close().await.unwrap();

    let error = SqliteStore::open(&config(&path)).await.err().unwrap();
    let message = error.to_string();

    assert!(
        message.contains("cannot migrate the SQLite store"),
        "{message}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("daily_usage"), "{message}");
    assert!(message.contains("added by hand"), "{message}");
    let url = format!("sqlite://{}", path.display());
    let mut check = SqliteConnection::connect(&url).await.unwrap();
    let latest = number(&mut check, "SELECT max(version) FROM _sqlx_migrations").await;
    assert_eq!(
        latest,
        COMPACT_ROWS - 1,
        "the failed migration left no record"
    );
    let messages = number(&mut check, "SELECT count(*) FROM messages").await;
    assert_eq!(messages, 4, "the old tables are intact");
    let schema = schema_of(&mut check, "messages").await;
    assert!(schema.contains("AUTOINCREMENT"), "{schema}");
}
