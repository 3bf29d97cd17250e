//! The hop from a client to the model with the gateway's HTTP crates and none of its logic, for
//! `bench/floor.sh`. Measured next to the gateway, it shows how much of the added latency the
//! machine and the crates cost by themselves.
//!
//! ```text
//! bench_floor ADDR MODEL_URL [SQLITE_FILE]
//! ```
//!
//! It handles `POST /v1/messages` (`{"session_id","user_id","text"}`) by sending one chat
//! completion to MODEL_URL and returning `{"session_id","reply"}`. With SQLITE_FILE it also reads
//! the session's last 20 messages before the call and writes both messages in one transaction
//! after it, on the runtime thread, with the gateway's journal settings. It never checkpoints, so
//! its log only grows: a lower bound for a store that must also copy the log into the database.

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use rusqlite::{Connection, params};
use serde::Deserialize;
use serde_json::{Value, json};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, updated_at_ms INTEGER NOT NULL)
        WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS messages (
        id INTEGER PRIMARY KEY, session_id TEXT NOT NULL, role TEXT NOT NULL,
        content TEXT NOT NULL, user_id TEXT NOT NULL, created_at_ms INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS messages_by_session ON messages (session_id, id);";

#[derive(Deserialize)]
struct Message {
    session_id: String,
    user_id: String,
    text: String,
}

/// A read connection and a write connection to one file, both used on the runtime thread.
struct History {
    read: Mutex<Connection>,
    write: Mutex<Connection>,
}

struct Floor {
    client: reqwest::Client,
    model_url: reqwest::Url,
    history: Option<History>,
}

type Failure = (StatusCode, String);

fn bad_gateway(err: impl std::fmt::Display) -> Failure {
    (StatusCode::BAD_GATEWAY, err.to_string())
}

async fn message(
    State(floor): State<Arc<Floor>>,
    Json(message): Json<Message>,
) -> Result<Json<Value>, Failure> {
    let mut messages = match &floor.history {
        Some(history) => recent(history, &message.session_id).map_err(bad_gateway)?,
        None => Vec::new(),
    };
    messages.push(json!({"role": "user", "content": message.text}));
    let completion: Value = floor
        .client
        .post(floor.model_url.clone())
        .json(&json!({"model": "fake", "messages": messages}))
        .send()
        .await
        .map_err(bad_gateway)?
        .json()
        .await
        .map_err(bad_gateway)?;
    let reply = completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    if let Some(history) = &floor.history {
        save(history, &message, &reply).map_err(bad_gateway)?;
    }
    Ok(Json(
        json!({"session_id": message.session_id, "reply": reply}),
    ))
}

fn recent(history: &History, session_id: &str) -> rusqlite::Result<Vec<Value>> {
    let connection = history.read.lock().unwrap_or_else(PoisonError::into_inner);
    let mut select = connection.prepare_cached(
        "SELECT role, content FROM messages WHERE session_id = ?1 ORDER BY id DESC LIMIT 20",
    )?;
    let rows = select.query_map([session_id], |row| {
        Ok(json!({"role": row.get::<_, String>(0)?, "content": row.get::<_, String>(1)?}))
    })?;
    let mut messages = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    messages.reverse();
    Ok(messages)
}

fn save(history: &History, message: &Message, reply: &str) -> rusqlite::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64);
    let mut connection = history.write.lock().unwrap_or_else(PoisonError::into_inner);
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    transaction
        .prepare_cached(
            "INSERT INTO sessions (id, updated_at_ms) VALUES (?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET updated_at_ms = excluded.updated_at_ms",
        )?
        .execute(params![message.session_id, now])?;
    let mut insert = transaction.prepare_cached(
        "INSERT INTO messages (session_id, role, content, user_id, created_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    insert.execute(params![
        message.session_id,
        "user",
        message.text,
        message.user_id,
        now
    ])?;
    insert.execute(params![
        message.session_id,
        "assistant",
        reply,
        message.user_id,
        now
    ])?;
    drop(insert);
    transaction.commit()
}

fn open_history(path: &str) -> rusqlite::Result<History> {
    let write = Connection::open(path)?;
    write.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    write.pragma_update(None, "synchronous", "NORMAL")?;
    write.pragma_update(None, "wal_autocheckpoint", 0)?;
    write.execute_batch(SCHEMA)?;
    let read = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(History {
        read: Mutex::new(read),
        write: Mutex::new(write),
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_floor ADDR MODEL_URL [SQLITE_FILE]";
    let addr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let model_url = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let history = args.next().map(|path| open_history(&path)).transpose()?;
    let floor = Arc::new(Floor {
        client: reqwest::Client::builder().tcp_nodelay(true).build()?,
        model_url: model_url.parse()?,
        history,
    });
    // One runtime thread, as the gateway picks on a machine of two CPUs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Router::new()
            .route("/v1/messages", post(message))
            .with_state(floor);
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}
