//! `xiaomaolv serve`: wire the configured parts together and run until a signal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::{CliError, ServeArgs};
use crate::agent::Agent;
use crate::code_mode::CodeMode;
use crate::code_mode::subprocess::EngineCommand;
use crate::config::{Config, mask_url_password};
use crate::http::rate_limit::RateLimiter;
use crate::http::{self, AppState, TurnLimit};
use crate::mcp::McpHub;
use crate::provider::ProviderClient;
use crate::telemetry::{Metrics, ScrapeSources, Telemetry};
use crate::{store, telemetry};

/// The settings `serve` runs with and the file they came from.
#[derive(Debug)]
pub struct ServeConfig {
    pub config: Config,
    /// `None` when the gateway runs on its embedded defaults.
    pub file: Option<PathBuf>,
}

/// Loads the file given with `--config`, else `xiaomaolv.toml` in the working directory when it
/// exists, else the embedded defaults. It runs before the async runtime exists, because
/// `app.worker_threads` decides how that runtime is built.
pub fn load(args: &ServeArgs) -> Result<ServeConfig, CliError> {
    let file = args.config.clone().or_else(|| {
        let default = PathBuf::from(super::DEFAULT_CONFIG_FILE);
        default.exists().then_some(default)
    });
    let config = match &file {
        Some(path) => Config::load(path)?,
        None => Config::embedded()?,
    };
    Ok(ServeConfig { config, file })
}

/// Flavor of the async runtime, with its worker count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimePlan {
    /// Everything on the thread that calls `block_on`.
    CurrentThread,
    /// Work-stealing runtime with this many worker threads.
    MultiThread(usize),
}

/// CPUs up to which `app.worker_threads = 0` picks the current-thread runtime.
///
/// With two CPUs, a second worker mostly competes for a CPU with the store's writer and
/// checkpointer threads and with the model server, and every hand-off between workers wakes
/// another thread. On the 2-vCPU benchmark machine one thread added less latency at every
/// open-loop rate and lost 5 to 8% of closed-loop throughput (docs/benchmarks.md, run 7).
pub const CURRENT_THREAD_MAX_CPUS: usize = 2;

/// Picks the runtime for `app.worker_threads` on a machine with `cpus` CPUs. 0 means automatic:
/// one thread up to [`CURRENT_THREAD_MAX_CPUS`], else one worker per CPU. 1 is the current-thread
/// runtime, and more is that many workers.
pub fn runtime_plan(worker_threads: u16, cpus: usize) -> RuntimePlan {
    match worker_threads {
        0 if cpus <= CURRENT_THREAD_MAX_CPUS => RuntimePlan::CurrentThread,
        0 => RuntimePlan::MultiThread(cpus),
        1 => RuntimePlan::CurrentThread,
        workers => RuntimePlan::MultiThread(usize::from(workers)),
    }
}

pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    let loaded = load(&args)?;
    run_loaded(args, loaded).await
}

/// Serves with settings that [`load`] returned.
pub async fn run_loaded(args: ServeArgs, loaded: ServeConfig) -> Result<(), CliError> {
    let ServeConfig {
        config,
        file: config_file,
    } = loaded;
    let log_format = args.log_format.map_or(config.app.log_format, Into::into);
    if let Err(err) = telemetry::init_logging(log_format) {
        eprintln!("xiaomaolv: logging already initialised: {err}");
    }
    let provider = &config.providers[&config.app.default_provider];
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = config_file.as_ref().map_or("<embedded defaults>".into(), |p| p.display().to_string()),
        provider = %config.app.default_provider,
        base_url = %mask_url_password(&provider.base_url),
        model = %provider.model,
        store = %mask_url_password(&config.store.url),
        worker_threads = config.app.worker_threads,
        "Starting xiaomaolv"
    );

    // Bound before the store opens, so a port already in use stops the start before a migration
    // changes the database. Connections wait in the backlog until the gateway serves.
    let listener = TcpListener::bind(config.app.bind)
        .await
        .map_err(|source| CliError::Bind {
            addr: config.app.bind,
            source,
        })?;
    let state = build_state(&config).await?;
    let addr = listener.local_addr().map_err(CliError::Serve)?;
    warn_if_exposed(&config, addr);
    let runtime = tokio::runtime::Handle::current();
    tracing::info!(
        %addr,
        runtime = ?runtime.runtime_flavor(),
        runtime_workers = runtime.metrics().num_workers(),
        "Listening"
    );
    let store = Arc::clone(&state.store);
    let served = http::serve(
        listener,
        state,
        shutdown_signal(),
        config.app.shutdown_grace(),
    )
    .await
    .map_err(CliError::Serve);
    store.close().await;
    served
}

/// Opens the store and builds the providers and agent that `serve` runs.
pub async fn build_state(config: &Config) -> Result<AppState, CliError> {
    build_state_with_engine(config, EngineCommand::current_exe()).await
}

/// Like [`build_state`], with the program code mode starts in subprocess mode.
pub async fn build_state_with_engine(
    config: &Config,
    engine: EngineCommand,
) -> Result<AppState, CliError> {
    let started_at = std::time::SystemTime::now();
    let metrics = Metrics::default();
    let store = store::open(&config.store).await?;
    let providers = config
        .providers
        .iter()
        .map(|(name, provider)| {
            ProviderClient::new(name, provider)
                .map(|client| (name.clone(), client.with_metrics(metrics.clone())))
                .map_err(|source| CliError::Provider {
                    name: name.clone(),
                    source,
                })
        })
        .collect::<Result<HashMap<_, _>, _>>()?;
    let hub = Arc::new(McpHub::start(&config.mcp));
    let mut code_mode = CodeMode::new(
        config.agent.code_mode.clone(),
        config.mcp.clone(),
        hub.clone(),
    );
    code_mode.set_engine_command(engine);
    code_mode.set_metrics(metrics.clone());
    let code_mode = Arc::new(code_mode);
    let agent = Agent::new(
        store.clone(),
        hub.clone(),
        providers,
        config.app.default_provider.clone(),
        config.agent.clone(),
        code_mode.clone(),
    )
    .with_metrics(metrics.clone());
    let sources = ScrapeSources {
        code_mode,
        hub,
        started_at,
    };
    let http = &config.channels.http;
    Ok(AppState {
        agent: Arc::new(agent),
        store,
        http: Arc::new(http.clone()),
        turns: TaskTracker::new(),
        turn_limit: Arc::new(TurnLimit::new(
            config.app.max_concurrent_turns,
            metrics.clone(),
        )),
        telemetry: Arc::new(Telemetry::new(metrics, sources)),
        diag_limiter: RateLimiter::per_minute(http.diag_rate_limit_per_minute).map(Arc::new),
    })
}

fn warn_if_exposed(config: &Config, addr: std::net::SocketAddr) {
    let http = &config.channels.http;
    if http.enabled && !addr.ip().is_loopback() && http.api_bearer_token.is_none() {
        tracing::warn!(
            %addr,
            "Listening on a non-loopback address without channels.http.api_bearer_token; \
             anyone who can reach it can use the API"
        );
    }
    log_diag_endpoints(http);
}

/// Logs whether `/v1/code-mode/diag` and `/v1/code-mode/metrics` are served, and why not.
fn log_diag_endpoints(http: &crate::config::HttpChannelConfig) {
    if !http.enabled {
        tracing::info!(
            "Code-mode diagnostics endpoints are disabled because channels.http.enabled is false"
        );
    } else if http.diag_bearer_token.is_none() {
        tracing::info!(
            "Code-mode diagnostics endpoints are disabled (they answer 404) because \
             channels.http.diag_bearer_token is empty"
        );
    } else {
        tracing::info!(
            diag = http::DIAG_PATH,
            metrics = http::METRICS_PATH,
            rate_limit_per_minute = http.diag_rate_limit_per_minute,
            trusted_proxies = http.trusted_proxies.len(),
            "Code-mode diagnostics endpoints are enabled behind channels.http.diag_bearer_token"
        );
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits the process at once.
async fn shutdown_signal() {
    wait_for_signal().await;
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("Second shutdown signal received; exiting without waiting");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler installs");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_plan_automatic_by_cpus() {
        assert_eq!(runtime_plan(0, 1), RuntimePlan::CurrentThread);
        assert_eq!(runtime_plan(0, 2), RuntimePlan::CurrentThread);
        assert_eq!(runtime_plan(0, 3), RuntimePlan::MultiThread(3));
        assert_eq!(runtime_plan(0, 16), RuntimePlan::MultiThread(16));
    }

    #[test]
    fn runtime_plan_explicit_threads() {
        assert_eq!(runtime_plan(1, 16), RuntimePlan::CurrentThread);
        assert_eq!(runtime_plan(2, 1), RuntimePlan::MultiThread(2));
        assert_eq!(runtime_plan(4, 16), RuntimePlan::MultiThread(4));
    }
}
