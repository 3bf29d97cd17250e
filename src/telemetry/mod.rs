//! Logging setup; metrics and the diagnostics snapshot will live here too.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global `tracing` subscriber, honouring `RUST_LOG` (default `info`).
///
/// Returns an error when a subscriber is already installed.
pub fn init_logging(format: LogFormat) -> Result<(), String> {
    init_logging_at(format, "info")
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
    result.map_err(|err| err.to_string())
}
