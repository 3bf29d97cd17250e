//! End to end against a real model: SmolLM2-135M-Instruct served by llama.cpp's
//! OpenAI-compatible server (`scripts/local-model.sh`), and the real gateway binary.
//!
//! The first run installs the model server into `target/model-venv`, which compiles llama.cpp
//! (about ten minutes on two cores); `.ci/run` does that before the tests start.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::common::process::GatewayProcess;

struct ModelServer {
    child: Child,
    base_url: String,
}

impl ModelServer {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log =
            std::fs::File::create(std::env::temp_dir().join(format!("model-{port}.log"))).unwrap();
        let child = Command::new("scripts/local-model.sh")
            .args(["serve", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("scripts/local-model.sh starts");
        let server = Self {
            child,
            base_url: format!("http://127.0.0.1:{port}/v1"),
        };
        server.wait_ready(Duration::from_secs(900)).await;
        server
    }

    async fn wait_ready(&self, timeout: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let ready = client.get(format!("{}/models", self.base_url)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("model server did not answer within {timeout:?}");
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn real_model_replies_and_history_is_stored() {
    let model = ModelServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"[app]
bind = "127.0.0.1:0"
default_provider = "local"

[store]
url = "sqlite://history.db"

[providers.local]
kind = "openai-compatible"
base_url = "{}"
model = "smollm2"
max_tokens = 48
temperature = 0.0
"#,
        model.base_url
    );
    let path = dir.path().join("xiaomaolv.toml");
    std::fs::write(&path, config).unwrap();
    let gateway = GatewayProcess::start(dir.path(), &["--config", path.to_str().unwrap()], &[]);
    let client = reqwest::Client::new();

    let body = json!({ "session_id": "real-1", "user_id": "tester", "text": "What is the capital of France?" });
    let response = client
        .post(gateway.url("/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    let text = reply["reply"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{reply}");
    assert!(
        reply["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{reply}"
    );

    let streamed = json!({ "session_id": "real-1", "user_id": "tester", "text": "Say it again.", "stream": true });
    let response = client
        .post(gateway.url("/v1/messages"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut sse = String::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        sse.push_str(&String::from_utf8_lossy(&piece.unwrap()));
    }
    let deltas: String = sse
        .split("\n\n")
        .filter(|block| block.starts_with("event: delta"))
        .map(|block| {
            let data: Value = serde_json::from_str(block.split_once("data: ").unwrap().1).unwrap();
            data["text"].as_str().unwrap().to_owned()
        })
        .collect();
    let done = sse
        .split("\n\n")
        .find(|block| block.starts_with("event: done"))
        .expect("done event");
    let done: Value = serde_json::from_str(done.split_once("data: ").unwrap().1).unwrap();
    assert_eq!(deltas, done["reply"].as_str().unwrap());
    assert!(!deltas.trim().is_empty());

    let history: Value = client
        .get(gateway.url("/v1/sessions/real-1/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let messages = history["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4);
    assert_eq!(messages[0]["content"], "What is the capital of France?");
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], text);
    assert_eq!(messages[3]["content"].as_str().unwrap(), deltas);
}

/// Code mode with a model far too small to write programs reliably: whatever it sends, the user
/// gets a reply, and the outcome (a direct answer, a served program, or a fallback with its
/// reason) is recorded in the reply and in the history. Both program deliveries are tried.
#[tokio::test]
async fn real_model_in_code_mode_always_gets_a_reply_with_a_recorded_outcome() {
    let model = ModelServer::start().await;
    for delivery in ["tool", "fenced"] {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            r#"[app]
bind = "127.0.0.1:0"
default_provider = "local"

[store]
url = "sqlite://history.db"

[providers.local]
kind = "openai-compatible"
base_url = "{base_url}"
model = "smollm2"
max_tokens = 64
temperature = 0.0
# The suite runs other tests beside this one on two cores, so one request can be slow.
request_timeout_ms = 300000

[agent]
max_tool_iterations = 1
turn_timeout_ms = 900000

[agent.code_mode]
enabled = true
program_delivery = "{delivery}"

[mcp.servers.everything]
command = "node"
args = ["{everything}", "stdio"]
capabilities = []
"#,
            base_url = model.base_url,
            everything = crate::common::mcp_servers::everything_script(),
        );
        let path = dir.path().join("xiaomaolv.toml");
        std::fs::write(&path, config).unwrap();
        let mut gateway =
            GatewayProcess::start(dir.path(), &["--config", path.to_str().unwrap()], &[]);
        gateway.wait_for_log("MCP server ready", Duration::from_secs(60));
        let client = reqwest::Client::new();
        let session = format!("code-{delivery}");
        let body = json!({
            "session_id": session,
            "user_id": "tester",
            "text": "Use the get_sum tool to add 2 and 40, then tell me the result."
        });
        let response = client
            .post(gateway.url("/v1/messages"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let reply: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{delivery}: {reply}");
        assert!(reply["reply"].is_string(), "{reply}");
        let code_mode = &reply["activity"]["code_mode"];
        let outcome = code_mode["outcome"].as_str().unwrap();
        assert!(
            ["used", "fallback", "direct_answer"].contains(&outcome),
            "{delivery}: {reply}"
        );
        let history: Value = client
            .get(gateway.url(&format!("/v1/sessions/{session}/messages")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let assistant = &history["messages"][1];
        let attempt = &code_mode["attempt"];
        if outcome == "used" {
            assert!(
                attempt.is_object(),
                "a served program has a record: {reply}"
            );
        }
        if outcome == "direct_answer" {
            assert!(attempt.is_null(), "{reply}");
        }
        // A fallback has a record only when the model wrote a program; a request that failed or a
        // native tool call hands over before any program.
        if attempt.is_object() {
            assert_eq!(
                outcome == "fallback",
                attempt["reason"].is_string(),
                "{reply}"
            );
            assert_eq!(&assistant["code_mode"], attempt, "{history}");
        }
        eprintln!("{delivery}: outcome {outcome}, reply {:?}", reply["reply"]);
    }
}
