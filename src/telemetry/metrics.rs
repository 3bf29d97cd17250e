//! Metric instruments that record events as they happen, and the exposition the metrics endpoint
//! serves.
//!
//! [`Metrics`] contains the histograms and counters that the HTTP layer, the provider client, the
//! agent and code mode update. It is cheap to clone, and every clone shares the same series. Code
//! mode's own counters are not copied here: [`Exposition`] reads them from code mode's atomics at
//! scrape time through [`GatewayCollector`], so the endpoint and the diag snapshot can never
//! disagree. Every label value comes from a closed set: a matched route pattern, a status class,
//! a configured provider name, or a fixed outcome word.
//!
//! NOTE: counters live as long as the process and never reset. The gateway has no config reload
//! today, so there is no reload path that could reset or re-register them.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};

use super::collector::GatewayCollector;
use super::names::{self, MetricName};
use crate::code_mode::CodeMode;
use crate::code_mode::bridge::CallReport;
use crate::mcp::McpHub;

/// Upper bounds, in seconds, of the latency histograms: model requests, tool calls, program runs
/// and HTTP requests, from a millisecond to two minutes.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Upper bounds, in seconds, of the gateway overhead histogram, which is expected to sit well
/// under a millisecond.
const OVERHEAD_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status_class: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The instruments of one gateway. A default value is a set of fresh series that no exposition
/// reads, which is what a component built without a registry (in tests, or by a CLI command)
/// records into.
#[derive(Debug, Clone)]
pub struct Metrics {
    run_duration: Histogram,
    tool_call_duration: HistogramFamily<OutcomeLabel>,
    provider_requests: Family<ProviderLabels, Counter>,
    provider_request_duration: HistogramFamily<ProviderLabels>,
    http_requests: Family<HttpLabels, Counter>,
    http_request_duration: HistogramFamily<RouteLabel>,
    gateway_overhead: Histogram,
    diag_rejected: Family<ReasonLabel, Counter>,
    turns_rejected: Counter,
}

/// Outcomes of a code-mode tool call.
const CALL_OUTCOMES: [&str; 3] = ["ok", "error", "timeout"];
/// Reasons a diagnostics request is rejected.
const DIAG_REJECTIONS: [&str; 2] = ["rate_limited", "unauthorized"];

impl Default for Metrics {
    /// Creates the instruments with every series of a fixed label set at zero, so the first
    /// event shows up in `rate()` instead of creating a series that starts at 1.
    fn default() -> Self {
        let metrics = Self::empty();
        for outcome in CALL_OUTCOMES {
            let label = OutcomeLabel { outcome };
            drop(metrics.tool_call_duration.get_or_create(&label));
        }
        for reason in DIAG_REJECTIONS {
            drop(metrics.diag_rejected.get_or_create(&ReasonLabel { reason }));
        }
        metrics
    }
}

impl Metrics {
    fn empty() -> Self {
        Self {
            run_duration: latency_histogram(),
            tool_call_duration: Family::new_with_constructor(latency_histogram),
            provider_requests: Family::default(),
            provider_request_duration: Family::new_with_constructor(latency_histogram),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(latency_histogram),
            gateway_overhead: Histogram::new(OVERHEAD_BUCKETS),
            diag_rejected: Family::default(),
            turns_rejected: Counter::default(),
        }
    }

    /// Creates the `ok` series of a provider at zero.
    pub fn register_provider(&self, provider: &str) {
        let labels = ProviderLabels {
            provider: provider.to_owned(),
            outcome: "ok",
        };
        drop(self.provider_requests.get_or_create(&labels));
        drop(self.provider_request_duration.get_or_create(&labels));
    }

    /// Records one program run and each tool call it sent to a server.
    pub fn observe_program_run(&self, elapsed: Duration, calls: &[CallReport]) {
        self.run_duration.observe(elapsed.as_secs_f64());
        for call in calls.iter().filter(|call| call.executed) {
            let outcome = if call.timed_out {
                "timeout"
            } else if call.ok {
                "ok"
            } else {
                "error"
            };
            let seconds = Duration::from_millis(call.elapsed_ms).as_secs_f64();
            self.tool_call_duration
                .get_or_create(&OutcomeLabel { outcome })
                .observe(seconds);
        }
    }

    /// Records one model request; `outcome` is `ok` or the error's kind.
    pub fn observe_provider_request(&self, provider: &str, outcome: &'static str, took: Duration) {
        let labels = ProviderLabels {
            provider: provider.to_owned(),
            outcome,
        };
        self.provider_requests.get_or_create(&labels).inc();
        self.provider_request_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records one HTTP request by its matched route pattern, `unmatched` when no route matched.
    pub fn observe_http_request(&self, route: &str, status: u16, took: Duration) {
        let status_class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let route = route.to_owned();
        self.http_request_duration
            .get_or_create(&RouteLabel {
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
        self.http_requests
            .get_or_create(&HttpLabels {
                route,
                status_class,
            })
            .inc();
    }

    pub fn observe_gateway_overhead(&self, overhead: Duration) {
        self.gateway_overhead.observe(overhead.as_secs_f64());
    }

    /// Counts a rejected diagnostics request; `reason` is `rate_limited` or `unauthorized`.
    pub fn count_diag_rejection(&self, reason: &'static str) {
        self.diag_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a message request rejected because `app.max_concurrent_turns` turns were running.
    pub fn count_turn_rejection(&self) {
        self.turns_rejected.inc();
    }
}

/// The exposition formats of the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Sources the collector reads at scrape time.
#[derive(Clone)]
pub struct ScrapeSources {
    pub code_mode: Arc<CodeMode>,
    pub hub: Arc<McpHub>,
    pub started_at: SystemTime,
}

/// The registries the metrics endpoint encodes, one per format.
///
/// Each format needs its own collector: in OpenMetrics a counter's family name drops `_total`,
/// so the counter `xiaomaolv_code_mode_circuit_open_total` would share the family name of the
/// gauge `xiaomaolv_code_mode_circuit_open`, and the collector names it differently there.
pub struct Exposition {
    text: Registry,
    openmetrics: Registry,
}

impl Exposition {
    pub fn new(metrics: &Metrics, sources: ScrapeSources) -> Self {
        Self {
            text: registry(metrics, &sources, Format::Text),
            openmetrics: registry(metrics, &sources, Format::OpenMetrics),
        }
    }

    /// Encodes every metric in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut body = String::with_capacity(16 * 1024);
        let encoded = match format {
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut body, &self.text)
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut body, &self.openmetrics)
            }
        };
        // Writing into a String cannot fail, and every collector writes only formatted numbers.
        encoded.expect("metrics encode into a String");
        body
    }
}

fn registry(metrics: &Metrics, sources: &ScrapeSources, format: Format) -> Registry {
    let mut registry = Registry::default();
    let m = metrics.clone();
    register(&mut registry, names::CODE_MODE_RUN_DURATION, m.run_duration);
    register(
        &mut registry,
        names::CODE_MODE_TOOL_CALL_DURATION,
        m.tool_call_duration,
    );
    register(&mut registry, names::PROVIDER_REQUESTS, m.provider_requests);
    register(
        &mut registry,
        names::PROVIDER_REQUEST_DURATION,
        m.provider_request_duration,
    );
    register(&mut registry, names::HTTP_REQUESTS, m.http_requests);
    register(
        &mut registry,
        names::HTTP_REQUEST_DURATION,
        m.http_request_duration,
    );
    register(&mut registry, names::GATEWAY_OVERHEAD, m.gateway_overhead);
    register(&mut registry, names::DIAG_REJECTED, m.diag_rejected);
    register(&mut registry, names::TURNS_REJECTED, m.turns_rejected);
    register(&mut registry, names::BUILD_INFO, Info::new(build_labels()));
    registry.register_collector(Box::new(GatewayCollector::new(sources.clone(), format)));
    registry
}

fn register(registry: &mut Registry, name: MetricName, metric: impl Metric) {
    registry.register(name.family, name.help, metric);
}

/// Labels of `xiaomaolv_build_info`.
fn build_labels() -> [(&'static str, &'static str); 2] {
    [
        ("version", env!("CARGO_PKG_VERSION")),
        ("profile", build_profile()),
    ]
}

/// `debug` or `release`, from whether debug assertions are compiled in.
pub fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// Seconds since the Unix epoch, as Prometheus timestamps are written.
pub fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
