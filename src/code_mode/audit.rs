//! What code mode did: one audit record per attempt, the running counters, and a ring of recent
//! records for the diag endpoint.
//!
//! The counters follow the counting rules of the design: an *attempt* is a request in which the
//! model produced a program and code mode set out to run it; it ends either *used* (its result
//! served the reply) or as a *fallback* with a reason, so `attempts = used + fallback` always
//! holds. A reply without a program is a *direct answer* and counts as neither. Counters are
//! plain atomics that live as long as the process and never reset; the metrics endpoint reads
//! them at scrape time.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// The reason an attempt did not serve the reply. The set is closed because it labels metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// The program did not parse, after every repair.
    SyntaxError,
    /// The program threw or a tool call it awaited failed, after every repair.
    RuntimeError,
    /// The returned value cannot be turned into JSON.
    InvalidResult,
    /// `max_runtime_ms` ran out.
    Timeout,
    /// The engine's memory limit was reached.
    OutOfMemory,
    /// The program recursed past the stack limit.
    StackOverflow,
    /// The program tried more than `max_calls` tool calls.
    MaxCalls,
    /// The engine or its child process failed outside the program.
    SandboxError,
    /// The model replied to a repair request without a new program.
    NoRepair,
    /// The model request of code mode failed.
    ProviderError,
    /// `shadow_mode` is on: the run was measured, the classic loop served.
    Shadow,
    /// The circuit is open and this run was a probe, in shadow.
    Probe,
    /// This run's timeouts opened the circuit, so the classic loop served.
    CircuitOpened,
}

impl FallbackReason {
    pub const ALL: [FallbackReason; 13] = [
        Self::SyntaxError,
        Self::RuntimeError,
        Self::InvalidResult,
        Self::Timeout,
        Self::OutOfMemory,
        Self::StackOverflow,
        Self::MaxCalls,
        Self::SandboxError,
        Self::NoRepair,
        Self::ProviderError,
        Self::Shadow,
        Self::Probe,
        Self::CircuitOpened,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SyntaxError => "syntax_error",
            Self::RuntimeError => "runtime_error",
            Self::InvalidResult => "invalid_result",
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::StackOverflow => "stack_overflow",
            Self::MaxCalls => "max_calls",
            Self::SandboxError => "sandbox_error",
            Self::NoRepair => "no_repair",
            Self::ProviderError => "provider_error",
            Self::Shadow => "shadow",
            Self::Probe => "probe",
            Self::CircuitOpened => "circuit_opened",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|reason| *reason == self)
            .expect("every reason is listed")
    }
}

/// The way the program reached the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Planner {
    /// The `code` argument of the native `run_program` tool call.
    Tool,
    /// A fenced js block in the reply text.
    Fenced,
}

impl Planner {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Fenced => "fenced",
        }
    }
}

/// The role of a run. A closed set: it labels metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunRole {
    /// Its result may serve the reply.
    Serve,
    /// `shadow_mode`: measured only.
    Shadow,
    /// A probe of the open circuit, in shadow.
    Probe,
}

impl RunRole {
    pub const ALL: [RunRole; 3] = [Self::Serve, Self::Shadow, Self::Probe];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serve => "serve",
            Self::Shadow => "shadow",
            Self::Probe => "probe",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One code-mode attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub at_unix_ms: i64,
    pub turn_id: String,
    pub planner: Planner,
    pub role: RunRole,
    pub used: bool,
    pub fallback: bool,
    pub reason: Option<FallbackReason>,
    /// Program runs: the first plus one per repair.
    pub runs: u32,
    /// The failure of each failed run, in order. The last one is `reason` unless a repair worked.
    pub run_failures: Vec<FallbackReason>,
    /// Tool calls the programs asked for, including rejected ones.
    pub planned_calls: u32,
    /// Tool calls sent to a server.
    pub executed_calls: u32,
    pub failed_calls: u32,
    pub timed_out_calls: u32,
    pub elapsed_ms: u64,
    /// SHA-256 of the last program, hex, which identifies repeated programs without storing them.
    pub program_sha256: String,
}

/// Running totals of code mode since the process started.
///
/// Attempts are not stored: a snapshot derives them from the used and fallback counts it read,
/// so `attempts = used + fallback` holds in every snapshot, even one taken while an attempt is
/// being counted.
#[derive(Debug, Default)]
pub struct CodeModeStats {
    used: AtomicU64,
    fallback: AtomicU64,
    fallback_by_reason: [AtomicU64; FallbackReason::ALL.len()],
    used_by_role: [AtomicU64; RunRole::ALL.len()],
    fallback_by_role: [AtomicU64; RunRole::ALL.len()],
    direct_answers: AtomicU64,
    runs: AtomicU64,
    executed_calls: AtomicU64,
    failed_calls: AtomicU64,
    timed_out_calls: AtomicU64,
}

/// A copy of the counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub attempts_total: u64,
    pub used_total: u64,
    pub fallback_total: u64,
    /// Fallbacks per [`FallbackReason`], every reason listed.
    pub fallback_by_reason: BTreeMap<&'static str, u64>,
    /// Attempts per [`RunRole`], every role listed.
    pub attempts_by_role: BTreeMap<&'static str, u64>,
    /// Fallbacks per [`RunRole`], every role listed.
    pub fallback_by_role: BTreeMap<&'static str, u64>,
    pub direct_answers_total: u64,
    pub runs_total: u64,
    pub executed_calls_total: u64,
    pub failed_calls_total: u64,
    pub timed_out_calls_total: u64,
}

impl CodeModeStats {
    /// Counts a finished attempt.
    pub fn record(&self, record: &AuditRecord) {
        let add = |counter: &AtomicU64, value: u64| counter.fetch_add(value, Ordering::Relaxed);
        let role = record.role.index();
        match record.reason {
            Some(reason) => {
                add(&self.fallback_by_reason[reason.index()], 1);
                add(&self.fallback_by_role[role], 1);
                add(&self.fallback, 1);
            }
            None => {
                add(&self.used_by_role[role], 1);
                add(&self.used, 1);
            }
        }
        add(&self.runs, u64::from(record.runs));
        add(&self.executed_calls, u64::from(record.executed_calls));
        add(&self.failed_calls, u64::from(record.failed_calls));
        add(&self.timed_out_calls, u64::from(record.timed_out_calls));
    }

    pub fn record_direct_answer(&self) {
        self.direct_answers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let used = read(&self.used);
        let fallback = read(&self.fallback);
        let by_role = |counters: &[AtomicU64; RunRole::ALL.len()]| {
            RunRole::ALL
                .iter()
                .map(|role| (role.as_str(), read(&counters[role.index()])))
                .collect::<BTreeMap<_, _>>()
        };
        let fallback_by_role = by_role(&self.fallback_by_role);
        let mut attempts_by_role = by_role(&self.used_by_role);
        for (role, count) in &fallback_by_role {
            *attempts_by_role.entry(role).or_default() += count;
        }
        StatsSnapshot {
            attempts_total: used + fallback,
            used_total: used,
            fallback_total: fallback,
            fallback_by_reason: FallbackReason::ALL
                .iter()
                .map(|reason| {
                    (
                        reason.as_str(),
                        read(&self.fallback_by_reason[reason.index()]),
                    )
                })
                .collect(),
            attempts_by_role,
            fallback_by_role,
            direct_answers_total: read(&self.direct_answers),
            runs_total: read(&self.runs),
            executed_calls_total: read(&self.executed_calls),
            failed_calls_total: read(&self.failed_calls),
            timed_out_calls_total: read(&self.timed_out_calls),
        }
    }
}

/// The most recent audit records, oldest first.
#[derive(Debug)]
pub struct AuditLog {
    records: Mutex<VecDeque<AuditRecord>>,
    capacity: usize,
}

impl AuditLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            records: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    pub fn push(&self, record: AuditRecord) {
        let mut records = self.records.lock().expect("audit log lock");
        if records.len() == self.capacity {
            records.pop_front();
        }
        records.push_back(record);
    }

    pub fn recent(&self) -> Vec<AuditRecord> {
        self.records
            .lock()
            .expect("audit log lock")
            .iter()
            .cloned()
            .collect()
    }
}

/// Writes the record as one structured log line.
pub fn log(record: &AuditRecord) {
    tracing::info!(
        turn_id = %record.turn_id,
        planner = record.planner.as_str(),
        role = record.role.as_str(),
        used = record.used,
        fallback = record.fallback,
        reason = record.reason.map(FallbackReason::as_str),
        runs = record.runs,
        planned_calls = record.planned_calls,
        executed_calls = record.executed_calls,
        failed_calls = record.failed_calls,
        timed_out_calls = record.timed_out_calls,
        elapsed_ms = record.elapsed_ms,
        program_sha256 = %record.program_sha256,
        "Code mode attempt finished"
    );
}
