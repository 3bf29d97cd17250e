//! xiaomaolv: an AI agent gateway.
//!
//! A client sends a message over HTTP; the gateway keeps the conversation and asks an
//! OpenAI-compatible model for the reply.
//!
//! Modules: [`config`] loads and validates settings, [`http`] serves the API, [`agent`] runs a
//! turn, [`provider`] talks to the model, [`store`] keeps history, [`telemetry`] sets up logs,
//! and [`cli`] ties them into the `xiaomaolv` command.

pub mod agent;
pub mod cli;
pub mod code_mode;
pub mod config;
pub mod http;
pub mod mcp;
pub mod provider;
pub mod store;
pub mod telemetry;
