//! What only the PostgreSQL store has: replicas sharing one database, connection failures and
//! the password in them, and the gateway end to end on PostgreSQL. The tests shared with SQLite
//! are in `store.rs`.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Connection as _;

use xiaomaolv::agent::{ToolCallOrigin, ToolCallRecord, ToolCallStatus};
use xiaomaolv::config::StoreConfig;
use xiaomaolv::store::{self, HistoryStore, PostgresStore};

use crate::common::postgres::{self as pg, PASSWORD, fresh_database};
use crate::common::process::GatewayProcess;
use crate::common::{FakeOpenAi, Options, Reply, TestGateway, binary, message, now_ms};
use crate::store::{Backend, all_messages, turn};

fn config(url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_owned(),
        max_connections: 4,
        busy_timeout_ms: 5000,
    }
}

/// Returns a URL with a password on a loopback port where nothing listens, and the port.
fn unreachable_url() -> (String, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:{port}/history");
    (url, port)
}

#[tokio::test]
async fn replicas_never_interleave_turns() {
    let url = fresh_database().await;
    // Two stores with their own pools stand for two gateway replicas. Every save targets the same
    // session at once, which the in-process session lock would prevent within one replica.
    let replicas: Vec<Arc<PostgresStore>> = vec![
        Arc::new(PostgresStore::open(&config(&url)).await.unwrap()),
        Arc::new(PostgresStore::open(&config(&url)).await.unwrap()),
    ];
    let saves = (0..80).map(|i| {
        let store = Arc::clone(&replicas[i % 2]);
        tokio::spawn(async move {
            let turn = turn("shared", &format!("t{i}"), "q", "a", None);
            store.save_turn(&turn).await
        })
    });
    for save in futures_util::future::join_all(saves).await {
        save.unwrap().unwrap();
    }

    let messages = all_messages(&*replicas[0], "shared").await.unwrap();
    assert_eq!(messages.len(), 160);
    for pair in messages.chunks(2) {
        assert_eq!(pair[0].turn_id, pair[1].turn_id, "turns never interleave");
        assert_eq!(pair[0].content, "q");
        assert_eq!(pair[1].content, "a");
    }
}

/// The first key of the store's session locks, `SESSION_LOCK_CLASS` in the PostgreSQL writer.
const SESSION_LOCK_CLASS: i32 = 0x786d_6c76;

#[tokio::test]
async fn locked_session_save_waits_then_fails() {
    let url = fresh_database().await;
    let config = StoreConfig {
        busy_timeout_ms: 300,
        ..config(&url)
    };
    let store = store::open(&config).await.unwrap();
    // Another replica holds the lock of session s1 while it saves a turn.
    let mut other = pg::cluster().connect(pg::database_of(&url)).await;
    sqlx::query("SELECT pg_advisory_lock($1, hashtext($2))")
        .bind(SESSION_LOCK_CLASS)
        .bind("s1")
        .execute(&mut other)
        .await
        .unwrap();

    let locked = store.save_turn(&turn("s1", "t1", "q", "a", None)).await;
    let error = locked.unwrap_err().to_string();
    assert!(error.contains("lock timeout"), "{error}");
    assert!(all_messages(&*store, "s1").await.is_none());
    let free = store.save_turn(&turn("s2", "t2", "q", "a", None)).await;
    assert!(free.is_ok(), "another session does not wait: {free:?}");

    sqlx::query("SELECT pg_advisory_unlock($1, hashtext($2))")
        .bind(SESSION_LOCK_CLASS)
        .bind("s1")
        .execute(&mut other)
        .await
        .unwrap();
    let unlocked = store.save_turn(&turn("s1", "t1", "q", "a", None)).await;
    assert!(unlocked.is_ok(), "{unlocked:?}");
}

#[tokio::test]
async fn close_ends_every_server_session() {
    let url = fresh_database().await;
    let database = pg::database_of(&url).to_owned();
    let store = store::open(&config(&url)).await.unwrap();
    store
        .save_turn(&turn("s1", "t1", "q", "a", None))
        .await
        .unwrap();
    let sessions = pg::session_encryption(&database).await;
    assert!(!sessions.is_empty(), "the pool keeps a connection");

    store.close().await;

    // A backend leaves pg_stat_activity shortly after the client's goodbye, not at once. The
    // store itself stays alive, so without the close its connections would stay.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pg::session_encryption(&database).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the server still lists the store's sessions"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn closed_pool_data_reads_back() {
    let url = fresh_database().await;
    let first = PostgresStore::open(&config(&url)).await.unwrap();
    first
        .save_turn(&turn("s1", "t1", "q", "a", None))
        .await
        .unwrap();
    first.close().await;
    let closed = first.recent_messages("s1", 10).await;
    assert!(closed.is_err(), "a closed pool serves no reads");

    let second = PostgresStore::open(&config(&url)).await.unwrap();
    let messages = all_messages(&second, "s1").await.unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[1].content, "a");
}

#[tokio::test]
async fn down_database_error_names_host_not_password() {
    let (url, port) = unreachable_url();
    let error = store::open(&config(&url)).await.err().unwrap();
    let message = error.to_string();
    let debug = format!("{error:?}");

    assert!(
        message.contains("cannot connect to PostgreSQL"),
        "{message}"
    );
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("refused"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
    assert!(!debug.contains(PASSWORD), "{debug}");
}

#[tokio::test]
async fn silent_server_times_out_with_host() {
    // It accepts connections and never sends a byte, like a server behind a dropped route.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            connections.push(socket);
        }
    });
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:{port}/history");
    let config = StoreConfig {
        busy_timeout_ms: 300,
        ..config(&url)
    };

    let message = store::open(&config).await.err().unwrap().to_string();
    holder.abort();
    assert!(message.contains("no answer within 300 ms"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
}

/// A loopback TCP proxy to the test cluster, which can go away like a database server that stops.
struct Proxy {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                links.spawn(async move {
                    let upstream = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port));
                    if let Ok(mut server) = upstream.await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, task }
    }

    /// Closes the listening socket and every connection through the proxy.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[tokio::test]
async fn database_lost_after_start_names_host() {
    let url = fresh_database().await;
    let cluster_port = pg::cluster().port;
    let proxy = Proxy::start(cluster_port).await;
    let proxy_port = proxy.port;
    let proxied = url.replace(&format!(":{cluster_port}/"), &format!(":{proxy_port}/"));
    let config = StoreConfig {
        busy_timeout_ms: 500,
        ..config(&proxied)
    };
    let store = store::open(&config).await.unwrap();
    store
        .save_turn(&turn("s1", "t1", "q", "a", None))
        .await
        .unwrap();

    proxy.stop().await;
    let message = store
        .recent_messages("s1", 10)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{proxy_port}")),
        "{message}"
    );
    assert!(message.contains("within 500 ms"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
}

#[tokio::test]
async fn wrong_password_error_hides_it() {
    let url = fresh_database().await.replace(PASSWORD, "wrong-pw-71d2");
    let message = store::open(&config(&url)).await.err().unwrap().to_string();
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains("wrong-pw-71d2"), "{message}");
}

#[tokio::test]
async fn nul_character_turn_stores_nothing() {
    let url = fresh_database().await;
    let store = store::open(&config(&url)).await.unwrap();
    // PostgreSQL text cannot hold U+0000. The session row and the user message are written
    // before the reply fails, and the rollback must remove them.
    let result = store
        .save_turn(&turn("s1", "t1", "fine", "bad\0reply", None))
        .await;
    assert!(result.is_err());
    assert!(all_messages(&*store, "s1").await.is_none());
}

#[tokio::test]
async fn tool_record_nul_becomes_replacement() {
    let url = fresh_database().await;
    let store = store::open(&config(&url)).await.unwrap();
    let mut new_turn = turn("s1", "t1", "run it", "done", None);
    new_turn.tool_calls = vec![ToolCallRecord {
        name: "re\0ad".to_owned(),
        server: Some("files".to_owned()),
        tool: Some("read".to_owned()),
        arguments: serde_json::json!({"path": "a\0b", "k\0": ["\0"]}),
        status: ToolCallStatus::Failed,
        error: Some("bad\0byte".to_owned()),
        duration_ms: 3,
        truncated: false,
        origin: ToolCallOrigin::CodeMode,
    }];
    new_turn.code_mode = Some(serde_json::json!({"console": "x\0y"}));
    store.save_turn(&new_turn).await.unwrap();

    let messages = all_messages(&*store, "s1").await.unwrap();
    let call = &messages[1].tool_calls[0];
    assert_eq!(call.name, "re\u{FFFD}ad");
    assert_eq!(
        call.arguments,
        serde_json::json!({"path": "a\u{FFFD}b", "k\u{FFFD}": ["\u{FFFD}"]})
    );
    assert_eq!(call.error.as_deref(), Some("bad\u{FFFD}byte"));
    assert_eq!(
        messages[1].code_mode,
        Some(serde_json::json!({"console": "x\u{FFFD}y"}))
    );
}

#[tokio::test]
async fn gateway_stores_turns_in_postgres() {
    let url = fresh_database().await;
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("first answer"));
    fake.push(Reply::text("second answer"));
    let options = Options {
        store_url: Some(url.clone()),
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;

    let (status, body) = gateway.send(message("s1", "first question")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gateway.send(message("s1", "second question")).await;
    assert_eq!(status, 200, "{body}");

    let history = gateway.history("s1").await.unwrap();
    let contents: Vec<&str> = history
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        [
            "first question",
            "first answer",
            "second question",
            "second answer"
        ]
    );
    assert_eq!(history[1]["role"], "assistant");
    assert_eq!(history[1]["usage"]["total_tokens"], 5);
    assert_eq!(history[0]["turn_id"], history[1]["turn_id"]);
    let sent = &fake.requests()[1].body["messages"];
    assert_eq!(
        sent[1]["content"], "first answer",
        "history went to the model"
    );
    assert!(gateway.history("unknown").await.is_none());

    // Another store on the same database reads the gateway's turns, as another replica would.
    let other = store::open(&config(&url)).await.unwrap();
    assert_eq!(other.recent_messages("s1", 10).await.unwrap().len(), 4);
}

#[tokio::test]
async fn model_reply_nul_becomes_replacement() {
    let url = fresh_database().await;
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("before\u{0}after"));
    let options = Options {
        store_url: Some(url),
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;

    let (status, body) = gateway.send(message("s1", "question")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["reply"], "before\u{FFFD}after");
    let history = gateway.history("s1").await.unwrap();
    assert_eq!(history[1]["content"], "before\u{FFFD}after");
}

/// Runs a turn whose reply the store rejects and returns the response and the stored history.
async fn failed_save_over_http(backend: &Backend) -> (u16, serde_json::Value, bool) {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("boom"));
    let options = Options {
        store_url: Some(backend.url()),
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    backend.reject_boom().await;
    let (status, body) = gateway.send(message("s1", "hello")).await;
    let stored = gateway.history("s1").await.is_some();
    (status, body, stored)
}

#[tokio::test]
async fn failed_save_is_same_http_error() {
    let postgres = failed_save_over_http(&Backend::postgres().await).await;
    let sqlite = failed_save_over_http(&Backend::sqlite()).await;

    let (status, body, stored) = &postgres;
    assert_eq!(*status, 500, "{body}");
    assert_eq!(body["error"]["type"], "store_error");
    assert!(!stored, "the failed turn left its session behind");
    assert_eq!(postgres.0, sqlite.0, "status");
    assert_eq!(postgres.1, sqlite.1, "error body");
    assert_eq!(postgres.2, sqlite.2, "stored");
}

#[tokio::test]
async fn lost_database_fails_health_and_turns() {
    let url = fresh_database().await;
    let database = pg::database_of(&url).to_owned();
    let fake = FakeOpenAi::start().await;
    let options = Options {
        store_url: Some(url),
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    let health = gateway.client.get(gateway.url("/health"));
    assert_eq!(health.send().await.unwrap().status(), 200);

    // The database stops taking connections and drops the gateway's open ones.
    let mut admin = pg::cluster().connect("postgres").await;
    sqlx::raw_sql(&format!(
        "ALTER DATABASE {database} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}';"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    wait_for_no_sessions(&mut admin, &database).await;

    let health = gateway.client.get(gateway.url("/health"));
    assert_eq!(health.send().await.unwrap().status(), 503);
    let (status, body) = gateway.send(message("s1", "hello")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "store_unavailable");
    assert!(!body.to_string().contains(PASSWORD), "{body}");
}

/// Runs `sql` on `database` as the superuser.
async fn run_as_superuser(database: &str, sql: &str) {
    let mut admin = pg::cluster().connect(database).await;
    sqlx::raw_sql(sql)
        .execute(&mut admin)
        .await
        .unwrap_or_else(|err| panic!("`{sql}` failed: {err}"));
}

#[tokio::test]
async fn denied_migration_names_server_and_fix() {
    let owned = pg::fresh_database_owned_by_role().await;
    let schema = format!(
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}; \
         ALTER SCHEMA public OWNER TO postgres",
        role = owned.role
    );
    run_as_superuser(&owned.database, &schema).await;

    let message = store::open(&config(&owned.url))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("cannot migrate the PostgreSQL store at 127.0.0.1:"),
        "{message}"
    );
    assert!(message.contains("permission denied"), "{message}");
    assert!(message.contains("CREATE on its schema"), "{message}");
    assert!(!message.contains(PASSWORD), "{message}");
}

#[tokio::test]
async fn revoked_insert_fails_health_until_granted() {
    let owned = pg::fresh_database_owned_by_role().await;
    let fake = FakeOpenAi::start().await;
    let options = Options {
        store_url: Some(owned.url.clone()),
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    let (status, body) = gateway.send(message("s1", "hello")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(gateway.health().await.0, 200);

    let revoke = format!("REVOKE INSERT ON messages FROM {}", owned.role);
    run_as_superuser(&owned.database, &revoke).await;
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
    assert_eq!(error["store"], "postgresql", "{body}");
    assert_eq!(error["kind"], "permission_denied", "{body}");
    assert_eq!(error["code"], "42501", "{body}");
    assert_eq!(error["failed_commits"], 1, "{body}");
    let first_failed = error["first_failed_at_ms"].as_i64().unwrap();
    assert!(first_failed >= before_failure, "{body}");
    assert!(first_failed <= now_ms(), "{body}");
    let last_success = error["last_success_at_ms"].as_i64().unwrap();
    assert!(last_success <= first_failed, "{body}");
    let text = error["message"].as_str().unwrap();
    assert!(text.contains("PostgreSQL history store failed"), "{text}");
    assert!(
        text.contains("grant the user of store.url INSERT"),
        "{text}"
    );
    assert!(!body.to_string().contains(PASSWORD), "{body}");
    assert!(!body.to_string().contains("INSERT INTO"), "{body}");

    let grant = format!("GRANT INSERT ON messages TO {}", owned.role);
    run_as_superuser(&owned.database, &grant).await;
    let (status, body) = gateway.send(message("s1", "third")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gateway.health().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::json!({ "status": "ok" }));
}

#[tokio::test]
async fn rejected_turn_is_not_write_failure() {
    let url = fresh_database().await;
    let store = PostgresStore::open(&config(&url)).await.unwrap();
    pg::reject_boom(&url).await;

    let rejected = turn("s1", "t1", "q", "boom", None);
    store.save_turn(&rejected).await.unwrap_err();
    assert_eq!(store.write_failure(), None, "a trigger rejected one turn");

    // NUL is valid in Rust strings and rejected by PostgreSQL's text type.
    let with_nul = turn("s2", "t2", "q", "a\0b", None);
    store.save_turn(&with_nul).await.unwrap_err();
    assert_eq!(store.write_failure(), None, "one turn held a NUL character");
}

/// Waits until the server has ended every session on `database`, because
/// `pg_terminate_backend` only signals them.
async fn wait_for_no_sessions(admin: &mut sqlx::PgConnection, database: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (sessions,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(database)
                .fetch_one(&mut *admin)
                .await
                .unwrap();
        if sessions == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{sessions} sessions still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a config file for the binary with `store_url`, and returns its path.
fn write_config(dir: &tempfile::TempDir, store_url: &str) -> String {
    let text = format!(
        r#"[app]
bind = "127.0.0.1:0"
default_provider = "fake"

[store]
url = "{store_url}"

[providers.fake]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"
model = "fake-model"
"#
    );
    let path = dir.path().join("xiaomaolv.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn serve_with_down_database_exits_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (url, port) = unreachable_url();
    let path = write_config(&dir, &url);
    let mut child = Command::new(binary())
        .args(["serve", "--log-format", "json", "--config", &path])
        .current_dir(dir.path())
        .env_clear()
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A safety net only: a refused connection fails at once.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();

    assert_eq!(output.status.code(), Some(1), "{stderr}");
    // With JSON logs the error that stops serve is a JSON line too.
    let last: serde_json::Value =
        serde_json::from_str(stderr.lines().last().unwrap_or_default()).expect(&stderr);
    assert_eq!(last["level"], "ERROR", "{stderr}");
    let error = last["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("cannot connect to PostgreSQL at"),
        "{stderr}"
    );
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        stderr.contains("app:********@"),
        "the start log masks it: {stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "{stderr}");
    assert!(!stdout.contains(PASSWORD), "{stdout}");
}

#[test]
fn check_config_masks_postgres_password() {
    let dir = tempfile::tempdir().unwrap();
    let (url, port) = unreachable_url();
    let path = write_config(&dir, &url);
    let output = Command::new(binary())
        .args(["check-config", &path])
        .env_clear()
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();

    assert!(output.status.success(), "{stderr}");
    let expected = format!("url = \"postgres://app:********@127.0.0.1:{port}/history\"");
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(!stdout.contains(PASSWORD), "{stdout}");
    assert!(!stderr.contains(PASSWORD), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_waits_for_lock_with_warning() {
    let url = fresh_database().await;
    drop(store::open(&config(&url)).await.unwrap());
    // Another session locks the migration table, as a replica that migrates would.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .execute(&mut other)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &url);
    std::fs::write(
        &path,
        std::fs::read_to_string(&path)
            .unwrap()
            .replace("[store]\n", "[store]\nbusy_timeout_ms = 300\n"),
    )
    .unwrap();
    let mut gateway = tokio::task::spawn_blocking(move || {
        let mut gateway = GatewayProcess::spawn(dir.path(), &["--config", &path], &[]);
        let warning = gateway.wait_for_log("Waiting for a lock", Duration::from_secs(20));
        (gateway, warning, dir)
    })
    .await
    .unwrap();
    assert!(gateway.1["waited_ms"].as_u64().is_some(), "{}", gateway.1);

    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();

    let gateway = tokio::task::spawn_blocking(move || {
        gateway.0.wait_until_listening(Duration::from_secs(20));
        gateway.0
    })
    .await
    .unwrap();
    let health = reqwest::get(gateway.url("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(!gateway.log.join("\n").contains(PASSWORD));
}
