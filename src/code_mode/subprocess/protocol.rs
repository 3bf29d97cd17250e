//! The JSON-lines protocol between the gateway and an engine process.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::code_mode::sandbox::{EngineLimits, ProgramFailure, ProgramRun};

/// The first line the gateway sends: the program and the limits to run it under.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct EngineRequest {
    pub(super) code: String,
    pub(super) bindings: Vec<(String, String)>,
    pub(super) limits: WireLimits,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct WireLimits {
    pub(super) memory_limit_bytes: usize,
    pub(super) max_stack_bytes: usize,
    pub(super) max_console_chars: usize,
    pub(super) max_runtime: Duration,
}

/// A line the child writes to stdout.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum ChildMessage {
    /// A tool call of the program; `arguments` is JSON text.
    Call {
        id: u64,
        index: usize,
        arguments: String,
    },
    /// The finished run; the last line the child writes.
    Done(WireRun),
}

/// The gateway's reply to one call: the JSON envelope that the sandbox's call sink returns.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Reply {
    pub(super) id: u64,
    pub(super) envelope: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct WireRun {
    pub(super) result: Result<Value, WireFailure>,
    pub(super) console: String,
    pub(super) console_truncated: bool,
    pub(super) elapsed_ms: u64,
}

/// [`ProgramFailure`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub(super) enum WireFailure {
    Syntax(String),
    Thrown(String),
    NotJson(String),
    Timeout,
    OutOfMemory,
    StackOverflow,
    Engine(String),
}

impl From<EngineLimits> for WireLimits {
    fn from(limits: EngineLimits) -> Self {
        Self {
            memory_limit_bytes: limits.memory_limit_bytes,
            max_stack_bytes: limits.max_stack_bytes,
            max_console_chars: limits.max_console_chars,
            max_runtime: limits.max_runtime,
        }
    }
}

impl From<WireLimits> for EngineLimits {
    fn from(limits: WireLimits) -> Self {
        Self {
            memory_limit_bytes: limits.memory_limit_bytes,
            max_stack_bytes: limits.max_stack_bytes,
            max_console_chars: limits.max_console_chars,
            max_runtime: limits.max_runtime,
        }
    }
}

impl From<ProgramFailure> for WireFailure {
    fn from(failure: ProgramFailure) -> Self {
        match failure {
            ProgramFailure::Syntax(message) => Self::Syntax(message),
            ProgramFailure::Thrown(message) => Self::Thrown(message),
            ProgramFailure::NotJson(message) => Self::NotJson(message),
            ProgramFailure::Timeout => Self::Timeout,
            ProgramFailure::OutOfMemory => Self::OutOfMemory,
            ProgramFailure::StackOverflow => Self::StackOverflow,
            ProgramFailure::Engine(message) => Self::Engine(message),
        }
    }
}

impl From<WireFailure> for ProgramFailure {
    fn from(failure: WireFailure) -> Self {
        match failure {
            WireFailure::Syntax(message) => Self::Syntax(message),
            WireFailure::Thrown(message) => Self::Thrown(message),
            WireFailure::NotJson(message) => Self::NotJson(message),
            WireFailure::Timeout => Self::Timeout,
            WireFailure::OutOfMemory => Self::OutOfMemory,
            WireFailure::StackOverflow => Self::StackOverflow,
            WireFailure::Engine(message) => Self::Engine(message),
        }
    }
}

impl From<ProgramRun> for WireRun {
    fn from(run: ProgramRun) -> Self {
        Self {
            result: run.result.map_err(WireFailure::from),
            console: run.console,
            console_truncated: run.console_truncated,
            elapsed_ms: run.elapsed_ms,
        }
    }
}

impl From<WireRun> for ProgramRun {
    fn from(run: WireRun) -> Self {
        Self {
            result: run.result.map_err(ProgramFailure::from),
            console: run.console,
            console_truncated: run.console_truncated,
            elapsed_ms: run.elapsed_ms,
        }
    }
}
