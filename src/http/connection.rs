//! Limits on client connections: the wait for a new connection's first bytes, the HTTP/1 header
//! timeout, the HTTP/2 keep-alive pings, and a rate-limited log of failed accepts.
//!
//! hyper-util's auto builder reads the first bytes of a connection to tell HTTP/1 from HTTP/2 and
//! waits for them without a limit, and hyper's HTTP/1 header timeout starts only once the HTTP/1
//! path is chosen. So the gateway waits for those bytes itself, under the header timeout, before
//! it hands the connection to hyper. An HTTP/2 connection is then kept in check by PING frames: a
//! client that does not acknowledge one in time is disconnected.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::Service;

use crate::config::HttpChannelConfig;

/// The client connection preface of HTTP/2 (RFC 9113, section 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long the wait for the protocol sleeps before it looks again, when the client has sent
/// only the start of the HTTP/2 preface. `POST` also starts with its `P`, so a request line split
/// after its first byte takes this path once.
const PARTIAL_PREFACE_RECHECK: Duration = Duration::from_millis(20);

/// Shortest time between two log lines about failed accepts.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The open client connections and how new ones are served.
pub(super) struct Connections {
    builder: Arc<auto::Builder<TokioExecutor>>,
    header_read_timeout: Duration,
    graceful: GracefulShutdown,
    /// Cancelled when shutdown begins, which closes the connections that have not yet sent
    /// enough to tell their protocol.
    closing: CancellationToken,
}

impl Connections {
    pub(super) fn new(http: &HttpChannelConfig) -> Self {
        Self {
            builder: Arc::new(builder(http)),
            header_read_timeout: http.header_read_timeout(),
            graceful: GracefulShutdown::new(),
            closing: CancellationToken::new(),
        }
    }

    /// Serves `app` on `stream` in a new task once the client has sent its first bytes, or closes
    /// the connection when it sends none within the header timeout.
    pub(super) fn spawn(&self, stream: TcpStream, peer: SocketAddr, app: Router) {
        let _ = stream.set_nodelay(true);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().call(request)
        });
        let builder = Arc::clone(&self.builder);
        let header_read_timeout = self.header_read_timeout;
        let watcher = self.graceful.watcher();
        let closing = self.closing.clone();
        tokio::spawn(async move {
            let started = tokio::select! {
                started = tokio::time::timeout(header_read_timeout, wait_for_protocol(&stream)) => {
                    started
                }
                () = closing.cancelled() => return,
            };
            match started {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "Connection failed before its first request");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "Closing a connection that sent no request in time");
                    return;
                }
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %err, "Connection ended with an error");
            }
        });
    }

    /// Closes the connections that have sent nothing yet, starts a graceful shutdown of the
    /// others, which close after their current requests, and waits until all are closed.
    pub(super) async fn shut_down(self) {
        self.closing.cancel();
        self.graceful.shutdown().await;
    }
}

/// Returns the connection builder with the header timeout and the HTTP/2 pings of `http`.
fn builder(http: &HttpChannelConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_read_timeout());
    // NOTE: a client that acknowledges every PING keeps an HTTP/2 connection open without
    // sending a request, because hyper has no idle timeout for HTTP/2.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(http.http2_keep_alive_interval())
        .keep_alive_timeout(http.http2_keep_alive_interval());
    builder
}

/// Waits until `stream` has sent enough to tell its protocol: a byte that differs from the
/// HTTP/2 preface, or the whole preface. Returns `false` when the client closed the connection
/// first. The bytes stay in the socket for hyper to read.
async fn wait_for_protocol(stream: &TcpStream) -> io::Result<bool> {
    let mut start = [0u8; H2_PREFACE.len()];
    loop {
        let read = stream.peek(&mut start).await?;
        if read == 0 {
            return Ok(false);
        }
        if read == start.len() || start[..read] != H2_PREFACE[..read] {
            return Ok(true);
        }
        // `peek` returns at once while bytes are waiting, so it cannot wait for more of them.
        tokio::time::sleep(PARTIAL_PREFACE_RECHECK).await;
    }
}

/// The log of failed accepts, at most one line per [`ACCEPT_ERROR_LOG_INTERVAL`].
///
/// When the process runs out of file descriptors, every accept fails until a connection closes,
/// and the accept loop retries every few milliseconds.
#[derive(Debug, Default)]
pub(super) struct AcceptErrorLog {
    last_line: Option<Instant>,
    /// Failures since the last line, which are not logged yet.
    unlogged: u64,
}

impl AcceptErrorLog {
    /// Logs `err` with the number of failures since the last line, or counts it when a line was
    /// written less than [`ACCEPT_ERROR_LOG_INTERVAL`] ago.
    pub(super) fn record(&mut self, err: &io::Error) {
        let now = Instant::now();
        let recent = self
            .last_line
            .is_some_and(|last| now.duration_since(last) < ACCEPT_ERROR_LOG_INTERVAL);
        if recent {
            self.unlogged += 1;
            return;
        }
        // `failed_accepts` counts this failure and the unlogged ones since the last line.
        tracing::warn!(
            error = %err,
            failed_accepts = self.unlogged + 1,
            "Failed to accept a connection"
        );
        self.last_line = Some(now);
        self.unlogged = 0;
    }
}
