use std::process::ExitCode;

use clap::Parser;
use xiaomaolv::cli::{self, Cli, Command};
use xiaomaolv::code_mode::subprocess;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::CodeModeEngine) {
        // The engine process builds its own single-threaded runtime on this thread.
        return subprocess::serve_engine();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xiaomaolv: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(cli))?;
    Ok(())
}
