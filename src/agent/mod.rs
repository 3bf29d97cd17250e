//! One agent turn: load history, ask the model, save the turn.
//!
//! The session lock is held for the whole turn so a second message on the same session waits and
//! then sees the first turn's messages. The store is read before and written after the model call;
//! no transaction is open while the model is working.

mod locks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use locks::SessionLocks;

use crate::config::AgentConfig;
use crate::provider::wire::{ChatMessage, Role, Usage};
use crate::provider::{ProviderClient, ProviderError};
use crate::store::{HistoryStore, NewMessage, NewTurn, StoreError, StoredMessage};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("timed out after {} ms waiting for an earlier turn on this session", .0.as_millis())]
    SessionBusy(Duration),
}

/// A validated user message.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    pub session_id: String,
    pub user_id: String,
    pub text: String,
}

/// What a finished turn returns to the client.
#[derive(Debug, Clone, Serialize)]
pub struct TurnOutcome {
    pub session_id: String,
    pub turn_id: String,
    pub reply: String,
    pub provider: String,
    pub model: String,
    pub finish_reason: Option<String>,
    /// `None` when the provider reported no usage.
    pub usage: Option<Usage>,
    pub activity: TurnActivity,
}

/// What the agent did to produce the reply.
#[derive(Debug, Clone, Serialize)]
pub struct TurnActivity {
    /// How the reply was produced; `direct` means one model request without tools.
    pub mode: &'static str,
    pub provider_requests: u32,
    pub history_messages: usize,
    pub duration_ms: u64,
}

/// Runs turns against the configured providers and store.
pub struct Agent {
    store: Arc<dyn HistoryStore>,
    providers: HashMap<String, ProviderClient>,
    default_provider: String,
    config: AgentConfig,
    locks: SessionLocks,
}

impl Agent {
    pub fn new(
        store: Arc<dyn HistoryStore>,
        providers: HashMap<String, ProviderClient>,
        default_provider: String,
        config: AgentConfig,
    ) -> Self {
        assert!(
            providers.contains_key(&default_provider),
            "validated config names a provider"
        );
        Self {
            store,
            providers,
            default_provider,
            config,
            locks: SessionLocks::default(),
        }
    }

    /// Runs one turn. With `text_tx`, the reply streams there as the model writes it.
    pub async fn run_turn(
        &self,
        request: TurnRequest,
        text_tx: Option<&mpsc::UnboundedSender<String>>,
    ) -> Result<TurnOutcome, AgentError> {
        let started = Instant::now();
        let deadline = started + self.config.turn_timeout();
        let _session = tokio::time::timeout_at(deadline, self.locks.lock(&request.session_id))
            .await
            .map_err(|_| AgentError::SessionBusy(self.config.turn_timeout()))?;
        // Taken after the lock, so timestamps follow the order in which turns are stored.
        let started_ms = unix_millis();

        let history = self
            .store
            .recent_messages(&request.session_id, self.config.history_limit)
            .await?;
        let messages = self.prompt(&history, &request.text);
        let provider = &self.providers[&self.default_provider];
        let completion = match text_tx {
            Some(tx) => {
                provider
                    .complete_streaming(messages, Vec::new(), deadline, tx)
                    .await?
            }
            None => provider.complete(messages, Vec::new(), deadline).await?,
        };

        let turn_id = uuid::Uuid::now_v7().to_string();
        let model = completion
            .model
            .clone()
            .unwrap_or_else(|| provider.model().to_owned());
        let turn = NewTurn {
            session_id: request.session_id.clone(),
            user_id: request.user_id.clone(),
            turn_id: turn_id.clone(),
            messages: vec![
                NewMessage {
                    role: Role::User,
                    content: request.text,
                    created_at_ms: started_ms,
                    provider: None,
                    model: None,
                    finish_reason: None,
                    usage: None,
                },
                NewMessage {
                    role: Role::Assistant,
                    content: completion.content.clone(),
                    created_at_ms: unix_millis(),
                    provider: Some(provider.name().to_owned()),
                    model: Some(model.clone()),
                    finish_reason: completion.finish_reason.clone(),
                    usage: completion.usage,
                },
            ],
        };
        self.store.save_turn(&turn).await?;

        Ok(TurnOutcome {
            session_id: request.session_id,
            turn_id,
            reply: completion.content,
            provider: provider.name().to_owned(),
            model,
            finish_reason: completion.finish_reason,
            usage: completion.usage,
            activity: TurnActivity {
                mode: "direct",
                provider_requests: 1,
                history_messages: history.len(),
                duration_ms: started.elapsed().as_millis() as u64,
            },
        })
    }

    fn prompt(&self, history: &[StoredMessage], text: &str) -> Vec<ChatMessage> {
        let mut messages = Vec::with_capacity(history.len() + 2);
        if let Some(system) = &self.config.system_prompt {
            messages.push(ChatMessage::text(Role::System, system));
        }
        messages.extend(
            history
                .iter()
                .map(|m| ChatMessage::text(m.role, &m.content)),
        );
        messages.push(ChatMessage::text(Role::User, text));
        messages
    }

    /// Sessions with a turn running or waiting.
    pub fn active_sessions(&self) -> usize {
        self.locks.active()
    }
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
