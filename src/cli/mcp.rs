//! `xiaomaolv mcp add|ls|test|rm`: manage `[mcp.servers.NAME]` tables in the config file.
//!
//! Edits go through `toml_edit`, so comments, ordering and formatting of the rest of the file stay
//! as they were, and the file is replaced atomically (write to a temporary file, then rename).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, value};

use super::CliError;
use crate::config::raw::{McpTransport, RawConfig, RawMcpServer};
use crate::config::{Config, EMBEDDED_DEFAULTS, McpServerTransport, validate_mcp_server};
use crate::mcp::{McpHub, ServerPhase};

/// Arguments of `mcp add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// Server name; tools are offered to the model as NAME__TOOL.
    pub name: String,
    /// `stdio` (default when a command follows `--`) or `http`.
    #[arg(long, value_enum)]
    pub transport: Option<TransportArg>,
    /// Endpoint of a streamable HTTP server, e.g. http://127.0.0.1:8787/mcp.
    #[arg(long)]
    pub url: Option<String>,
    /// HTTP header sent with every request, as 'Name: value'; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Environment variable for a stdio server, as KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Timeout of one request to the server, in milliseconds.
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// The command that starts a stdio server, and its arguments.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TransportArg {
    Stdio,
    Http,
}

#[derive(Debug, thiserror::Error)]
pub enum McpCliError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("{0}")]
    Usage(String),
    #[error(
        "server `{name}` already exists in {path}; remove it first with `xiaomaolv mcp rm {name}`"
    )]
    Duplicate { name: String, path: String },
    #[error("no server `{name}` in {path}; `xiaomaolv mcp ls` lists the configured servers")]
    Unknown { name: String, path: String },
    #[error("server `{name}` is not usable: {reason}")]
    Unavailable { name: String, reason: String },
}

/// The config file the `mcp` commands edit: `--config`, else `XIAOMAOLV_CONFIG`, else
/// `./xiaomaolv.toml`, the same file `serve` reads.
pub fn config_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_CONFIG_FILE))
}

fn read_document(path: &Path, create: bool) -> Result<DocumentMut, McpCliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if create && err.kind() == std::io::ErrorKind::NotFound => new_config_text(),
        Err(source) => {
            return Err(McpCliError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    text.parse::<DocumentMut>()
        .map_err(|err| McpCliError::Syntax {
            path: path.display().to_string(),
            message: err.message().to_owned(),
        })
}

fn write_document(path: &Path, doc: &DocumentMut) -> Result<(), McpCliError> {
    let write_error = |source| McpCliError::Write {
        path: path.display().to_string(),
        source,
    };
    let text = doc.to_string();
    if let Err(err) = toml::from_str::<RawConfig>(&text) {
        return Err(McpCliError::Usage(format!(
            "the edited file would not be a valid config ({}); nothing was written",
            err.message()
        )));
    }
    let file_name = path
        .file_name()
        .map_or("xiaomaolv.toml".into(), |n| n.to_string_lossy());
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    std::fs::write(&temp, text).map_err(write_error)?;
    // The file may hold secrets (--env values), so the replacement keeps its permissions.
    if let Ok(metadata) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&temp, metadata.permissions());
    }
    std::fs::rename(&temp, path).map_err(|err| {
        let _ = std::fs::remove_file(&temp);
        write_error(err)
    })
}

/// Runs a read-modify-write of the config file under an exclusive lock, so concurrent `mcp`
/// commands cannot lose each other's edits. A symlink is followed, so the edit lands in its
/// target rather than replacing the link.
fn edit_locked<T>(
    path: &Path,
    edit: impl FnOnce(&Path) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let file_name = target
        .file_name()
        .map_or("xiaomaolv.toml".into(), |n| n.to_string_lossy());
    let lock_path = target.with_file_name(format!(".{file_name}.lock"));
    let lock_error = |source| McpCliError::Write {
        path: lock_path.display().to_string(),
        source,
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(lock_error)?;
    lock.lock().map_err(lock_error)?;
    let result = edit(&target);
    let _ = lock.unlock();
    result
}

fn servers_table(doc: &mut DocumentMut) -> Result<&mut Table, McpCliError> {
    let not_table = || McpCliError::Usage("`mcp` and `mcp.servers` must be tables".to_owned());
    let mcp = doc
        .entry("mcp")
        .or_insert_with(implicit_table)
        .as_table_mut()
        .ok_or_else(not_table)?;
    mcp.entry("servers")
        .or_insert_with(implicit_table)
        .as_table_mut()
        .ok_or_else(not_table)
}

fn implicit_table() -> Item {
    let mut table = Table::new();
    table.set_implicit(true);
    Item::Table(table)
}

pub fn add(config: Option<&Path>, args: AddArgs) -> Result<(), CliError> {
    let path = config_path(config);
    let raw = raw_server(&args)?;
    validate_mcp_server(&args.name, raw)?;
    edit_locked(&path, |path| add_locked(path, args))
}

fn add_locked(path: &Path, args: AddArgs) -> Result<(), CliError> {
    let mut doc = read_document(path, true)?;
    let servers = servers_table(&mut doc)?;
    if servers.contains_key(&args.name) {
        let path = path.display().to_string();
        return Err(McpCliError::Duplicate {
            name: args.name,
            path,
        }
        .into());
    }
    servers.insert(&args.name, Item::Table(server_table(&args)));
    write_document(path, &doc)?;
    eprintln!("added MCP server `{}` to {}", args.name, path.display());
    Ok(())
}

/// The raw form of the flags, checked for a mix of stdio and HTTP options.
fn raw_server(args: &AddArgs) -> Result<RawMcpServer, McpCliError> {
    let transport = match (args.transport, &args.url) {
        (Some(TransportArg::Http), _) | (None, Some(_)) => McpTransport::Http,
        (Some(TransportArg::Stdio), _) | (None, None) => McpTransport::Stdio,
    };
    let usage = |message: &str| Err(McpCliError::Usage(message.to_owned()));
    match transport {
        McpTransport::Http if !args.command.is_empty() => {
            return usage("an http server takes --url, not a command after `--`");
        }
        McpTransport::Http if !args.env.is_empty() => {
            return usage("--env only applies to stdio servers; use --header for http");
        }
        McpTransport::Http if args.url.is_none() => return usage("an http server needs --url URL"),
        McpTransport::Stdio if args.url.is_some() => {
            return usage("--url only applies to --transport http");
        }
        McpTransport::Stdio if !args.headers.is_empty() => {
            return usage("--header only applies to http servers; use --env for stdio");
        }
        McpTransport::Stdio if args.command.is_empty() => {
            return usage("a stdio server needs its command after `--`, e.g. `-- npx -y PACKAGE`");
        }
        _ => {}
    }
    Ok(RawMcpServer {
        transport: Some(transport),
        command: args.command.first().cloned(),
        args: (args.command.len() > 1).then(|| args.command[1..].to_vec()),
        env: pairs(&args.env, '=', "--env", "KEY=VALUE")?,
        url: args.url.clone(),
        headers: pairs(&args.headers, ':', "--header", "'Name: value'")?,
        timeout_ms: args.timeout_ms,
        ..Default::default()
    })
}

fn pairs(
    items: &[String],
    separator: char,
    flag: &str,
    form: &str,
) -> Result<Option<std::collections::BTreeMap<String, String>>, McpCliError> {
    if items.is_empty() {
        return Ok(None);
    }
    let mut map = std::collections::BTreeMap::new();
    for item in items {
        let Some((key, value)) = item.split_once(separator) else {
            return Err(McpCliError::Usage(format!(
                "{flag} `{item}` is not of the form {form}"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(McpCliError::Usage(format!(
                "{flag} `{item}` has an empty name"
            )));
        }
        map.insert(key.to_owned(), value.trim_start().to_owned());
    }
    Ok(Some(map))
}

fn server_table(args: &AddArgs) -> Table {
    let mut table = Table::new();
    if let Some(url) = &args.url {
        table.insert("transport", value("http"));
        table.insert("url", value(url.as_str()));
        if let Ok(Some(headers)) = pairs(&args.headers, ':', "--header", "") {
            table.insert("headers", value(inline(headers)));
        }
    } else {
        table.insert("transport", value("stdio"));
        table.insert("command", value(args.command[0].as_str()));
        let mut list = Array::new();
        for arg in &args.command[1..] {
            list.push(arg.as_str());
        }
        table.insert("args", value(list));
        if let Ok(Some(env)) = pairs(&args.env, '=', "--env", "") {
            table.insert("env", value(inline(env)));
        }
    }
    if let Some(timeout) = args.timeout_ms {
        table.insert("timeout_ms", value(timeout as i64));
    }
    table
}

fn inline(map: std::collections::BTreeMap<String, String>) -> InlineTable {
    let mut table = InlineTable::new();
    for (key, text) in map {
        table.insert(&key, text.into());
    }
    table
}

pub fn remove(config: Option<&Path>, name: &str) -> Result<(), CliError> {
    edit_locked(&config_path(config), |path| remove_locked(path, name))
}

fn remove_locked(path: &Path, name: &str) -> Result<(), CliError> {
    let mut doc = read_document(path, false)?;
    let removed = servers_table(&mut doc)?.remove(name).is_some();
    if !removed {
        let path = path.display().to_string();
        return Err(McpCliError::Unknown {
            name: name.to_owned(),
            path,
        }
        .into());
    }
    write_document(path, &doc)?;
    eprintln!("removed MCP server `{name}` from {}", path.display());
    Ok(())
}

pub fn list(config: Option<&Path>) -> Result<(), CliError> {
    let path = config_path(config);
    let mut doc = read_document(&path, false)?;
    let servers = servers_table(&mut doc)?;
    if servers.is_empty() {
        eprintln!(
            "no MCP servers in {}; add one with `xiaomaolv mcp add NAME -- COMMAND`",
            path.display()
        );
        return Ok(());
    }
    for (name, item) in servers.iter() {
        println!("{}", describe(name, item));
    }
    Ok(())
}

/// One line of `mcp ls`, from the file as written (variables are not expanded).
fn describe(name: &str, item: &Item) -> String {
    let field = |key: &str| item.get(key).map(|v| v.to_string().trim().to_owned());
    let transport = item
        .get("transport")
        .and_then(|v| v.as_str())
        .unwrap_or("stdio");
    let enabled = item
        .get("enabled")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let target = if transport == "http" {
        crate::config::mask_url_password(&field("url").unwrap_or_default())
    } else {
        let command = field("command").unwrap_or_default();
        let args = field("args").unwrap_or_default();
        format!("{command} {args}").trim().to_owned()
    };
    let state = if enabled { "" } else { "  (disabled)" };
    format!("{name}\t{transport}\t{target}{state}")
}

pub async fn test(config: Option<&Path>, name: &str) -> Result<(), CliError> {
    let path = config_path(config);
    let config = Config::load(&path)?;
    let Some(server) = config.mcp.servers.get(name).cloned() else {
        let path = path.display().to_string();
        return Err(McpCliError::Unknown {
            name: name.to_owned(),
            path,
        }
        .into());
    };
    let mut only = config.mcp.clone();
    only.servers.retain(|key, _| key == name);
    if let Some(entry) = only.servers.get_mut(name) {
        entry.enabled = true;
    }
    let started = Instant::now();
    let hub = McpHub::start(&only);
    let handle = hub.server(name).expect("the hub has the server").clone();
    let phase = handle
        .settled(server.timeout() + Duration::from_secs(1))
        .await;
    let ready_in = started.elapsed();
    if phase != ServerPhase::Ready {
        let reason = handle
            .status()
            .last_error
            .unwrap_or_else(|| "did not become ready".into());
        hub.shutdown();
        return Err(McpCliError::Unavailable {
            name: name.to_owned(),
            reason,
        }
        .into());
    }
    let round_trip = handle.measure_tool_list().await;
    let tools = handle.tools();
    let target = match &server.transport {
        McpServerTransport::Stdio { command, .. } => command.clone(),
        McpServerTransport::Http { url, .. } => crate::config::mask_url_password(url),
    };
    println!(
        "{name} ({} {target}): ready in {} ms; tools/list round trip {}; {} tools",
        server.transport_name(),
        ready_in.as_millis(),
        round_trip.map_or_else(
            |err| format!("failed: {err}"),
            |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0)
        ),
        tools.len()
    );
    for tool in tools.iter() {
        let description = tool
            .description
            .as_deref()
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("");
        println!("  {:<28} {}", tool.name, description);
    }
    hub.shutdown();
    Ok(())
}

/// The text of a config file that `mcp add` creates: the embedded defaults under a header that
/// says where the file came from, in place of the header that describes the embedded copy.
fn new_config_text() -> String {
    let body = EMBEDDED_DEFAULTS
        .split_once('\n')
        .filter(|(first, _)| first.starts_with('#'))
        .map_or(EMBEDDED_DEFAULTS, |(_, rest)| rest);
    format!(
        "# xiaomaolv config, created by `xiaomaolv mcp add` from the embedded defaults.\n\
         # Every key is described in config/xiaomaolv.example.toml in the repository.\n{body}"
    )
}
