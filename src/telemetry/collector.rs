//! The scrape-time collector: code mode's counters, circuit state and settings, the MCP server
//! states and the start time, read fresh on every scrape.
//!
//! Reading code mode's own atomics instead of mirroring them into a second set of counters means
//! the metrics endpoint and `GET /v1/code-mode/diag` report the same numbers by construction.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::metrics::{Format, ScrapeSources, unix_seconds};
use super::names::{self, MetricName};
use crate::code_mode::audit::StatsSnapshot;
use crate::code_mode::circuit::CircuitSnapshot;
use crate::config::CodeModeConfig;
use crate::mcp::ServerPhase;

pub struct GatewayCollector {
    sources: ScrapeSources,
    format: Format,
}

impl fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayCollector")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl GatewayCollector {
    pub fn new(sources: ScrapeSources, format: Format) -> Self {
        Self { sources, format }
    }
}

impl Collector for GatewayCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let code_mode = &self.sources.code_mode;
        let mut out = Families {
            encoder,
            format: self.format,
        };
        out.code_mode_counters(&code_mode.counters())?;
        out.circuit(&code_mode.circuit())?;
        out.settings(code_mode.settings())?;
        out.mcp_servers(&self.sources.hub.statuses())?;
        out.gauge(names::START_TIME, unix_seconds(self.sources.started_at))
    }
}

/// Writes one family at a time into the scrape.
struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
    format: Format,
}

impl Families<'_> {
    fn code_mode_counters(&mut self, stats: &StatsSnapshot) -> fmt::Result {
        self.counter(names::CODE_MODE_ATTEMPTS, stats.attempts_total)?;
        self.counter(names::CODE_MODE_USED, stats.used_total)?;
        self.counter(names::CODE_MODE_FALLBACK, stats.fallback_total)?;
        self.labeled_counter(
            names::CODE_MODE_FALLBACK_BY_REASON,
            "reason",
            &stats.fallback_by_reason,
        )?;
        self.labeled_counter(
            names::CODE_MODE_ATTEMPTS_BY_ROLE,
            "role",
            &stats.attempts_by_role,
        )?;
        self.labeled_counter(
            names::CODE_MODE_FALLBACK_BY_ROLE,
            "role",
            &stats.fallback_by_role,
        )?;
        self.counter(names::CODE_MODE_DIRECT_ANSWERS, stats.direct_answers_total)?;
        self.counter(names::CODE_MODE_RUNS, stats.runs_total)?;
        self.counter(names::CODE_MODE_EXECUTED_CALLS, stats.executed_calls_total)?;
        self.counter(names::CODE_MODE_FAILED_CALLS, stats.failed_calls_total)?;
        self.counter(
            names::CODE_MODE_TIMED_OUT_CALLS,
            stats.timed_out_calls_total,
        )
    }

    fn circuit(&mut self, circuit: &CircuitSnapshot) -> fmt::Result {
        self.counter(names::CODE_MODE_SKIPPED, circuit.skips_total)?;
        self.counter(names::CODE_MODE_PROBE_ATTEMPT, circuit.probes_total)?;
        self.counter(names::CODE_MODE_TIMEOUT_ALERTS, circuit.alerts_total)?;
        self.circuit_opens(circuit.opens_total)?;
        self.counter(names::CODE_MODE_CIRCUIT_CLOSES, circuit.closes_total)?;
        self.gauge(names::CODE_MODE_CIRCUIT_OPEN, flag(circuit.open))?;
        self.gauge(names::CODE_MODE_TIMEOUT_ALERT_STREAK, circuit.streak.into())?;
        self.gauge(names::CODE_MODE_PROBE_COUNTER, circuit.probe_counter.into())?;
        self.gauge(
            names::CODE_MODE_PROBE_IN_FLIGHT,
            flag(circuit.probe_in_flight),
        )?;
        self.last_transition(circuit)
    }

    /// Describes the family on every scrape, and writes its sample only after the first transition.
    fn last_transition(&mut self, circuit: &CircuitSnapshot) -> fmt::Result {
        let name = names::CODE_MODE_CIRCUIT_LAST_TRANSITION;
        let family =
            self.encoder
                .encode_descriptor(name.family, &help(name), None, MetricType::Gauge)?;
        match circuit.last_transition {
            // Milliseconds since 1970 fit an f64 exactly for the next quarter million years.
            Some(record) => ConstGauge::new(record.at_unix_ms as f64 / 1000.0).encode(family),
            None => Ok(()),
        }
    }

    fn settings(&mut self, settings: &CodeModeConfig) -> fmt::Result {
        self.gauge(names::CODE_MODE_ENABLED, flag(settings.enabled))?;
        self.gauge(names::CODE_MODE_SHADOW_MODE, flag(settings.shadow_mode))?;
        self.gauge(
            names::CODE_MODE_TIMEOUT_WARN_RATIO,
            settings.timeout_warn_ratio,
        )?;
        self.gauge(
            names::CODE_MODE_TIMEOUT_AUTO_SHADOW_ENABLED,
            flag(settings.timeout_auto_shadow_enabled),
        )?;
        self.gauge(
            names::CODE_MODE_TIMEOUT_AUTO_SHADOW_STREAK,
            settings.timeout_auto_shadow_streak.into(),
        )?;
        self.gauge(
            names::CODE_MODE_TIMEOUT_AUTO_SHADOW_PROBE_EVERY,
            settings.timeout_auto_shadow_probe_every.into(),
        )
    }

    /// Writes one series per state, every state listed, so a state that empties drops to 0
    /// instead of vanishing.
    fn mcp_servers(&mut self, statuses: &[crate::mcp::ServerStatus]) -> fmt::Result {
        let name = names::MCP_SERVERS;
        let mut family =
            self.encoder
                .encode_descriptor(name.family, &help(name), None, MetricType::Gauge)?;
        for phase in ServerPhase::ALL {
            let count = statuses.iter().filter(|s| s.state == phase).count();
            let labels = [("state", phase.as_str())];
            ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// Writes the opens counter. In OpenMetrics its family name would equal the gauge's, so there
    /// it is an `unknown` family under its full sample name, which Prometheus stores under the
    /// same series name as the text format's counter.
    fn circuit_opens(&mut self, opens: u64) -> fmt::Result {
        let name = names::CODE_MODE_CIRCUIT_OPENS;
        if self.format == Format::Text {
            return self.counter(name, opens);
        }
        let exposed = name.exposed();
        let family =
            self.encoder
                .encode_descriptor(&exposed, &help(name), None, MetricType::Unknown)?;
        ConstGauge::new(opens as f64).encode(family)
    }

    fn counter(&mut self, name: MetricName, value: u64) -> fmt::Result {
        let metric = ConstCounter::new(value);
        let family =
            self.encoder
                .encode_descriptor(name.family, &help(name), None, metric.metric_type())?;
        metric.encode(family)
    }

    fn labeled_counter<'v>(
        &mut self,
        name: MetricName,
        label: &'static str,
        values: impl IntoIterator<Item = (&'v &'static str, &'v u64)>,
    ) -> fmt::Result {
        let mut family =
            self.encoder
                .encode_descriptor(name.family, &help(name), None, MetricType::Counter)?;
        for (value, count) in values {
            let labels = [(label, *value)];
            ConstCounter::new(*count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauge(&mut self, name: MetricName, value: f64) -> fmt::Result {
        let metric = ConstGauge::new(value);
        let family =
            self.encoder
                .encode_descriptor(name.family, &help(name), None, metric.metric_type())?;
        metric.encode(family)
    }
}

/// Formats the help text as the registry writes it for registered metrics, with a full stop.
fn help(name: MetricName) -> String {
    format!("{}.", name.help)
}

fn flag(on: bool) -> f64 {
    if on { 1.0 } else { 0.0 }
}
