//! The real binary: `check-config`, embedded defaults, JSON logs without secrets, SIGTERM.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::process::GatewayProcess;
use crate::common::{FakeOpenAi, Reply, binary, message};

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("xiaomaolv.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn config_for(provider_url: &str, extra_provider: &str) -> String {
    format!(
        r#"[app]
bind = "127.0.0.1:0"
default_provider = "fake"
shutdown_grace_ms = 5000

[store]
url = "sqlite://history.db"

[providers.fake]
kind = "openai-compatible"
base_url = "{provider_url}"
model = "fake-model"
{extra_provider}
"#
    )
}

/// Runs the binary with `args` in `dir`, with only `env` in its environment.
fn run_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn check_config(path: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(binary());
    command.arg("check-config").arg(path).env_clear();
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn check_config_without_file_reads_what_serve_reads() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_for("http://127.0.0.1:9/v1", "").replace("[app]", "[app]\nbogus_key = 1");
    write_config(&dir, &text);
    let run = |env: &[(&str, &str)]| {
        let output = run_in(dir.path(), &["check-config"], env);
        let stderr = String::from_utf8(output.stderr).unwrap();
        (output.status.code().unwrap(), stderr)
    };

    // ./xiaomaolv.toml, as `serve` would read it.
    let (code, stderr) = run(&[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("xiaomaolv.toml"), "{stderr}");
    assert!(stderr.contains("bogus_key"), "{stderr}");

    // XIAOMAOLV_CONFIG wins over ./xiaomaolv.toml.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, config_for("http://127.0.0.1:9/v1", "")).unwrap();
    let (code, stderr) = run(&[("XIAOMAOLV_CONFIG", other.to_str().unwrap())]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("other.toml: configuration is valid"),
        "{stderr}"
    );
}

#[test]
fn check_config_prints_settings_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[channels.http]\napi_bearer_token = \"${{API_TOKEN}}\"\n",
        config_for("http://127.0.0.1:9/v1", "api_key = \"${KEY}\"")
    );
    let path = write_config(&dir, &text);
    let (code, stdout, stderr) = check_config(
        &path,
        &[("KEY", "sk-live-abcdef"), ("API_TOKEN", "tok-123456")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("base_url = \"http://127.0.0.1:9/v1\""),
        "{stdout}"
    );
    assert!(stdout.contains("api_key = \"********\""), "{stdout}");
    assert!(
        stdout.contains("api_bearer_token = \"********\""),
        "{stdout}"
    );
    assert!(!stdout.contains("sk-live-abcdef"), "{stdout}");
    assert!(!stderr.contains("sk-live-abcdef"), "{stderr}");
    assert!(!stdout.contains("tok-123456"));
    assert!(stderr.contains("configuration is valid"), "{stderr}");
}

#[test]
fn check_config_fails_on_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_for("http://127.0.0.1:9/v1", "modle = \"x\"");
    let path = write_config(&dir, &text);
    let (code, stdout, stderr) = check_config(&path, &[]);
    assert_ne!(code, 0);
    assert!(stdout.is_empty());
    assert!(stderr.contains("providers.fake.modle"), "{stderr}");
    assert!(stderr.contains(":13:"), "{stderr}");
}

#[test]
fn check_config_fails_on_unset_variable() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_for("${PROVIDER_URL}", "");
    let path = write_config(&dir, &text);
    let (code, _, stderr) = check_config(&path, &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("PROVIDER_URL"), "{stderr}");
    assert!(stderr.contains("providers.fake.base_url"), "{stderr}");
}

#[test]
fn check_config_fails_on_missing_file() {
    let (code, _, stderr) = check_config("/nonexistent/xiaomaolv.toml", &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent/xiaomaolv.toml"), "{stderr}");
}

/// Holds a port of 127.0.0.1 and returns the listener, the port and a config that binds it.
fn config_with_busy_port() -> (std::net::TcpListener, u16, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let text = config_for("http://127.0.0.1:9/v1", "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    (listener, port, text)
}

#[test]
fn port_in_use_stops_before_store_opens() {
    let (_busy_listener, port, text) = config_with_busy_port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &text);

    let output = Command::new(binary())
        .args(["serve", "--config", &path])
        .current_dir(dir.path())
        .env_clear()
        .output()
        .unwrap();

    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(
        !dir.path().join("history.db").exists(),
        "the store was not opened, so no migration ran"
    );
}

/// Runs `serve --log-format json` with `config` and `env`, checks that every stderr line is JSON,
/// and returns the last one, which must report the error that stopped it.
fn json_fatal_line(dir: &tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Value {
    let path = write_config(dir, config);
    let args = ["serve", "--log-format", "json", "--config", &path];
    let output = run_in(dir.path(), &args, env);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let last = lines.last().expect("at least one log line").clone();
    assert_eq!(last["level"], "ERROR", "{stderr}");
    last
}

#[test]
fn fatal_error_logs_as_json() {
    let (_busy_listener, port, text) = config_with_busy_port();
    let dir = tempfile::tempdir().unwrap();
    let expected = format!("cannot listen on 127.0.0.1:{port}");

    // A RUST_LOG filter that drops every event must not hide the error.
    for rust_log in ["info", "off"] {
        let last = json_fatal_line(&dir, &text, &[("RUST_LOG", rust_log)]);
        let error = last["error"].as_str().unwrap();
        assert!(error.contains(&expected), "RUST_LOG={rust_log}: {last}");
    }

    // An error in the config comes before logging starts, and the flag still makes it JSON.
    let bad = config_for("http://127.0.0.1:9/v1", "").replace("[app]", "[app]\nbogus_key = 1");
    let last = json_fatal_line(&dir, &bad, &[]);
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("bogus_key"), "{last}");
}

#[tokio::test]
async fn serves_on_embedded_defaults() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("from defaults"));
    let dir = tempfile::tempdir().unwrap();
    let base_url = fake.base_url();
    let gateway = GatewayProcess::start(
        dir.path(),
        &[],
        &[
            ("XIAOMAOLV_BIND", "127.0.0.1:0"),
            ("OPENAI_BASE_URL", &base_url),
            ("OPENAI_MODEL", "m1"),
        ],
    );
    let client = reqwest::Client::new();
    let response = client
        .post(gateway.url("/v1/messages"))
        .json(&message("s1", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["reply"],
        "from defaults"
    );
    assert_eq!(fake.requests()[0].body["model"], "m1");
    assert!(
        dir.path().join("xiaomaolv.db").exists(),
        "default store file in the working directory"
    );
}

#[tokio::test]
async fn logs_are_json_and_never_contain_the_api_key() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::status(401, r#"{"error":{"message":"invalid key"}}"#));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config_for(&fake.base_url(), "api_key = \"${KEY}\""));
    let mut gateway = GatewayProcess::start(
        dir.path(),
        &["--config", &path],
        &[("KEY", "sk-never-log-me")],
    );
    let client = reqwest::Client::new();
    let response = client
        .post(gateway.url("/v1/messages"))
        .json(&message("s1", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert!(!body.contains("sk-never-log-me"));
    assert_eq!(
        fake.requests()[0].authorization.as_deref(),
        Some("Bearer sk-never-log-me")
    );

    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));
    gateway.drain_log(Duration::from_secs(2));
    assert!(gateway.log.len() >= 3);
    for line in &gateway.log {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "not JSON: {line}"
        );
        assert!(!line.contains("sk-never-log-me"), "secret in log: {line}");
    }
}

/// Builds a chat completion whose `usage.prompt_tokens` is the string `value`, where a number
/// belongs, as a server that echoes the request's `Authorization` header into it would send.
fn completion_with_text_usage(value: &str) -> Value {
    let mut body = crate::common::fake_openai::completion("unread", Some((1, 1)));
    body["usage"]["prompt_tokens"] = serde_json::json!(value);
    body
}

#[tokio::test]
async fn echoed_api_key_masked_in_response_and_log() {
    // "QZX" occurs nowhere else in the log, so any part of the key that leaks is found.
    let key = "QZX-canary-7f3a9e2b";
    let echoed = format!("Bearer {key}");
    let fake = FakeOpenAi::start().await;
    // A reply that does not parse, once to a plain and once to a streaming request.
    fake.push(Reply::Json(completion_with_text_usage(&echoed)));
    fake.push(Reply::Json(completion_with_text_usage(&echoed)));
    // An error whose 300-character quote ends inside the key.
    let cut = format!("{}{echoed}", "x".repeat(285));
    let error = serde_json::json!({ "error": { "message": cut } });
    fake.push(Reply::status(400, &error.to_string()));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config_for(&fake.base_url(), "api_key = \"${KEY}\""));
    let mut gateway = GatewayProcess::start(dir.path(), &["--config", &path], &[("KEY", key)]);

    let client = reqwest::Client::new();
    for (session, stream) in [("plain", false), ("streamed", true), ("cut", false)] {
        let mut request = message(session, "hi");
        request["stream"] = serde_json::json!(stream);
        let response = client
            .post(gateway.url("/v1/messages"))
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "{session}");
        let body = response.text().await.unwrap();
        assert!(body.contains("Bearer ********"), "{session}: {body}");
        assert!(!body.contains("QZX"), "{session}: {body}");
    }
    assert_eq!(fake.request_count(), 3);
    assert_eq!(
        fake.requests()[0].authorization.as_deref(),
        Some(echoed.as_str())
    );

    gateway.signal("TERM");
    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));
    gateway.drain_log(Duration::from_secs(2));
    let failures = gateway
        .log
        .iter()
        .filter(|line| line.contains("Request failed"))
        .count();
    assert_eq!(failures, 3, "log:\n{}", gateway.log.join("\n"));
    for line in &gateway.log {
        assert!(!line.contains("QZX"), "key in log: {line}");
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_turn_finish() {
    let fake = FakeOpenAi::start().await;
    fake.push(Reply::text("made it").after(Duration::from_millis(800)));
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(&dir, &config_for(&fake.base_url(), ""));
    let mut gateway = GatewayProcess::start(dir.path(), &["--config", &path], &[]);

    let url = gateway.url("/v1/messages");
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&message("s1", "hi"))
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    gateway.signal("TERM");
    gateway.wait_for_log("Shutdown signal received", Duration::from_secs(5));

    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["reply"], "made it");
    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));
    let refused = reqwest::Client::new()
        .get(gateway.url("/health"))
        .send()
        .await;
    assert!(refused.is_err());
}

#[tokio::test]
async fn warns_when_exposed_without_api_token() {
    let fake = FakeOpenAi::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_for(&fake.base_url(), "").replace("127.0.0.1:0", "0.0.0.0:0");
    let path = write_config(&dir, &text);
    let mut gateway = GatewayProcess::start(dir.path(), &["--config", &path], &[]);
    let warning = gateway
        .log
        .iter()
        .find(|l| l.contains("non-loopback"))
        .cloned();
    let warning = warning.unwrap_or_else(|| {
        gateway
            .wait_for_log("non-loopback", Duration::from_secs(5))
            .to_string()
    });
    assert!(warning.contains("WARN"), "{warning}");
}

/// Returns the gateway's "Listening" log line.
fn listening_line(gateway: &GatewayProcess) -> Value {
    let line = gateway
        .log
        .iter()
        .find(|line| line.contains("\"Listening\""))
        .expect("a Listening log line");
    serde_json::from_str(line).unwrap()
}

#[tokio::test]
async fn worker_threads_sets_runtime_threads() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    let automatic = if cpus <= xiaomaolv::cli::serve::CURRENT_THREAD_MAX_CPUS {
        ("CurrentThread", 1)
    } else {
        ("MultiThread", cpus)
    };
    let cases = [
        (0, automatic.0, automatic.1),
        (1, "CurrentThread", 1),
        (3, "MultiThread", 3),
    ];
    for (worker_threads, flavor, workers) in cases {
        let fake = FakeOpenAi::start().await;
        for i in 0..8 {
            fake.push(Reply::text(&format!("reply {i}")).after(Duration::from_millis(100)));
        }
        let dir = tempfile::tempdir().unwrap();
        let config = config_for(&fake.base_url(), "").replace(
            "shutdown_grace_ms = 5000",
            &format!("shutdown_grace_ms = 5000\nworker_threads = {worker_threads}"),
        );
        let path = write_config(&dir, &config);
        let gateway = GatewayProcess::start(dir.path(), &["--config", &path], &[]);

        let client = reqwest::Client::new();
        let turns = (0..8).map(|i| {
            client
                .post(gateway.url("/v1/messages"))
                .json(&message(&format!("s{i}"), "hi"))
                .send()
        });
        let mut replies = Vec::new();
        for response in futures_util::future::join_all(turns).await {
            let response = response.unwrap();
            assert_eq!(response.status(), 200, "worker_threads = {worker_threads}");
            let body = response.json::<Value>().await.unwrap();
            replies.push(body["reply"].as_str().unwrap().to_owned());
        }
        replies.sort();
        let expected: Vec<String> = (0..8).map(|i| format!("reply {i}")).collect();
        assert_eq!(replies, expected, "worker_threads = {worker_threads}");
        let line = listening_line(&gateway);
        assert_eq!(line["runtime"], flavor, "{line}");
        assert_eq!(line["runtime_workers"], workers, "{line}");
    }
}
