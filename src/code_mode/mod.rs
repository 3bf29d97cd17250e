//! Code mode: the model writes one JavaScript program that calls the tools, and the gateway runs
//! it in a sandbox under strict budgets.
//!
//! The pieces, in the order a turn uses them: [`policy`] picks the tools a program may see,
//! [`declarations`] describes them as a typed API, [`extract`] finds a program in a text reply,
//! [`executor`] runs it in the [`sandbox`] (in this process or in a [`subprocess`]) with every
//! tool call passing through the [`bridge`], [`audit`] records the attempt, and [`circuit`]
//! demotes code mode to shadow runs while tools keep timing out. The turn itself, with its model
//! requests, lives in the agent.

pub mod audit;
pub mod bridge;
pub mod circuit;
pub mod declarations;
pub mod executor;
pub mod extract;
pub mod policy;
pub mod sandbox;
pub mod subprocess;

use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

use audit::{AuditLog, AuditRecord, CodeModeStats, StatsSnapshot};
use bridge::ToolInvoker;
use circuit::{Admission, CircuitSettings, CircuitSnapshot, TimeoutCircuit};
use executor::{Executor, RunReport, Selection};

use crate::config::{CodeModeConfig, McpConfig};
use crate::mcp::ToolInfo;
use crate::telemetry::Metrics;

/// Audit records kept for the diag endpoint.
const AUDIT_CAPACITY: usize = 64;

/// Code mode's shared state: settings, circuit, counters and recent audit records.
pub struct CodeMode {
    settings: CodeModeConfig,
    mcp: McpConfig,
    executor: Executor,
    circuit: Arc<TimeoutCircuit>,
    stats: CodeModeStats,
    audit: AuditLog,
    metrics: Metrics,
}

/// Code mode's state as the diag endpoint shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CodeModeSnapshot {
    pub settings: CodeModeConfig,
    pub circuit: CircuitSnapshot,
    pub counters: StatsSnapshot,
    pub recent: Vec<AuditRecord>,
}

impl CodeMode {
    pub fn new(settings: CodeModeConfig, mcp: McpConfig, invoker: Arc<dyn ToolInvoker>) -> Self {
        Self {
            circuit: TimeoutCircuit::new(circuit_settings(&settings)),
            executor: Executor::new(invoker, settings.clone()),
            settings,
            mcp,
            stats: CodeModeStats::default(),
            audit: AuditLog::new(AUDIT_CAPACITY),
            metrics: Metrics::default(),
        }
    }

    /// Sets the instruments that record run and tool-call durations.
    pub fn set_metrics(&mut self, metrics: Metrics) {
        self.metrics = metrics;
    }

    /// Sets the program started in subprocess mode; by default the running executable.
    pub fn set_engine_command(&mut self, engine: subprocess::EngineCommand) {
        self.executor.set_engine_command(engine);
    }

    pub fn settings(&self) -> &CodeModeConfig {
        &self.settings
    }

    /// The tools a program may use this turn; `None` when code mode is off or allows none of
    /// `tools`, in which case it is not offered at all.
    pub fn select(&self, tools: &[ToolInfo]) -> Option<Selection> {
        if !self.settings.enabled {
            return None;
        }
        let allowed: Vec<ToolInfo> = tools
            .iter()
            .filter(|tool| policy::allowed(tool, &self.mcp, &self.settings))
            .cloned()
            .collect();
        (!allowed.is_empty()).then(|| Selection::new(allowed))
    }

    /// Decides whether this request runs code mode, as a probe, or skips it.
    pub fn admit(&self) -> Admission {
        self.circuit.admit()
    }

    pub async fn run(
        &self,
        selection: &Selection,
        code: &str,
        shadow: bool,
        deadline: Instant,
    ) -> RunReport {
        let started = Instant::now();
        let report = self.executor.run(selection, code, shadow, deadline).await;
        self.metrics
            .observe_program_run(started.elapsed(), &report.calls);
        report
    }

    /// Counts, logs and keeps a finished attempt.
    pub fn record(&self, record: AuditRecord) {
        audit::log(&record);
        self.stats.record(&record);
        self.audit.push(record);
    }

    pub fn record_direct_answer(&self) {
        self.stats.record_direct_answer();
    }

    /// The counters alone, as the metrics endpoint reads them on every scrape.
    pub fn counters(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    pub fn circuit(&self) -> CircuitSnapshot {
        self.circuit.snapshot()
    }

    pub fn snapshot(&self) -> CodeModeSnapshot {
        CodeModeSnapshot {
            settings: self.settings.clone(),
            circuit: self.circuit.snapshot(),
            counters: self.stats.snapshot(),
            recent: self.audit.recent(),
        }
    }
}

fn circuit_settings(settings: &CodeModeConfig) -> CircuitSettings {
    CircuitSettings {
        warn_ratio: settings.timeout_warn_ratio,
        auto_shadow_enabled: settings.timeout_auto_shadow_enabled,
        streak_to_open: settings.timeout_auto_shadow_streak,
        probe_every: settings.timeout_auto_shadow_probe_every,
        shadow_mode: settings.shadow_mode,
    }
}
