//! Starts the gateway in-process on port 0 against a given provider URL.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use xiaomaolv::config::Config;
use xiaomaolv::http::AppState;

/// Extra TOML lines for the tables of the test config.
#[derive(Default, Clone)]
pub struct Options {
    pub app: &'static str,
    pub provider: &'static str,
    pub http: &'static str,
    pub agent: &'static str,
    /// Extra top-level TOML, e.g. `[mcp.servers.NAME]` tables.
    pub extra: String,
    /// `store.url`; default: a SQLite file in the gateway's temporary directory.
    pub store_url: Option<String>,
}

pub struct TestGateway {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: TempDir,
}

/// The config text the tests run with, on `options.store_url` or else the SQLite file `db_path`.
pub fn config_text(provider_url: &str, db_path: &str, options: &Options) -> String {
    let store_url = options
        .store_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{db_path}"));
    format!(
        r#"
[app]
bind = "127.0.0.1:0"
default_provider = "fake"
shutdown_grace_ms = 5000
{app}

[store]
url = "{store_url}"

[providers.fake]
kind = "openai-compatible"
base_url = "{provider_url}"
model = "fake-model"
retry_initial_backoff_ms = 10
retry_max_backoff_ms = 2000
{provider}

[channels.http]
{http}

[agent]
{agent}

{extra}
"#,
        app = options.app,
        provider = options.provider,
        http = options.http,
        agent = options.agent,
        extra = options.extra,
    )
}

impl TestGateway {
    pub async fn start(provider_url: &str) -> Self {
        Self::start_with(provider_url, Options::default()).await
    }

    pub async fn start_with(provider_url: &str, options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("history.db");
        let text = config_text(provider_url, db.to_str().unwrap(), &options);
        let config = Config::parse(&text, "test.toml", &|_| None).expect("test config is valid");
        let engine = xiaomaolv::code_mode::subprocess::EngineCommand {
            program: env!("CARGO_BIN_EXE_xiaomaolv").into(),
        };
        let state = xiaomaolv::cli::serve::build_state_with_engine(&config, engine)
            .await
            .unwrap();
        state.agent.hub().settled(Duration::from_secs(60)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let server = tokio::spawn(xiaomaolv::http::serve(
            listener,
            state.clone(),
            shutdown,
            config.app.shutdown_grace(),
        ));
        Self {
            addr,
            client: reqwest::Client::new(),
            state,
            shutdown: Some(tx),
            server: Some(server),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post_message(&self, body: Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/messages"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Posts and returns status and JSON body.
    pub async fn send(&self, body: Value) -> (u16, Value) {
        let response = self.post_message(body).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /health`: the status and the JSON body.
    pub async fn health(&self) -> (u16, Value) {
        let response = self.client.get(self.url("/health")).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The stored history of a session, or `None` on 404.
    pub async fn history(&self, session_id: &str) -> Option<Vec<Value>> {
        let url = self.url(&format!("/v1/sessions/{session_id}/messages"));
        let response = self.client.get(url).send().await.unwrap();
        if response.status() == 404 {
            return None;
        }
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        Some(body["messages"].as_array().unwrap().clone())
    }

    /// Sends the shutdown signal and waits for the server to drain.
    pub async fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("server drains within 10 s")
                .unwrap()
                .unwrap();
        }
    }
}

pub fn message(session: &str, text: &str) -> Value {
    serde_json::json!({ "session_id": session, "user_id": "user-1", "text": text })
}
