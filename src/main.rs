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
    let result = runtime.block_on(cli::run(cli));
    // An in-process code-mode engine abandoned at its deadline may still be spinning on a blocking
    // thread; the process must not wait for it after the server has stopped.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(())
}
