//! PostgreSQL history store, for several gateway replicas that share one history.
//!
//! It runs on an sqlx connection pool of `store.max_connections` connections. The schema is the
//! SQLite store's, with PostgreSQL types, in migrations embedded from `migrations/postgres/`.
//! A save is one transaction that takes an advisory lock on the session ([`writer`]), so saves
//! of one session from different replicas append their rows one after the other, while saves of
//! different sessions run in parallel. Reads return only committed turns.

mod connect;
mod reader;
mod writer;

use async_trait::async_trait;
use sqlx::postgres::PgPool;

use super::{HistoryStore, NewTurn, StoreError, StoredMessage};
use crate::config::StoreConfig;

/// PostgreSQL history on a connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects, applies pending migrations and returns the store.
    ///
    /// `store.busy_timeout_ms` bounds the first connection, every wait for a pooled connection
    /// and every wait for a session's lock.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        let pool = connect::open(config).await?;
        Ok(Self { pool })
    }

    /// Closes every pooled connection and waits until they are closed.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl HistoryStore for PostgresStore {
    async fn recent_messages(
        &self,
        session_id: &str,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        reader::recent_messages(&self.pool, session_id, limit).await
    }

    async fn session_messages(
        &self,
        session_id: &str,
    ) -> Result<Option<Vec<StoredMessage>>, StoreError> {
        reader::session_messages(&self.pool, session_id).await
    }

    async fn save_turn(&self, turn: &NewTurn) -> Result<(), StoreError> {
        writer::save_turn(&self.pool, turn).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        reader::ping(&self.pool).await
    }
}
