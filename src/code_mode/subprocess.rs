//! Runs the engine in a child process.

use std::path::PathBuf;
use std::sync::Arc;

use super::bridge::Bridge;
use super::sandbox::{EngineLimits, ProgramFailure, ProgramRun};

/// The program started as the engine process: the gateway binary with a hidden subcommand.
#[derive(Debug, Clone)]
pub struct EngineCommand {
    pub program: PathBuf,
}

impl EngineCommand {
    pub fn current_exe() -> Self {
        Self {
            program: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("xiaomaolv")),
        }
    }
}

pub async fn run_program(
    _engine: &EngineCommand,
    _code: &str,
    _bindings: Vec<(String, String)>,
    _bridge: Arc<Bridge>,
    _limits: EngineLimits,
) -> ProgramRun {
    ProgramRun {
        result: Err(ProgramFailure::Engine("subprocess mode is not available".into())),
        console: String::new(),
        console_truncated: false,
        elapsed_ms: 0,
    }
}
