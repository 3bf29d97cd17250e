//! The engine process's side: read the request, run the program, relay its tool calls.

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::sync::oneshot;

use crate::code_mode::sandbox::{self, CallSink};

use super::protocol::{ChildMessage, EngineRequest, Reply};

/// Failure of the engine process before or after running its program.
#[derive(Debug, thiserror::Error)]
enum ChildError {
    #[error("failed to set up the protocol output: {0}")]
    Output(io::Error),
    #[error("failed to read the request: {0}")]
    ReadRequest(io::Error),
    #[error("invalid request: {0}")]
    Request(serde_json::Error),
    #[error("failed to start the reply reader: {0}")]
    Thread(io::Error),
    #[error("failed to build the async runtime: {0}")]
    Runtime(io::Error),
    #[error("failed to send the result: {0}")]
    Write(io::Error),
}

/// Runs one program as the engine process and returns the process's exit code. The hidden
/// subcommand calls this on the main thread, before any async runtime exists.
pub fn serve_engine() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xiaomaolv code-mode engine: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), ChildError> {
    let output = protocol_output().map_err(ChildError::Output)?;
    let request = read_request()?;
    let link = Arc::new(GatewayLink::new(output));
    let reader = link.clone();
    std::thread::Builder::new()
        .name("engine-replies".to_owned())
        .stack_size(256 * 1024)
        .spawn(move || reader.read_replies())
        .map_err(ChildError::Thread)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(ChildError::Runtime)?;
    let run = runtime.block_on(sandbox::execute(
        &request.code,
        &request.bindings,
        link.clone().sink(),
        request.limits.into(),
    ));
    link.send(&ChildMessage::Done(run.into()))
        .map_err(ChildError::Write)
}

/// Takes stdout for the protocol and points file descriptor 1 at stderr, so that anything else
/// that prints, such as a dependency, cannot corrupt the protocol.
fn protocol_output() -> io::Result<std::fs::File> {
    let protocol = io::stdout().as_fd().try_clone_to_owned()?;
    // SAFETY: dup2 only swaps standard descriptors, which stay open for the life of the process.
    if unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::fs::File::from(protocol))
}

fn read_request() -> Result<EngineRequest, ChildError> {
    let mut line = String::new();
    io::stdin()
        .read_line(&mut line)
        .map_err(ChildError::ReadRequest)?;
    serde_json::from_str(&line).map_err(ChildError::Request)
}

/// The child's side of the pipes: sends calls, and hands each reply to the call waiting for it.
struct GatewayLink {
    output: Mutex<std::fs::File>,
    /// Calls waiting for a reply, by id. `None` once stdin is closed and no reply can come.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<String>>>>,
    next_id: AtomicU64,
}

impl GatewayLink {
    fn new(output: std::fs::File) -> Self {
        Self {
            output: Mutex::new(output),
            pending: Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }

    fn sink(self: Arc<Self>) -> CallSink {
        Arc::new(move |index, arguments| {
            let link = self.clone();
            Box::pin(async move { link.call(index, arguments).await })
        })
    }

    /// Sends one call and waits for its reply. A call that cannot reach the gateway is rejected.
    async fn call(&self, index: usize, arguments: String) -> String {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        if !self.register(id, sender) {
            return rejection("the gateway closed the connection");
        }
        let message = ChildMessage::Call {
            id,
            index,
            arguments,
        };
        if let Err(err) = self.send(&message) {
            self.lock_pending()
                .as_mut()
                .map(|pending| pending.remove(&id));
            return rejection(&format!("failed to send the call to the gateway: {err}"));
        }
        receiver
            .await
            .unwrap_or_else(|_| rejection("the gateway closed the connection before replying"))
    }

    /// Registers a call before it is sent, so that its reply always finds it.
    fn register(&self, id: u64, sender: oneshot::Sender<String>) -> bool {
        let mut pending = self.lock_pending();
        let Some(pending) = pending.as_mut() else {
            return false;
        };
        pending.insert(id, sender);
        true
    }

    fn send(&self, message: &ChildMessage) -> io::Result<()> {
        let mut line = serde_json::to_vec(message)?;
        line.push(b'\n');
        let mut output = self
            .output
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        output.write_all(&line)
    }

    /// Hands replies to their calls until stdin ends, then rejects the calls still waiting.
    fn read_replies(&self) {
        for line in io::stdin().lines() {
            let Ok(line) = line else { break };
            let reply: Reply = match serde_json::from_str(&line) {
                Ok(reply) => reply,
                Err(err) => {
                    eprintln!("xiaomaolv code-mode engine: ignoring an invalid reply: {err}");
                    continue;
                }
            };
            let waiting = self
                .lock_pending()
                .as_mut()
                .and_then(|p| p.remove(&reply.id));
            if let Some(sender) = waiting {
                // The call is gone only if the run already ended; nothing is waiting then.
                let _ = sender.send(reply.envelope);
            }
        }
        self.lock_pending().take();
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<String>>>> {
        self.pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// Builds the envelope of a call that failed before reaching a tool.
fn rejection(message: &str) -> String {
    json!({ "ok": false, "error": message }).to_string()
}
