//! Runs the real `xiaomaolv` binary as a child process and reads its JSON log lines.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

impl GatewayProcess {
    /// Starts `xiaomaolv serve --log-format json` with `args`, in `dir`, with exactly `env` set
    /// (plus PATH), and waits for its "Listening" log line.
    pub fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut process = Self::spawn(dir, args, env);
        process.wait_until_listening(Duration::from_secs(30));
        process
    }

    /// Waits for the "Listening" log line and records the address in it.
    pub fn wait_until_listening(&mut self, timeout: Duration) {
        let listening = self.wait_for_log("Listening", timeout);
        self.addr = listening["addr"].as_str().unwrap().parse().unwrap();
    }

    /// Starts the binary as [`GatewayProcess::start`] does, without waiting for it to listen.
    pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(super::binary());
        command
            .arg("serve")
            .arg("--log-format")
            .arg("json")
            .args(args)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("gateway binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a JSON log line whose message contains `needle` and returns it.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "no log line containing {needle:?}; log so far:\n{}",
                    self.log.join("\n")
                ),
            };
            self.log.push(line.clone());
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if value["message"]
                .as_str()
                .is_some_and(|m| m.contains(needle))
            {
                return value;
            }
        }
    }

    /// Collects the remaining log lines until the process closes stderr.
    pub fn drain_log(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.log.push(line);
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not exit within {timeout:?}");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
