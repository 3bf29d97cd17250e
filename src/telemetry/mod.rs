//! Telemetry: logging setup, the metric names and instruments, and the diagnostics snapshot.
//!
//! [`names`] is the one list of exported metric names. [`metrics`] contains the instruments that
//! record events and the exposition of `GET /v1/code-mode/metrics`, [`collector`] reads code
//! mode's counters at scrape time, and [`diag`] builds the document of `GET /v1/code-mode/diag`.

pub mod collector;
pub mod diag;
pub mod metrics;
pub mod names;

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use crate::config::LogFormat;

pub use metrics::{Exposition, Format, Metrics, ScrapeSources};

/// Everything the diagnostics endpoints read, built once per gateway.
pub struct Telemetry {
    pub metrics: Metrics,
    pub exposition: Exposition,
    pub sources: ScrapeSources,
}

impl Telemetry {
    pub fn new(metrics: Metrics, sources: ScrapeSources) -> Self {
        Self {
            exposition: Exposition::new(&metrics, sources.clone()),
            metrics,
            sources,
        }
    }
}

/// Installs the global `tracing` subscriber, honouring `RUST_LOG` (default `info`, with the MCP
/// client library at `warn`: at `info` it logs each server's whole handshake on one line).
/// PostgreSQL notices are at `warn` too, which keeps the server's warnings and drops notes such
/// as `relation "_sqlx_migrations" already exists, skipping` on every start.
///
/// Returns an error when a subscriber is already installed.
pub fn init_logging(format: LogFormat) -> Result<(), String> {
    init_logging_at(format, "info,rmcp=warn,sqlx::postgres::notice=warn")
}

/// Like [`init_logging`], with `default_level` when `RUST_LOG` is unset.
pub fn init_logging_at(format: LogFormat, default_level: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour codes only help a terminal; in a log file they are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|err| err.to_string())?;
    let _ = INSTALLED_FORMAT.set(format);
    Ok(())
}

/// The format of the subscriber that [`init_logging_at`] installed, if it installed one.
static INSTALLED_FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Returns whether [`init_logging_at`] installed JSON logging.
pub fn json_logging() -> bool {
    INSTALLED_FORMAT.get() == Some(&LogFormat::Json)
}

/// Prints an error that stops the process to stderr. As `json`, it is a line in the format of the
/// JSON logs, so a log pipeline that parses every line keeps working. Otherwise it is a plain
/// line. It bypasses the subscriber, because a `RUST_LOG` filter must not hide why the process
/// stopped.
pub fn report_fatal(error: &dyn std::fmt::Display, json: bool) {
    if !json {
        eprintln!("xiaomaolv: {error}");
        return;
    }
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    let line = serde_json::json!({
        "timestamp": timestamp,
        "level": "ERROR",
        "message": "xiaomaolv stopped with an error",
        "error": error.to_string(),
        "target": "xiaomaolv",
    });
    eprintln!("{line}");
}
