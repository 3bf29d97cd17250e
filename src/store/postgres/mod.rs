//! PostgreSQL history store, for several gateway replicas that share one history.
//!
//! It runs on an sqlx connection pool of `store.max_connections` connections. The schema is the
//! SQLite store's, with PostgreSQL types, in migrations embedded from `migrations/postgres/`.
//! A save is one transaction that takes an advisory lock on the session ([`writer`]), so saves
//! of one session from different replicas append their rows one after the other, while saves of
//! different sessions run in parallel. Reads return only committed turns.

mod connect;
mod fault;
mod reader;
mod writer;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::PgPool;

use super::write_health::WriteHealth;
use super::{
    HistoryStore, MessagePage, NewTurn, PageRequest, StoreError, StoredMessage, WriteFailure,
};
use crate::config::StoreConfig;

/// PostgreSQL history on a connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Host and port, database and user, for errors. It never contains the password.
    server: Arc<str>,
    timeout_ms: u64,
    /// The outcome of the most recent save's commit.
    health: Arc<WriteHealth>,
}

impl PostgresStore {
    /// Connects, applies pending migrations and returns the store.
    ///
    /// `store.busy_timeout_ms` bounds the first connection, every wait for a pooled connection
    /// and every wait for a session's lock.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let (pool, server) = connect::open(config).await?;
        Ok(Self {
            pool,
            server: server.into(),
            timeout_ms: connect::millis(config.busy_timeout()),
            health: Arc::new(WriteHealth::new("postgresql")),
        })
    }

    /// Names the server in the error of a pool that ran out of time. By then the pool has
    /// retried a refused connection until the timeout, so the timeout is all it reports.
    fn name_server<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::Postgres(sqlx::Error::PoolTimedOut)) => Err(StoreError::PoolTimedOut {
                server: self.server.to_string(),
                timeout_ms: self.timeout_ms,
            }),
            other => other,
        }
    }
}

#[async_trait]
impl HistoryStore for PostgresStore {
    async fn recent_messages(
        &self,
        session_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.name_server(reader::recent_messages(&self.pool, session_id, limit).await)
    }

    async fn message_page(
        &self,
        session_id: &str,
        request: PageRequest,
    ) -> Result<Option<MessagePage>, StoreError> {
        self.name_server(reader::message_page(&self.pool, session_id, request).await)
    }

    async fn save_turn(&self, turn: &NewTurn) -> Result<(), StoreError> {
        let result = self.name_server(writer::save_turn(&self.pool, turn).await);
        match &result {
            Ok(()) => self.health.succeeded(),
            Err(err) => {
                if let Some(fault) = fault::write_fault(err) {
                    self.health.failed(fault);
                }
            }
        }
        result
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.name_server(reader::ping(&self.pool).await)
    }

    fn write_failure(&self) -> Option<WriteFailure> {
        self.health.failure()
    }

    /// Closes every pooled connection and waits until they are closed.
    async fn close(&self) {
        self.pool.close().await;
    }
}
