//! Limits on client connections: the wait for a new connection's first bytes, the HTTP/1 header
//! timeout, the HTTP/2 keep-alive pings and idle timeout, and a rate-limited log of failed
//! accepts.
//!
//! hyper-util's auto builder reads the first bytes of a connection to tell HTTP/1 from HTTP/2 and
//! waits for them without a limit, and hyper's HTTP/1 header timeout starts only once the HTTP/1
//! path is chosen. So the gateway waits for those bytes itself, under the header timeout, before
//! it hands the connection to hyper. An HTTP/2 connection is then kept in check by PING frames,
//! which a client must acknowledge in time. hyper has no idle timeout for HTTP/2, so a client
//! that acknowledges every PING could keep a connection open for ever. The gateway therefore
//! closes an HTTP/2 connection that has had no request in flight for a while.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
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
    http2_idle_timeout: Duration,
    /// The task of every connection, so that shutdown can wait for them.
    tasks: TaskTracker,
    /// Cancelled when shutdown begins. Connections that have not yet sent enough to tell their
    /// protocol close at once, and the others after their current requests.
    closing: CancellationToken,
}

/// The protocol a client chose with its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

impl Connections {
    pub(super) fn new(http: &HttpChannelConfig) -> Self {
        Self {
            builder: Arc::new(builder(http)),
            header_read_timeout: http.header_read_timeout(),
            http2_idle_timeout: http.http2_idle_timeout(),
            tasks: TaskTracker::new(),
            closing: CancellationToken::new(),
        }
    }

    /// Serves `app` on `stream` in a new task once the client has sent its first bytes, or closes
    /// the connection when it sends none within the header timeout.
    pub(super) fn spawn(&self, stream: TcpStream, peer: SocketAddr, app: Router) {
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let requests = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = requests.begin();
            let response = app.clone().call(request);
            async move {
                let response = response.await?;
                // The request stays in flight until its body ends, since a stream of events can
                // go on for minutes after the headers.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &in_flight;
                        frame
                    }))
                }))
            }
        });
        let builder = Arc::clone(&self.builder);
        let header_read_timeout = self.header_read_timeout;
        let http2_idle_timeout = self.http2_idle_timeout;
        let closing = self.closing.clone();
        self.tasks.spawn(async move {
            let started = tokio::select! {
                started = tokio::time::timeout(header_read_timeout, wait_for_protocol(&stream)) => {
                    started
                }
                () = closing.cancelled() => return,
            };
            let protocol = match started {
                Ok(Ok(Some(protocol))) => protocol,
                Ok(Ok(None)) => return,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "Connection failed before its first request");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "Closing a connection that sent no request in time");
                    return;
                }
            };
            let idle = async {
                match protocol {
                    Protocol::Http2 => activity.idle_for(http2_idle_timeout).await,
                    // hyper closes an idle HTTP/1 connection after the header timeout.
                    Protocol::Http1 => std::future::pending().await,
                }
            };
            let mut idle = pin!(idle);
            let mut connection =
                pin!(builder.serve_connection_with_upgrades(TokioIo::new(stream), service));
            let mut shutting_down = false;
            let result = loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    () = closing.cancelled(), if !shutting_down => {
                        connection.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                    () = idle.as_mut(), if !shutting_down => {
                        tracing::debug!(%peer, "Closing an idle HTTP/2 connection");
                        connection.as_mut().graceful_shutdown();
                        shutting_down = true;
                    }
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "Connection ended with an error");
            }
        });
    }

    /// Closes the connections that have sent nothing yet, starts a graceful shutdown of the
    /// others, which close after their current requests, and waits until all are closed.
    pub(super) async fn shut_down(self) {
        self.closing.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The requests in flight on one connection, and when the last of them ended.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Microseconds from `opened` to the end of the last request, 0 before the first one.
    last_end_micros: AtomicU64,
}

/// Counts one request as in flight until dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let micros = u64::try_from(self.0.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.0.last_end_micros.store(micros, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end_micros: AtomicU64::new(0),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Acquire);
        InFlight(Arc::clone(self))
    }

    /// Returns once no request has been in flight for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let wait = if self.in_flight.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                let last_end = Duration::from_micros(self.last_end_micros.load(Ordering::Relaxed));
                let idle = self.opened.elapsed().saturating_sub(last_end);
                if idle >= timeout {
                    return;
                }
                timeout - idle
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Returns the connection builder with the header timeout and the HTTP/2 pings of `http`.
fn builder(http: &HttpChannelConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_read_timeout());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(http.http2_keep_alive_interval())
        .keep_alive_timeout(http.http2_keep_alive_interval());
    builder
}

/// Waits until `stream` has sent enough to tell its protocol: a byte that differs from the
/// HTTP/2 preface, or the whole preface. Returns `None` when the client closed the connection
/// first. The bytes stay in the socket for hyper to read.
async fn wait_for_protocol(stream: &TcpStream) -> io::Result<Option<Protocol>> {
    let mut start = [0u8; H2_PREFACE.len()];
    loop {
        let read = stream.peek(&mut start).await?;
        if read == 0 {
            return Ok(None);
        }
        if start[..read] != H2_PREFACE[..read] {
            return Ok(Some(Protocol::Http1));
        }
        if read == start.len() {
            return Ok(Some(Protocol::Http2));
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
