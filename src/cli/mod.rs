//! Command-line interface: `serve` and `check-config`.

mod check_config;
pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, LogFormat};
use crate::provider::ProviderError;
use crate::store::StoreError;

#[derive(Debug, Parser)]
#[command(
    name = "xiaomaolv",
    version,
    about = "An AI agent gateway for OpenAI-compatible models"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Validate a config file and print the effective settings with secrets masked.
    CheckConfig {
        /// Config file to check; without it, the embedded defaults are checked.
        file: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file; without it, the embedded defaults are used.
    #[arg(long, env = "XIAOMAOLV_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log line format; overrides `app.log_format`.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormatArg>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormatArg {
    Human,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Human => LogFormat::Human,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("provider `{name}`: {source}")]
    Provider { name: String, source: ProviderError },
    #[error(
        "cannot listen on {addr}: {source}; is another process using the port? Change app.bind"
    )]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::CheckConfig { file } => check_config::run(file.as_deref()),
    }
}
