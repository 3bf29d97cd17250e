//! What the diagnostics endpoints return: the exposition formats, metrics that agree with code
//! mode's own snapshot after real code-mode traffic, the diag document, and the startup log.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use xiaomaolv::telemetry::names::{self, Kind};

use crate::common::process::GatewayProcess;
use crate::common::traffic::{DIAG_TOKEN, code_mode_gateway, used_then_circuit_opens};
use crate::common::{FakeOpenAi, Options, TestGateway, message};

const HTTP: &str = "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 0";
const OPENMETRICS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// Scrapes the metrics endpoint in the text format and returns the body.
pub async fn scrape(gateway: &TestGateway) -> String {
    let response = gateway
        .client
        .get(gateway.url("/v1/code-mode/metrics"))
        .bearer_auth(DIAG_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Samples of an exposition, keyed by the series as written (`name{labels}`).
pub fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_owned(), value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series}"))
}

async fn diag(gateway: &TestGateway) -> Value {
    let response = gateway
        .client
        .get(gateway.url("/v1/code-mode/diag"))
        .bearer_auth(DIAG_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

#[tokio::test]
async fn text_format_lists_every_family_once() {
    let fake = FakeOpenAi::start().await;
    let options = Options {
        http: HTTP,
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    // Series of HTTP requests exist once a request has finished.
    gateway
        .client
        .get(gateway.url("/health"))
        .send()
        .await
        .unwrap();
    let response = gateway
        .client
        .get(gateway.url("/v1/code-mode/metrics"))
        .bearer_auth(DIAG_TOKEN)
        .send()
        .await
        .unwrap();
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    let body = response.text().await.unwrap();
    for name in names::ALL {
        let exposed = name.exposed();
        let types: Vec<&str> = body
            .lines()
            .filter(|line| line.starts_with(&format!("# TYPE {exposed} ")))
            .collect();
        assert_eq!(types.len(), 1, "TYPE of {exposed}: {types:?}");
        let kind = match name.kind {
            Kind::Counter => "counter",
            Kind::Gauge | Kind::Info => "gauge",
            Kind::Histogram => "histogram",
        };
        assert_eq!(types[0], format!("# TYPE {exposed} {kind}"));
        let help = format!("# HELP {exposed} ");
        assert!(body.contains(&help), "no HELP for {exposed}");
        let help_at = body.find(&help).unwrap();
        let type_at = body.find(types[0]).unwrap();
        assert!(help_at < type_at, "HELP after TYPE for {exposed}");
    }
    let families = body.lines().filter(|l| l.starts_with("# TYPE ")).count();
    assert_eq!(families, names::ALL.len(), "families outside the name list");
}

#[tokio::test]
async fn openmetrics_is_served_when_accept_prefers_it() {
    let fake = FakeOpenAi::start().await;
    let options = Options {
        http: HTTP,
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    let response = gateway
        .client
        .get(gateway.url("/v1/code-mode/metrics"))
        .bearer_auth(DIAG_TOKEN)
        .header("accept", OPENMETRICS_ACCEPT)
        .send()
        .await
        .unwrap();
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let body = response.text().await.unwrap();
    assert!(body.ends_with("# EOF\n"), "{body}");
    let parsed = samples(&body.replace("# EOF\n", ""));
    assert_eq!(value(&parsed, "xiaomaolv_code_mode_attempts_total"), 0.0);
    assert_eq!(
        value(&parsed, "xiaomaolv_code_mode_circuit_open_total"),
        0.0
    );
    assert_eq!(value(&parsed, "xiaomaolv_code_mode_circuit_open"), 0.0);
    let gauge_families = body
        .lines()
        .filter(|l| *l == "# TYPE xiaomaolv_code_mode_circuit_open gauge")
        .count();
    assert_eq!(gauge_families, 1);
    let open_families = body
        .lines()
        .filter(|l| l.starts_with("# TYPE xiaomaolv_code_mode_circuit_open "))
        .count();
    assert_eq!(
        open_families, 1,
        "the opens counter must not reuse the gauge's name"
    );
}

#[tokio::test]
async fn metrics_and_diag_match_code_mode() {
    let fake = FakeOpenAi::start().await;
    let gateway = code_mode_gateway(&fake, HTTP).await;
    used_then_circuit_opens(&gateway, &fake).await;

    let snapshot = gateway.state.agent.code_mode().snapshot();
    let counters = &snapshot.counters;
    assert_eq!(counters.attempts_total, 3);
    assert_eq!(counters.used_total, 1);
    assert_eq!(counters.fallback_total, 2);
    assert!(snapshot.circuit.open);

    let parsed = samples(&scrape(&gateway).await);
    let expect = |series: &str, expected: u64| {
        assert_eq!(value(&parsed, series), expected as f64, "{series}");
    };
    expect(
        "xiaomaolv_code_mode_attempts_total",
        counters.attempts_total,
    );
    expect("xiaomaolv_code_mode_used_total", counters.used_total);
    expect(
        "xiaomaolv_code_mode_fallback_total",
        counters.fallback_total,
    );
    expect("xiaomaolv_code_mode_runs_total", counters.runs_total);
    expect(
        "xiaomaolv_code_mode_direct_answers_total",
        counters.direct_answers_total,
    );
    expect(
        "xiaomaolv_code_mode_executed_calls_total",
        counters.executed_calls_total,
    );
    expect(
        "xiaomaolv_code_mode_failed_calls_total",
        counters.failed_calls_total,
    );
    expect(
        "xiaomaolv_code_mode_timed_out_calls_total",
        counters.timed_out_calls_total,
    );
    for (reason, count) in &counters.fallback_by_reason {
        expect(
            &format!("xiaomaolv_code_mode_fallback_by_reason_total{{reason=\"{reason}\"}}"),
            *count,
        );
    }
    for (role, count) in &counters.attempts_by_role {
        expect(
            &format!("xiaomaolv_code_mode_attempts_by_role_total{{role=\"{role}\"}}"),
            *count,
        );
    }
    let circuit = &snapshot.circuit;
    expect("xiaomaolv_code_mode_circuit_open", 1);
    expect(
        "xiaomaolv_code_mode_circuit_open_total",
        circuit.opens_total,
    );
    expect(
        "xiaomaolv_code_mode_circuit_close_total",
        circuit.closes_total,
    );
    expect("xiaomaolv_code_mode_skipped_total", circuit.skips_total);
    expect(
        "xiaomaolv_code_mode_probe_attempt_total",
        circuit.probes_total,
    );
    expect(
        "xiaomaolv_code_mode_timeout_alerts_total",
        circuit.alerts_total,
    );
    expect(
        "xiaomaolv_code_mode_timeout_alert_streak",
        circuit.streak.into(),
    );
    expect(
        "xiaomaolv_code_mode_probe_counter",
        circuit.probe_counter.into(),
    );
    expect("xiaomaolv_code_mode_enabled", 1);
    expect("xiaomaolv_code_mode_timeout_auto_shadow_streak", 2);
    expect("xiaomaolv_code_mode_timeout_auto_shadow_probe_every", 2);
    assert_eq!(
        value(&parsed, "xiaomaolv_code_mode_timeout_warn_ratio"),
        0.4
    );
    expect("xiaomaolv_mcp_servers{state=\"ready\"}", 1);
    expect(
        "xiaomaolv_code_mode_tool_call_duration_seconds_count{outcome=\"timeout\"}",
        2,
    );
    expect(
        "xiaomaolv_code_mode_run_duration_seconds_count",
        counters.runs_total,
    );

    let document = diag(&gateway).await;
    let json_counters = &document["code_mode"]["counters"];
    assert_eq!(json_counters["attempts_total"], counters.attempts_total);
    assert_eq!(json_counters["fallback_total"], counters.fallback_total);
    assert_eq!(
        json_counters["timed_out_calls_total"],
        counters.timed_out_calls_total
    );
    assert_eq!(document["code_mode"]["circuit"]["open"], true);
    assert_eq!(document["code_mode"]["circuit"]["opens_total"], 1);
}

#[tokio::test]
async fn diag_document_has_every_section() {
    let fake = FakeOpenAi::start().await;
    let gateway = code_mode_gateway(&fake, HTTP).await;
    used_then_circuit_opens(&gateway, &fake).await;

    let document = diag(&gateway).await;
    assert_eq!(document["build"]["name"], "xiaomaolv");
    assert_eq!(document["build"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(document["uptime_seconds"].as_f64().unwrap() > 0.0);
    assert!(document["started_at_unix_ms"].as_i64().unwrap() > 1_600_000_000_000);
    let settings = &document["code_mode"]["settings"];
    for key in [
        "enabled",
        "shadow_mode",
        "max_calls",
        "max_parallel",
        "max_runtime_ms",
        "max_call_timeout_ms",
        "max_result_chars",
        "memory_limit_mb",
        "timeout_warn_ratio",
        "timeout_auto_shadow_enabled",
        "timeout_auto_shadow_streak",
        "timeout_auto_shadow_probe_every",
        "execution_mode",
        "program_delivery",
        "max_repair_attempts",
        "allow_network",
        "allow_filesystem",
        "allow_env",
    ] {
        assert!(
            !settings[key].is_null(),
            "settings.{key} missing: {settings}"
        );
    }
    assert_eq!(settings["max_call_timeout_ms"], 300);
    let circuit = &document["code_mode"]["circuit"];
    assert_eq!(circuit["open"], true);
    assert_eq!(circuit["streak"], 2);
    assert_eq!(circuit["probe_in_flight"], false);
    assert_eq!(circuit["last_transition"]["reason"], "timeout_streak");
    assert!(circuit["last_transition"]["at_unix_ms"].as_i64().unwrap() > 0);
    let recent = document["code_mode"]["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 3);
    assert_eq!(recent[0]["used"], true);
    assert_eq!(recent[2]["timed_out_calls"], 1);
    let reasons = &document["code_mode"]["counters"]["fallback_by_reason"];
    assert_eq!(
        reasons["runtime_error"].as_u64().unwrap() + reasons["circuit_opened"].as_u64().unwrap(),
        2
    );
    let servers = document["mcp_servers"].as_array().unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["name"], "faults");
    assert_eq!(servers[0]["state"], "ready");
}

#[tokio::test]
async fn requests_counted_by_route_and_outcome() {
    let fake = FakeOpenAi::start().await;
    let options = Options {
        http: HTTP,
        ..Default::default()
    };
    let gateway = TestGateway::start_with(&fake.base_url(), options).await;
    gateway
        .send(message("session-with-a-unique-id", "hi"))
        .await;
    gateway.history("session-with-a-unique-id").await.unwrap();
    gateway
        .client
        .get(gateway.url("/no/such/path"))
        .send()
        .await
        .unwrap();

    let body = scrape(&gateway).await;
    let parsed = samples(&body);
    let route = |route: &str, class: &str| {
        format!("xiaomaolv_http_requests_total{{route=\"{route}\",status_class=\"{class}\"}}")
    };
    assert_eq!(value(&parsed, &route("/v1/messages", "2xx")), 1.0);
    assert_eq!(
        value(&parsed, &route("/v1/sessions/{session_id}/messages", "2xx")),
        1.0
    );
    assert_eq!(value(&parsed, &route("unmatched", "4xx")), 1.0);
    assert!(
        !body.contains("session-with-a-unique-id"),
        "an id became a label"
    );
    assert!(
        !body.contains("/no/such/path"),
        "an unknown path became a label"
    );
    let provider = "xiaomaolv_provider_requests_total{provider=\"fake\",outcome=\"ok\"}";
    assert_eq!(value(&parsed, provider), 1.0);
    assert_eq!(
        value(&parsed, "xiaomaolv_gateway_overhead_seconds_count"),
        1.0
    );
    let build = format!(
        "xiaomaolv_build_info{{version=\"{}\",profile=\"debug\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&parsed, &build), 1.0);
}

fn binary_config(provider_url: &str, http: &str) -> String {
    format!(
        "[app]\nbind = \"127.0.0.1:0\"\n\n[store]\nurl = \"sqlite://history.db\"\n\n\
         [providers.fake]\nkind = \"openai-compatible\"\nbase_url = \"{provider_url}\"\n\
         model = \"fake-model\"\n\n[channels.http]\n{http}\n"
    )
}

#[tokio::test]
async fn startup_logs_disabled_endpoints() {
    let fake = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xiaomaolv.toml");
    std::fs::write(&path, binary_config(&fake.base_url(), "")).unwrap();
    let mut gateway = GatewayProcess::start(dir.path(), &["--config", path.to_str().unwrap()], &[]);
    gateway.drain_log(Duration::from_millis(300));
    let disabled = gateway
        .log
        .iter()
        .any(|line| line.contains("diagnostics endpoints are disabled"));
    assert!(disabled, "{:#?}", gateway.log);
    let response = reqwest::get(gateway.url("/v1/code-mode/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn diag_token_never_logged() {
    let fake = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("xiaomaolv.toml");
    let http = "diag_bearer_token = \"${DIAG}\"";
    std::fs::write(&path, binary_config(&fake.base_url(), http)).unwrap();
    let secret = "diag-secret-never-logged";
    let mut gateway = GatewayProcess::start(
        dir.path(),
        &["--config", path.to_str().unwrap()],
        &[("DIAG", secret)],
    );
    let client = reqwest::Client::new();
    let url = gateway.url("/v1/code-mode/metrics");
    let good = client.get(&url).bearer_auth(secret).send().await.unwrap();
    assert_eq!(good.status(), 200);
    let wrong = format!("{secret}-almost");
    let bad = client.get(&url).bearer_auth(&wrong).send().await.unwrap();
    assert_eq!(bad.status(), 401);
    gateway.wait_for_log("without a valid bearer token", Duration::from_secs(10));
    gateway.signal("TERM");
    gateway.wait_exit(Duration::from_secs(10));
    gateway.drain_log(Duration::from_secs(2));
    let enabled = gateway
        .log
        .iter()
        .any(|line| line.contains("endpoints are enabled"));
    assert!(enabled, "{:#?}", gateway.log);
    for line in &gateway.log {
        assert!(!line.contains(secret), "token in log: {line}");
    }
}
