//! Every metric the gateway exports: name, type and help text, in one list.
//!
//! Dashboards, alert rules and the operator docs depend on these names, so they are defined only
//! here; the registry, the scrape-time collector and the tests all read them from this module.
//! A name is the family name that `prometheus-client` registers: the library appends `_total` to
//! counters and `_info` to info metrics, and [`MetricName::exposed`] gives the resulting sample
//! name. The `xiaomaolv_code_mode_*` names of the spec's seven series are part of the operator
//! contract and must not change.

/// The kind of a metric family, which decides the suffix of its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    Info,
}

/// One metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricName {
    /// The registered name, without the `_total` or `_info` suffix.
    pub family: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

impl MetricName {
    const fn new(family: &'static str, kind: Kind, help: &'static str) -> Self {
        Self { family, kind, help }
    }

    /// Returns the sample name Prometheus stores: the family plus `_total` for a counter and
    /// `_info` for an info metric. A histogram's samples add `_bucket`, `_sum` and `_count` to this.
    pub fn exposed(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.family),
            Kind::Info => format!("{}_info", self.family),
            Kind::Gauge | Kind::Histogram => self.family.to_owned(),
        }
    }
}

use Kind::{Counter, Gauge, Histogram, Info};

// Code-mode counters, read from code mode's own atomics at scrape time.

pub const CODE_MODE_ATTEMPTS: MetricName = MetricName::new(
    "xiaomaolv_code_mode_attempts",
    Counter,
    "Code-mode attempts: requests in which the model produced a program and code mode set out to run it, shadow runs and probes included; always used plus fallback",
);
pub const CODE_MODE_USED: MetricName = MetricName::new(
    "xiaomaolv_code_mode_used",
    Counter,
    "Code-mode attempts whose result served the reply",
);
pub const CODE_MODE_FALLBACK: MetricName = MetricName::new(
    "xiaomaolv_code_mode_fallback",
    Counter,
    "Code-mode attempts that did not serve the reply: a failure, a shadow run, a probe, or a run whose timeouts just opened the circuit",
);
pub const CODE_MODE_FALLBACK_BY_REASON: MetricName = MetricName::new(
    "xiaomaolv_code_mode_fallback_by_reason",
    Counter,
    "Code-mode fallbacks by reason; the reasons sum to the fallback total",
);
pub const CODE_MODE_ATTEMPTS_BY_ROLE: MetricName = MetricName::new(
    "xiaomaolv_code_mode_attempts_by_role",
    Counter,
    "Code-mode attempts by role: serve (may answer the user), shadow (shadow_mode) or probe (open circuit)",
);
pub const CODE_MODE_FALLBACK_BY_ROLE: MetricName = MetricName::new(
    "xiaomaolv_code_mode_fallback_by_role",
    Counter,
    "Code-mode fallbacks by role of the attempt",
);
pub const CODE_MODE_DIRECT_ANSWERS: MetricName = MetricName::new(
    "xiaomaolv_code_mode_direct_answers",
    Counter,
    "Requests offered code mode in which the model answered without a program; not attempts",
);
pub const CODE_MODE_RUNS: MetricName = MetricName::new(
    "xiaomaolv_code_mode_runs",
    Counter,
    "Program runs: the first run of each attempt plus one per repair",
);
pub const CODE_MODE_EXECUTED_CALLS: MetricName = MetricName::new(
    "xiaomaolv_code_mode_executed_calls",
    Counter,
    "Tool calls that code-mode programs sent to an MCP server",
);
pub const CODE_MODE_FAILED_CALLS: MetricName = MetricName::new(
    "xiaomaolv_code_mode_failed_calls",
    Counter,
    "Tool calls of code-mode programs that did not succeed, calls rejected before reaching a server included",
);
pub const CODE_MODE_TIMED_OUT_CALLS: MetricName = MetricName::new(
    "xiaomaolv_code_mode_timed_out_calls",
    Counter,
    "Tool calls of code-mode programs that hit their per-call timeout",
);
pub const CODE_MODE_SKIPPED: MetricName = MetricName::new(
    "xiaomaolv_code_mode_skipped",
    Counter,
    "Requests that skipped code mode because the timeout circuit was open; not attempts",
);
pub const CODE_MODE_PROBE_ATTEMPT: MetricName = MetricName::new(
    "xiaomaolv_code_mode_probe_attempt",
    Counter,
    "Probes started while the timeout circuit was open",
);
pub const CODE_MODE_TIMEOUT_ALERTS: MetricName = MetricName::new(
    "xiaomaolv_code_mode_timeout_alerts",
    Counter,
    "Runs whose timed-out share of executed calls reached timeout_warn_ratio, shadow runs and probes included",
);
pub const CODE_MODE_CIRCUIT_OPENS: MetricName = MetricName::new(
    "xiaomaolv_code_mode_circuit_open",
    Counter,
    "Times the timeout circuit opened",
);
pub const CODE_MODE_CIRCUIT_CLOSES: MetricName = MetricName::new(
    "xiaomaolv_code_mode_circuit_close",
    Counter,
    "Times a probe closed the timeout circuit",
);

// Code-mode gauges: circuit state and the effective settings.

pub const CODE_MODE_CIRCUIT_OPEN: MetricName = MetricName::new(
    "xiaomaolv_code_mode_circuit_open",
    Gauge,
    "Whether the timeout circuit is open: 1 open, 0 closed",
);
pub const CODE_MODE_TIMEOUT_ALERT_STREAK: MetricName = MetricName::new(
    "xiaomaolv_code_mode_timeout_alert_streak",
    Gauge,
    "Consecutive timeout alerts of normal runs; the circuit opens when it reaches timeout_auto_shadow_streak",
);
// NOTE: `promtool check metrics` flags this name for containing a type word ("counter"). It
// stays because dashboards of the older gateway query it; it is the only lint finding.
pub const CODE_MODE_PROBE_COUNTER: MetricName = MetricName::new(
    "xiaomaolv_code_mode_probe_counter",
    Gauge,
    "Requests counted toward the next probe while the circuit is open",
);
pub const CODE_MODE_PROBE_IN_FLIGHT: MetricName = MetricName::new(
    "xiaomaolv_code_mode_probe_in_flight",
    Gauge,
    "Whether a probe is running: 1 or 0",
);
pub const CODE_MODE_CIRCUIT_LAST_TRANSITION: MetricName = MetricName::new(
    "xiaomaolv_code_mode_circuit_last_transition_timestamp_seconds",
    Gauge,
    "Unix time of the last open or close of the timeout circuit; absent until the first one",
);
pub const CODE_MODE_ENABLED: MetricName = MetricName::new(
    "xiaomaolv_code_mode_enabled",
    Gauge,
    "Configured agent.code_mode.enabled: 1 or 0",
);
pub const CODE_MODE_SHADOW_MODE: MetricName = MetricName::new(
    "xiaomaolv_code_mode_shadow_mode",
    Gauge,
    "Configured agent.code_mode.shadow_mode: 1 or 0",
);
pub const CODE_MODE_TIMEOUT_WARN_RATIO: MetricName = MetricName::new(
    "xiaomaolv_code_mode_timeout_warn_ratio",
    Gauge,
    "Configured agent.code_mode.timeout_warn_ratio: the timed-out share of a run's executed calls that makes it a timeout alert",
);
pub const CODE_MODE_TIMEOUT_AUTO_SHADOW_ENABLED: MetricName = MetricName::new(
    "xiaomaolv_code_mode_timeout_auto_shadow_enabled",
    Gauge,
    "Configured agent.code_mode.timeout_auto_shadow_enabled: 1 or 0",
);
pub const CODE_MODE_TIMEOUT_AUTO_SHADOW_STREAK: MetricName = MetricName::new(
    "xiaomaolv_code_mode_timeout_auto_shadow_streak",
    Gauge,
    "Configured agent.code_mode.timeout_auto_shadow_streak: consecutive timeout alerts that open the circuit",
);
pub const CODE_MODE_TIMEOUT_AUTO_SHADOW_PROBE_EVERY: MetricName = MetricName::new(
    "xiaomaolv_code_mode_timeout_auto_shadow_probe_every",
    Gauge,
    "Configured agent.code_mode.timeout_auto_shadow_probe_every: while the circuit is open, every Nth request probes",
);

// Events recorded as they happen.

pub const CODE_MODE_RUN_DURATION: MetricName = MetricName::new(
    "xiaomaolv_code_mode_run_duration_seconds",
    Histogram,
    "Wall-clock time of one program run in the sandbox, tool calls included",
);
pub const CODE_MODE_TOOL_CALL_DURATION: MetricName = MetricName::new(
    "xiaomaolv_code_mode_tool_call_duration_seconds",
    Histogram,
    "Time of one executed tool call of a code-mode program, by outcome: ok, error or timeout",
);
pub const PROVIDER_REQUESTS: MetricName = MetricName::new(
    "xiaomaolv_provider_requests",
    Counter,
    "Model requests by provider and outcome: ok or the error kind; retries happen inside one request",
);
pub const PROVIDER_REQUEST_DURATION: MetricName = MetricName::new(
    "xiaomaolv_provider_request_duration_seconds",
    Histogram,
    "Time of one model request, retries and the whole streamed body included, by provider and outcome",
);
pub const HTTP_REQUESTS: MetricName = MetricName::new(
    "xiaomaolv_http_requests",
    Counter,
    "HTTP requests by matched route pattern and status class",
);
pub const HTTP_REQUEST_DURATION: MetricName = MetricName::new(
    "xiaomaolv_http_request_duration_seconds",
    Histogram,
    "Time until the response head is ready, by matched route pattern; a stream's body is not included",
);
pub const GATEWAY_OVERHEAD: MetricName = MetricName::new(
    "xiaomaolv_gateway_overhead_seconds",
    Histogram,
    "Time of a finished turn spent in the gateway itself: the turn's time minus the session-lock wait, model requests, tool calls and program runs",
);
pub const DIAG_REJECTED: MetricName = MetricName::new(
    "xiaomaolv_diag_rejected_requests",
    Counter,
    "Requests to the diagnostics endpoints rejected by reason: rate_limited or unauthorized",
);
pub const TURNS_REJECTED: MetricName = MetricName::new(
    "xiaomaolv_turns_rejected",
    Counter,
    "Message requests rejected with 503 before their turn started, because app.max_concurrent_turns turns were running",
);
pub const MCP_SERVERS: MetricName = MetricName::new(
    "xiaomaolv_mcp_servers",
    Gauge,
    "Configured MCP servers by connection state",
);
pub const START_TIME: MetricName = MetricName::new(
    "xiaomaolv_start_time_seconds",
    Gauge,
    "Unix time at which the gateway process built its state",
);
pub const BUILD_INFO: MetricName = MetricName::new(
    "xiaomaolv_build",
    Info,
    "Version and build profile of the running gateway, value always 1",
);

/// Every family, in the order of the exposition.
pub const ALL: [MetricName; 39] = [
    CODE_MODE_ATTEMPTS,
    CODE_MODE_USED,
    CODE_MODE_FALLBACK,
    CODE_MODE_FALLBACK_BY_REASON,
    CODE_MODE_ATTEMPTS_BY_ROLE,
    CODE_MODE_FALLBACK_BY_ROLE,
    CODE_MODE_DIRECT_ANSWERS,
    CODE_MODE_RUNS,
    CODE_MODE_EXECUTED_CALLS,
    CODE_MODE_FAILED_CALLS,
    CODE_MODE_TIMED_OUT_CALLS,
    CODE_MODE_SKIPPED,
    CODE_MODE_PROBE_ATTEMPT,
    CODE_MODE_TIMEOUT_ALERTS,
    CODE_MODE_CIRCUIT_OPENS,
    CODE_MODE_CIRCUIT_CLOSES,
    CODE_MODE_CIRCUIT_OPEN,
    CODE_MODE_TIMEOUT_ALERT_STREAK,
    CODE_MODE_PROBE_COUNTER,
    CODE_MODE_PROBE_IN_FLIGHT,
    CODE_MODE_CIRCUIT_LAST_TRANSITION,
    CODE_MODE_ENABLED,
    CODE_MODE_SHADOW_MODE,
    CODE_MODE_TIMEOUT_WARN_RATIO,
    CODE_MODE_TIMEOUT_AUTO_SHADOW_ENABLED,
    CODE_MODE_TIMEOUT_AUTO_SHADOW_STREAK,
    CODE_MODE_TIMEOUT_AUTO_SHADOW_PROBE_EVERY,
    CODE_MODE_RUN_DURATION,
    CODE_MODE_TOOL_CALL_DURATION,
    PROVIDER_REQUESTS,
    PROVIDER_REQUEST_DURATION,
    HTTP_REQUESTS,
    HTTP_REQUEST_DURATION,
    GATEWAY_OVERHEAD,
    DIAG_REJECTED,
    TURNS_REJECTED,
    MCP_SERVERS,
    START_TIME,
    BUILD_INFO,
];
