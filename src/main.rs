use std::num::NonZeroUsize;
use std::process::ExitCode;

use clap::Parser;
use tokio::runtime::{Builder, Runtime};
use xiaomaolv::cli::serve::{self, RuntimePlan};
use xiaomaolv::cli::{self, Cli, Command, LogFormatArg};
use xiaomaolv::code_mode::subprocess;
use xiaomaolv::telemetry;

/// mimalloc in place of glibc's malloc, which took about 8% of the gateway's CPU time in a
/// profile at 2,000 messages/s on the benchmark machine.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::CodeModeEngine) {
        // The engine process builds its own single-threaded runtime on this thread.
        return subprocess::serve_engine();
    }
    // `--log-format json` makes even an error found before logging starts a JSON line.
    let json_flag = matches!(
        &cli.command,
        Command::Serve(args) if matches!(args.log_format, Some(LogFormatArg::Json))
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            telemetry::report_fatal(&err, json_flag || telemetry::json_logging());
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (runtime, result) = match cli.command {
        Command::Serve(args) => {
            let loaded = cli::serve::load(&args)?;
            let runtime = runtime(loaded.config.app.worker_threads)?;
            let result = runtime.block_on(cli::serve::run_loaded(args, loaded));
            (runtime, result)
        }
        command => {
            let runtime = runtime(0)?;
            let result = runtime.block_on(cli::run(Cli { command }));
            (runtime, result)
        }
    };
    // An in-process code-mode engine abandoned at its deadline may still be spinning on a blocking
    // thread; the process must not wait for it after the server has stopped.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(())
}

/// Builds the runtime for `app.worker_threads`, see [`serve::runtime_plan`].
fn runtime(worker_threads: u16) -> std::io::Result<Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    match serve::runtime_plan(worker_threads, cpus) {
        RuntimePlan::CurrentThread => Builder::new_current_thread().enable_all().build(),
        RuntimePlan::MultiThread(workers) => Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build(),
    }
}
