//! The operator contract against the real tools: `promtool` on a live scrape and on the rules in
//! `deploy/prometheus/`, and a real Prometheus server scraping the gateway with the spec's scrape
//! config. `scripts/install-test-deps.sh` installs both (Debian package `prometheus`); a missing
//! tool fails these tests instead of skipping them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use xiaomaolv::telemetry::names::{self, Kind};

use crate::common::traffic::{DIAG_TOKEN, code_mode_gateway, used_then_circuit_opens};
use crate::common::{FakeOpenAi, TestGateway};
use crate::metrics_endpoint::scrape;

const HTTP: &str = "diag_bearer_token = \"diag-test-token\"\ndiag_rate_limit_per_minute = 0";
const SPEC_RULES: &str = "deploy/prometheus/rules/spec.rules.yml";
const BETTER_RULES: &str = "deploy/prometheus/rules/xiaomaolv.rules.yml";
const SPEC_COPY: &str = "docs/spec/code-mode-observability.md";
const DASHBOARD: &str = "deploy/grafana/xiaomaolv-code-mode.json";

fn repo(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Finds a Prometheus tool on `PATH`, or panics with how to install it.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed; scripts/install-test-deps.sh installs it with \
                 `apt-get install --no-install-recommends prometheus`"
            )
        })
}

fn promtool(args: &[&str]) -> Output {
    Command::new(tool("promtool"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("promtool runs")
}

fn assert_success(output: &Output, command: &str) {
    assert!(
        output.status.success(),
        "{command} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Returns the body of the first fenced `yaml` block after `heading` in the spec copy.
fn spec_yaml_block(heading: &str) -> String {
    let spec = std::fs::read_to_string(repo(SPEC_COPY)).unwrap();
    let section = &spec[spec.find(heading).expect("heading in the spec")..];
    let block = section.split_once("```yaml\n").unwrap().1;
    block.split_once("```").unwrap().0.to_owned()
}

#[test]
fn spec_rules_file_matches_the_spec() {
    let deployed = std::fs::read_to_string(repo(SPEC_RULES)).unwrap();
    assert_eq!(deployed, spec_yaml_block("## Recording/Alert Rule Example"));
}

#[test]
fn promtool_checks_both_rules_files() {
    assert_success(
        &promtool(&["check", "rules", SPEC_RULES, BETTER_RULES]),
        "promtool check rules",
    );
}

#[test]
fn promtool_rule_unit_tests_pass() {
    let output = promtool(&[
        "test",
        "rules",
        "deploy/prometheus/tests/spec.rules.test.yml",
        "deploy/prometheus/tests/xiaomaolv.rules.test.yml",
    ]);
    assert_success(&output, "promtool test rules");
}

#[test]
fn deploy_scrape_config_passes_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("diag-token");
    std::fs::write(&token_file, DIAG_TOKEN).unwrap();
    let config = std::fs::read_to_string(repo("deploy/prometheus/prometheus.yml"))
        .unwrap()
        .replace(
            "/etc/prometheus/xiaomaolv-diag-token",
            token_file.to_str().unwrap(),
        )
        .replace(
            "  - rules/",
            &format!("  - {}/", repo("deploy/prometheus/rules").display()),
        );
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    assert_success(
        &promtool(&["check", "config", path.to_str().unwrap()]),
        "promtool check config",
    );
}

#[tokio::test]
async fn promtool_accepts_live_scrape() {
    let fake = FakeOpenAi::start().await;
    let gateway = code_mode_gateway(&fake, HTTP).await;
    used_then_circuit_opens(&gateway, &fake).await;
    let exposition = scrape(&gateway).await;
    assert!(exposition.contains("xiaomaolv_code_mode_circuit_open 1"));

    let (code, findings) = check_metrics(&exposition);
    assert_eq!(
        findings,
        [PROBE_COUNTER_LINT],
        "promtool check metrics (exit {code:?}) found more than the known name lint"
    );
    assert_eq!(
        code,
        Some(3),
        "exit 3 is lint findings only, 1 a parse error"
    );

    let without_probe_counter: String = exposition
        .lines()
        .filter(|line| !line.contains("xiaomaolv_code_mode_probe_counter"))
        .map(|line| format!("{line}\n"))
        .collect();
    let (code, findings) = check_metrics(&without_probe_counter);
    assert_eq!(findings, Vec::<String>::new());
    assert_eq!(code, Some(0));
}

/// promtool's lint of the name `xiaomaolv_code_mode_probe_counter`, which the older gateway's
/// dashboards need and which therefore stays.
const PROBE_COUNTER_LINT: &str =
    "xiaomaolv_code_mode_probe_counter metric name should not include type 'counter'";

/// Runs `promtool check metrics` on `exposition`; returns its exit code and output lines.
fn check_metrics(exposition: &str) -> (Option<i32>, Vec<String>) {
    use std::io::Write;
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(exposition.as_bytes()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    let findings = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(str::to_owned)
        .collect();
    (output.status.code(), findings)
}

/// A Prometheus server on a loopback port with its own storage, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Runs an instant query and returns its result vector, empty while Prometheus is not up.
    async fn query(&self, query: &str) -> Vec<Value> {
        let base = format!("{}/api/v1/query", self.url);
        let url = reqwest::Url::parse_with_params(&base, [("query", query)]).unwrap();
        let Ok(response) = reqwest::Client::new().get(url).send().await else {
            return Vec::new();
        };
        let body: Value = response.json().await.unwrap_or_default();
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `query` until `accept` returns true for its result, or fails after `timeout`.
    async fn wait_for(
        &self,
        query: &str,
        timeout: Duration,
        accept: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let result = self.query(query).await;
            if accept(&result) {
                return result;
            }
            assert!(
                Instant::now() < deadline,
                "`{query}` did not reach the expected value in {timeout:?}; last result: \
                 {result:?}\nprometheus log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Returns the value of the only sample in an instant-query result.
fn single_value(result: &[Value]) -> Option<f64> {
    match result {
        [sample] => sample["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

/// Renders the spec's scrape config as an operator deploys it: `${HTTP_DIAG_BEARER_TOKEN}` and the target
/// filled in (Prometheus does not expand variables itself), with short intervals, both rules
/// files, and a second job whose token is wrong.
fn prometheus_config(gateway: &TestGateway) -> String {
    let target = gateway.addr.to_string();
    let scrape = spec_yaml_block("## Prometheus Scrape Example")
        .replace("${HTTP_DIAG_BEARER_TOKEN}", DIAG_TOKEN)
        .replace("127.0.0.1:8080", &target);
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\n\
         rule_files:\n  - {spec}\n  - {better}\n\n{scrape}\
         \x20 - job_name: xiaomaolv-wrong-token\n\
         \x20   metrics_path: /v1/code-mode/metrics\n\
         \x20   static_configs:\n\
         \x20     - targets: [\"{target}\"]\n\
         \x20   authorization:\n\
         \x20     type: Bearer\n\
         \x20     credentials: not-the-diag-token\n",
        spec = repo(SPEC_RULES).display(),
        better = repo(BETTER_RULES).display(),
    )
}

#[tokio::test]
async fn prometheus_scrapes_the_gateway_with_the_spec_config() {
    let fake = FakeOpenAi::start().await;
    let gateway = code_mode_gateway(&fake, HTTP).await;
    let prometheus = Prometheus::start(&prometheus_config(&gateway));
    let minute = Duration::from_secs(60);

    let up = prometheus
        .wait_for("up{job=\"xiaomaolv-code-mode\"}", minute, |r| {
            single_value(r) == Some(1.0)
        })
        .await;
    assert_eq!(up[0]["metric"]["instance"], gateway.addr.to_string());
    prometheus
        .wait_for("up{job=\"xiaomaolv-wrong-token\"}", minute, |r| {
            single_value(r) == Some(0.0)
        })
        .await;

    used_then_circuit_opens(&gateway, &fake).await;

    let ratio = prometheus
        .wait_for("job:xiaomaolv_code_mode_fallback_ratio_5m", minute, |r| {
            single_value(r).is_some_and(|v| v > 0.0)
        })
        .await;
    let ratio = single_value(&ratio).unwrap();
    assert!(ratio <= 1.0, "fallback ratio {ratio}");
    prometheus
        .wait_for("job:xiaomaolv_code_mode_timeout_ratio_5m", minute, |r| {
            single_value(r).is_some_and(|v| v > 0.0)
        })
        .await;
    prometheus
        .wait_for(
            "instance:xiaomaolv_code_mode_call_timeout_ratio:rate5m",
            minute,
            |r| single_value(r).is_some_and(|v| v > 0.0),
        )
        .await;
    let open = prometheus
        .wait_for(
            "xiaomaolv_code_mode_circuit_open{job=\"xiaomaolv-code-mode\"}",
            minute,
            |r| single_value(r) == Some(1.0),
        )
        .await;
    assert_eq!(single_value(&open), Some(1.0));
    let attempts = prometheus
        .wait_for(
            "xiaomaolv_code_mode_attempts_total{job=\"xiaomaolv-code-mode\"}",
            minute,
            |r| single_value(r) == Some(3.0),
        )
        .await;
    assert_eq!(single_value(&attempts), Some(3.0));
    prometheus
        .wait_for(
            "xiaomaolv_code_mode_circuit_open_total{job=\"xiaomaolv-code-mode\"}",
            minute,
            |r| single_value(r) == Some(1.0),
        )
        .await;
    prometheus
        .wait_for(
            "ALERTS{alertname=\"XiaomaolvCodeModeCircuitOpen\"}",
            minute,
            |r| r.len() == 1 && r[0]["metric"]["alertstate"] == "pending",
        )
        .await;
}

/// Collects every metric name in `expr`: identifiers that start with `xiaomaolv_` or contain a colon
/// (recording rules).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            current.push(c);
            continue;
        }
        if current.starts_with("xiaomaolv_") || current.contains(":xiaomaolv_") {
            names.push(current.clone());
        }
        current.clear();
    }
    names
}

/// Collects every `expr` string anywhere in the dashboard.
fn exprs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr", Value::String(expr)) => found.push(expr.clone()),
                    _ => exprs(inner, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| exprs(item, found)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(repo(DASHBOARD)).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let mut found = Vec::new();
    exprs(&dashboard, &mut found);
    assert!(found.len() >= 10, "only {} queries", found.len());
    let mut exported: Vec<String> = Vec::new();
    for name in names::ALL {
        let base = name.exposed();
        if name.kind == Kind::Histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                exported.push(format!("{base}{suffix}"));
            }
        }
        exported.push(base);
    }
    let rules = std::fs::read_to_string(repo(SPEC_RULES)).unwrap()
        + &std::fs::read_to_string(repo(BETTER_RULES)).unwrap();
    for expr in &found {
        let used = metric_names(expr);
        assert!(!used.is_empty(), "query names no metric: {expr}");
        for name in used {
            let known = if name.contains(':') {
                rules.contains(&format!("record: {name}\n"))
            } else {
                exported.contains(&name)
            };
            assert!(known, "`{name}` is neither exported nor recorded: {expr}");
        }
    }
}
