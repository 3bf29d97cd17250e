//! OpenAI-compatible chat-completions client.
//!
//! One [`ProviderClient`] per `[providers.NAME]` table. It speaks the wire format of
//! `POST /chat/completions`, streaming or not, retries what may succeed on a second try, and turns
//! every failure into a [`ProviderError`] that the HTTP layer maps to 502, 503 or 504.

mod client;
mod completion;
mod error;
mod redact;
mod retry;
pub mod sse;
pub mod wire;

pub use client::ProviderClient;
pub use completion::{Completion, CompletionBuilder};
pub use error::ProviderError;
pub use retry::{RetryPolicy, parse_retry_after};
