//! Command-line interface: `serve` and `check-config`.

mod check_config;
pub mod mcp;
pub mod serve;

/// The config file `serve` and the `mcp` commands use when no `--config` is given and it exists.
pub const DEFAULT_CONFIG_FILE: &str = "xiaomaolv.toml";

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
        /// Config file to check; without it, the file `serve` would read: XIAOMAOLV_CONFIG, else
        /// ./xiaomaolv.toml if it exists, else the embedded defaults.
        #[arg(env = "XIAOMAOLV_CONFIG")]
        file: Option<PathBuf>,
    },
    /// Manage MCP servers in the config file.
    Mcp {
        /// Config file to edit; default: XIAOMAOLV_CONFIG, else ./xiaomaolv.toml.
        #[arg(long, env = "XIAOMAOLV_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: McpCommand,
    },
    /// Run one code-mode program as the gateway's engine process (`execution_mode = "subprocess"`).
    /// The gateway starts this itself and talks to it over stdin and stdout.
    #[command(hide = true, name = crate::code_mode::subprocess::ENGINE_SUBCOMMAND)]
    CodeModeEngine,
}

#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Add a server: `mcp add NAME -- COMMAND ARGS...` or `mcp add NAME --transport http --url URL`.
    Add(mcp::AddArgs),
    /// List the configured servers.
    Ls,
    /// Connect to one server, list its tools, and print them with the round-trip time.
    Test { name: String },
    /// Remove a server.
    Rm { name: String },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Config file; without it, ./xiaomaolv.toml if it exists, else the embedded defaults.
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
    #[error(transparent)]
    Mcp(#[from] mcp::McpCliError),
    #[error("the code-mode engine runs only as its own process, started by the gateway")]
    EngineInRuntime,
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::CheckConfig { file } => check_config::run(file.as_deref()),
        Command::Mcp { config, command } => {
            let config = config.as_deref();
            match command {
                McpCommand::Add(args) => mcp::add(config, args),
                McpCommand::Ls => mcp::list(config),
                McpCommand::Test { name } => {
                    init_cli_logging();
                    mcp::test(config, &name).await
                }
                McpCommand::Rm { name } => mcp::remove(config, &name),
            }
        }
        // `main` serves the engine before building the gateway's runtime, so it never gets here.
        Command::CodeModeEngine => Err(CliError::EngineInRuntime),
    }
}

/// Logs warnings and errors only (unless `RUST_LOG` says otherwise), so `mcp test` output stays
/// readable. The MCP hub's warning that it will retry a failed server is left out, because the
/// one-shot test does not retry and prints the failure itself.
fn init_cli_logging() {
    let _ =
        crate::telemetry::init_logging_at(LogFormat::Human, "warn,xiaomaolv::mcp::server=error");
}
