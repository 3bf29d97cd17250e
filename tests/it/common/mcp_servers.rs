//! Config snippets and child processes for the real MCP servers the tests use.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use xiaomaolv::config::{McpConfig, McpServerConfig, McpServerTransport, Secret};

fn repo_path(relative: &str) -> String {
    format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"))
}

/// Entry script of `@modelcontextprotocol/server-everything` installed by
/// `scripts/test-mcp-servers.sh`.
pub fn everything_script() -> String {
    repo_path("tests/mcp/node_modules/@modelcontextprotocol/server-everything/dist/index.js")
}

pub fn python() -> String {
    repo_path("target/mcp-venv/bin/python")
}

pub fn fault_server_script() -> String {
    repo_path("tests/mcp/fault_server.py")
}

pub fn stdio(
    command: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout_ms: u64,
) -> McpServerConfig {
    McpServerConfig {
        enabled: true,
        timeout_ms,
        capabilities: None,
        transport: McpServerTransport::Stdio {
            command: command.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), Secret::new(v.to_string())))
                .collect(),
            cwd: None,
        },
    }
}

pub fn everything_stdio() -> McpServerConfig {
    stdio(
        "node",
        &[&everything_script(), "stdio"],
        &[("EXAMPLE", "1")],
        20_000,
    )
}

pub fn fault_server(timeout_ms: u64) -> McpServerConfig {
    stdio(
        &python(),
        &[&fault_server_script()],
        &[("EXAMPLE", "1")],
        timeout_ms,
    )
}

pub fn http(url: &str) -> McpServerConfig {
    McpServerConfig {
        enabled: true,
        timeout_ms: 20_000,
        capabilities: None,
        transport: McpServerTransport::Http {
            url: url.to_owned(),
            headers: BTreeMap::new(),
        },
    }
}

pub fn hub_config(servers: Vec<(&str, McpServerConfig)>) -> McpConfig {
    McpConfig {
        servers: servers
            .into_iter()
            .map(|(n, s)| (n.to_owned(), s))
            .collect(),
    }
}

/// server-everything serving streamable HTTP on a free loopback port.
pub struct EverythingHttp {
    child: Child,
    pub url: String,
}

impl EverythingHttp {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("node")
            .args([&everything_script(), "streamableHttp"])
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node starts server-everything");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server-everything did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/mcp"),
        }
    }
}

impl Drop for EverythingHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
