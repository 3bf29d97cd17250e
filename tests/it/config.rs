//! Config loading: variable expansion, errors that name the key and line, validation, masking.

use std::collections::HashMap;

use xiaomaolv::config::{Config, ConfigError, MASK};

/// The minimal file that must work exactly as written.
const MINIMAL: &str = r#"[app]
bind = "127.0.0.1:8080"
default_provider = "local"

[store]
url = "sqlite://xiaomaolv.db"

[providers.local]
kind = "openai-compatible"
base_url = "${OPENAI_BASE_URL:-http://127.0.0.1:8081/v1}"
api_key = "${OPENAI_API_KEY:-}"
model = "${OPENAI_MODEL:-smollm2}"

[channels.http]
enabled = true
diag_bearer_token = "${HTTP_DIAG_BEARER_TOKEN:-}"
diag_rate_limit_per_minute = 120
"#;

fn parse_with(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::parse(text, "test.toml", &|name| env.get(name).cloned())
}

fn error_text(text: &str, vars: &[(&str, &str)]) -> String {
    parse_with(text, vars)
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn minimal_file_uses_defaults_when_env_unset() {
    let config = parse_with(MINIMAL, &[]).unwrap();
    let provider = &config.providers["local"];
    assert_eq!(config.app.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(config.app.default_provider, "local");
    assert_eq!(provider.base_url, "http://127.0.0.1:8081/v1");
    assert_eq!(provider.model, "smollm2");
    assert!(provider.api_key.is_none());
    assert!(config.channels.http.enabled);
    assert!(config.channels.http.diag_bearer_token.is_none());
    assert_eq!(config.channels.http.diag_rate_limit_per_minute, 120);
    assert_eq!(config.store.url, "sqlite://xiaomaolv.db");
}

#[test]
fn minimal_file_takes_values_from_env() {
    let config = parse_with(
        MINIMAL,
        &[
            ("OPENAI_BASE_URL", "https://api.example.test/v1"),
            ("OPENAI_API_KEY", "sk-test"),
            ("OPENAI_MODEL", "gpt-x"),
            ("HTTP_DIAG_BEARER_TOKEN", "diag-token"),
        ],
    )
    .unwrap();
    let provider = &config.providers["local"];
    assert_eq!(provider.base_url, "https://api.example.test/v1");
    assert_eq!(provider.api_key.as_ref().unwrap().expose(), "sk-test");
    assert_eq!(provider.model, "gpt-x");
    assert_eq!(
        config
            .channels
            .http
            .diag_bearer_token
            .as_ref()
            .unwrap()
            .expose(),
        "diag-token"
    );
}

#[test]
fn empty_variable_falls_back_to_default() {
    let config = parse_with(MINIMAL, &[("OPENAI_MODEL", "")]).unwrap();
    assert_eq!(config.providers["local"].model, "smollm2");
}

#[test]
fn variable_expands_in_middle_of_string() {
    let text = MINIMAL.replace(
        "base_url = \"${OPENAI_BASE_URL:-http://127.0.0.1:8081/v1}\"",
        "base_url = \"http://${HOST}:${PORT:-9000}/v1\"",
    );
    let config = parse_with(&text, &[("HOST", "10.1.2.3")]).unwrap();
    assert_eq!(
        config.providers["local"].base_url,
        "http://10.1.2.3:9000/v1"
    );
}

#[test]
fn unset_variable_names_variable_and_key() {
    let text = MINIMAL.replace("${HTTP_DIAG_BEARER_TOKEN:-}", "${HTTP_DIAG_BEARER_TOKEN}");
    let message = error_text(&text, &[]);
    assert!(message.contains("HTTP_DIAG_BEARER_TOKEN"), "{message}");
    assert!(
        message.contains("channels.http.diag_bearer_token"),
        "{message}"
    );
}

#[test]
fn unset_variable_never_becomes_literal_or_empty() {
    let text = MINIMAL.replace("${OPENAI_MODEL:-smollm2}", "${OPENAI_MODEL}");
    assert!(matches!(
        parse_with(&text, &[]),
        Err(ConfigError::Expand { .. })
    ));
}

#[test]
fn variable_inside_array_names_index() {
    let text = format!("{MINIMAL}\n[agent]\nsystem_prompt = \"${{PROMPT}}\"\n");
    let message = error_text(&text, &[]);
    assert!(message.contains("agent.system_prompt"), "{message}");
}

#[test]
fn expanded_value_cannot_inject_toml() {
    let config = parse_with(MINIMAL, &[("OPENAI_MODEL", "m\"\n[evil]\nx = 1")]).unwrap();
    assert_eq!(config.providers["local"].model, "m\"\n[evil]\nx = 1");
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = MINIMAL.replace("enabled = true", "enabled = true\ndiag_tokn = \"x\"");
    let message = error_text(&text, &[]);
    assert!(message.contains("test.toml:16:"), "{message}");
    assert!(message.contains("channels.http.diag_tokn"), "{message}");
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn unknown_table_names_key() {
    let message = error_text(&format!("{MINIMAL}\n[metrics]\nx = 1\n"), &[]);
    assert!(message.contains("metrics"), "{message}");
    assert!(message.contains("unknown field"), "{message}");
}

#[test]
fn wrong_type_names_key_and_line() {
    let text = MINIMAL.replace(
        "diag_rate_limit_per_minute = 120",
        "diag_rate_limit_per_minute = \"many\"",
    );
    let message = error_text(&text, &[]);
    assert!(message.contains("test.toml:17:"), "{message}");
    assert!(
        message.contains("channels.http.diag_rate_limit_per_minute"),
        "{message}"
    );
}

#[test]
fn unknown_key_error_does_not_show_expanded_secret() {
    let text = MINIMAL.replace("api_key = ", "apikey = ");
    let message = error_text(&text, &[("OPENAI_API_KEY", "sk-very-secret")]);
    assert!(!message.contains("sk-very-secret"), "{message}");
    assert!(message.contains("providers.local.apikey"), "{message}");
}

#[test]
fn syntax_error_names_line() {
    let message = error_text("[app]\nbind = \"127.0.0.1:8080\n", &[]);
    assert!(message.starts_with("test.toml:2:"), "{message}");
}

#[test]
fn invalid_values_name_key() {
    let cases = [
        (
            "bind = \"127.0.0.1:8080\"",
            "bind = \"localhost\"",
            "app.bind",
        ),
        (
            "default_provider = \"local\"",
            "default_provider = \"remote\"",
            "app.default_provider",
        ),
        (
            "base_url = \"${OPENAI_BASE_URL:-http://127.0.0.1:8081/v1}\"",
            "base_url = \"127.0.0.1:8081\"",
            "providers.local.base_url",
        ),
        (
            "model = \"${OPENAI_MODEL:-smollm2}\"",
            "model = \"  \"",
            "providers.local.model",
        ),
        (
            "kind = \"openai-compatible\"",
            "kind = \"anthropic\"",
            "providers.local.kind",
        ),
        (
            "url = \"sqlite://xiaomaolv.db\"",
            "url = \"mysql://db\"",
            "store.url",
        ),
    ];
    for (from, to, key) in cases {
        let message = error_text(&MINIMAL.replace(from, to), &[]);
        assert!(message.contains(key), "{to}: {message}");
    }
}

#[test]
fn zero_timeouts_are_rejected() {
    let text = format!("{MINIMAL}\n[agent]\nturn_timeout_ms = 0\n");
    assert!(error_text(&text, &[]).contains("agent.turn_timeout_ms"));
}

#[test]
fn no_provider_is_an_error() {
    let message = error_text("[app]\nbind = \"127.0.0.1:1\"\n", &[]);
    assert!(message.contains("[providers.NAME]"), "{message}");
}

#[test]
fn masked_settings_hide_secrets() {
    let text = MINIMAL.replace("sqlite://xiaomaolv.db", "sqlite://history.db");
    let config = parse_with(
        &text,
        &[
            ("OPENAI_API_KEY", "sk-abc123"),
            ("HTTP_DIAG_BEARER_TOKEN", "diag-xyz"),
        ],
    )
    .unwrap();
    let printed = config.to_masked_toml();
    assert!(!printed.contains("sk-abc123"), "{printed}");
    assert!(!printed.contains("diag-xyz"), "{printed}");
    assert!(printed.contains(MASK), "{printed}");
    assert!(!format!("{config:?}").contains("sk-abc123"));
}

#[test]
fn example_file_is_valid_and_documents_every_key() {
    let text = std::fs::read_to_string("config/xiaomaolv.example.toml").unwrap();
    let config = parse_with(&text, &[]).unwrap();
    let with_optionals = text
        .replace("# temperature = ", "temperature = ")
        .replace("# max_tokens = ", "max_tokens = ")
        .replace("# system_prompt = ", "system_prompt = ");
    let full = parse_with(
        &with_optionals,
        &[
            ("HTTP_API_BEARER_TOKEN", "t"),
            ("OPENAI_API_KEY", "k"),
            ("HTTP_DIAG_BEARER_TOKEN", "d"),
        ],
    )
    .unwrap();
    let effective: toml::Table = toml::from_str(&full.to_masked_toml()).unwrap();
    for key in leaf_keys(&effective) {
        assert!(
            text.contains(&format!("{key} =")),
            "example does not document `{key}`"
        );
    }
    assert_eq!(config.app.bind.to_string(), "127.0.0.1:8080");
}

#[test]
fn embedded_defaults_are_valid() {
    let config =
        Config::parse(xiaomaolv::config::EMBEDDED_DEFAULTS, "embedded", &|_| None).unwrap();
    assert_eq!(config.app.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(config.store.url, "sqlite://xiaomaolv.db");
    assert_eq!(
        config.providers["local"].base_url,
        "http://127.0.0.1:8081/v1"
    );
}

fn leaf_keys(table: &toml::Table) -> Vec<String> {
    let mut keys = Vec::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(inner) => keys.extend(leaf_keys(inner)),
            _ => keys.push(key.clone()),
        }
    }
    keys
}

const MCP_SERVERS: &str = r#"
[mcp.servers.everything]
transport = "stdio"
command = "npx"
args = ["-y", "@modelcontextprotocol/server-everything"]
env = { EXAMPLE = "1" }
timeout_ms = 20000

[mcp.servers.search]
transport = "http"
url = "http://127.0.0.1:8787/mcp"
headers = { Authorization = "Bearer ${SEARCH_TOKEN}" }
"#;

#[test]
fn mcp_servers_parse_as_documented() {
    use xiaomaolv::config::McpServerTransport;

    let text = format!("{MINIMAL}{MCP_SERVERS}");
    let config = parse_with(&text, &[("SEARCH_TOKEN", "tok")]).unwrap();
    let everything = &config.mcp.servers["everything"];
    assert!(everything.enabled);
    assert_eq!(everything.timeout_ms, 20000);
    let McpServerTransport::Stdio {
        command,
        args,
        env,
        cwd,
    } = &everything.transport
    else {
        panic!("everything is a stdio server");
    };
    assert_eq!(command, "npx");
    assert_eq!(args, &["-y", "@modelcontextprotocol/server-everything"]);
    assert_eq!(env["EXAMPLE"].expose(), "1");
    assert!(cwd.is_none());

    let search = &config.mcp.servers["search"];
    let McpServerTransport::Http { url, headers } = &search.transport else {
        panic!("search is an http server");
    };
    assert_eq!(url, "http://127.0.0.1:8787/mcp");
    assert_eq!(headers["Authorization"].expose(), "Bearer tok");
    assert_eq!(search.timeout_ms, 30000);
}

#[test]
fn mcp_header_variable_must_be_set() {
    let message = error_text(&format!("{MINIMAL}{MCP_SERVERS}"), &[]);
    assert!(message.contains("SEARCH_TOKEN"), "{message}");
    assert!(
        message.contains("mcp.servers.search.headers.Authorization"),
        "{message}"
    );
}

#[test]
fn mcp_env_and_headers_print_masked() {
    let text = format!("{MINIMAL}{MCP_SERVERS}");
    let config = parse_with(&text, &[("SEARCH_TOKEN", "tok-secret-1")]).unwrap();
    let printed = config.to_masked_toml();
    assert!(!printed.contains("tok-secret-1"), "{printed}");
    assert!(printed.contains("transport = \"http\""), "{printed}");
    assert!(printed.contains("command = \"npx\""), "{printed}");
}

#[test]
fn mcp_invalid_servers_name_the_key() {
    let cases = [
        (
            "[mcp.servers.a]\ncommand = \"x\"\nurl = \"http://h/mcp\"\n",
            "mcp.servers.a.url",
        ),
        (
            "[mcp.servers.a]\ntransport = \"http\"\nurl = \"http://h/mcp\"\nargs = []\n",
            "mcp.servers.a.args",
        ),
        (
            "[mcp.servers.a]\ntransport = \"stdio\"\n",
            "mcp.servers.a.command",
        ),
        (
            "[mcp.servers.a]\ntransport = \"http\"\n",
            "mcp.servers.a.url",
        ),
        (
            "[mcp.servers.a]\ntransport = \"http\"\nurl = \"ftp://h\"\n",
            "mcp.servers.a.url",
        ),
        (
            "[mcp.servers.a]\ntransport = \"grpc\"\n",
            "mcp.servers.a.transport",
        ),
        (
            "[mcp.servers.\"a__b\"]\ncommand = \"x\"\n",
            "mcp.servers.a__b",
        ),
        (
            "[mcp.servers.\"a b\"]\ncommand = \"x\"\n",
            "mcp.servers.a b",
        ),
        (
            "[mcp.servers.a]\ncommand = \"x\"\ntimeout_ms = 0\n",
            "mcp.servers.a.timeout_ms",
        ),
        (
            "[mcp.servers.a]\ncommand = \"x\"\nretries = 3\n",
            "mcp.servers.a.retries",
        ),
    ];
    for (table, key) in cases {
        let message = error_text(&format!("{MINIMAL}\n{table}"), &[]);
        assert!(message.contains(key), "{table}: {message}");
    }
}

#[test]
fn agent_tool_limits_are_validated() {
    for (line, key) in [
        ("max_tool_iterations = 0", "agent.max_tool_iterations"),
        (
            "max_parallel_tool_calls = 0",
            "agent.max_parallel_tool_calls",
        ),
        ("max_tool_result_chars = 10", "agent.max_tool_result_chars"),
    ] {
        let message = error_text(&format!("{MINIMAL}\n[agent]\n{line}\n"), &[]);
        assert!(message.contains(key), "{line}: {message}");
    }
}

#[test]
fn hostile_values_are_rejected_with_key() {
    let cases = [
        (
            "[store]\nbusy_timeout_ms = 3000000000\n",
            "store.busy_timeout_ms",
        ),
        (
            "[agent]\nsystem_prompt = \"${A:-${B:-x}}\"\n",
            "agent.system_prompt",
        ),
    ];
    for (extra, key) in cases {
        let text = if extra.starts_with("[store]") {
            MINIMAL.replace("[store]\n", extra)
        } else {
            format!("{MINIMAL}\n{extra}")
        };
        let message = error_text(&text, &[]);
        assert!(message.contains(key), "{extra}: {message}");
    }
}

#[test]
fn bearer_tokens_must_be_visible_ascii() {
    for token in ["tök", "two words", " padded"] {
        let text = MINIMAL.replace(
            "enabled = true",
            &format!("enabled = true\napi_bearer_token = \"{token}\""),
        );
        let message = error_text(&text, &[]);
        assert!(
            message.contains("channels.http.api_bearer_token"),
            "{token}: {message}"
        );
        assert!(
            !message.contains(token),
            "the token is not echoed: {message}"
        );
    }
}

#[test]
fn base_url_credentials_print_masked() {
    let text = MINIMAL.replace(
        "${OPENAI_BASE_URL:-http://127.0.0.1:8081/v1}",
        "http://user:pa55word@127.0.0.1:8081/v1",
    );
    let printed = parse_with(&text, &[]).unwrap().to_masked_toml();
    assert!(!printed.contains("pa55word"), "{printed}");
    assert!(printed.contains("user:********@127.0.0.1"), "{printed}");
}

#[test]
fn mcp_headers_must_be_sendable() {
    let cases = [
        (
            "[mcp.servers.a]\ntransport = \"http\"\nurl = \"http://h/mcp\"\nheaders = { \"Bad Name\" = \"x\" }\n",
            "mcp.servers.a.headers.Bad Name",
        ),
        (
            "[mcp.servers.a]\ntransport = \"http\"\nurl = \"http://h/mcp\"\nheaders = { X = \"a\\nb\" }\n",
            "mcp.servers.a.headers.X",
        ),
    ];
    for (table, key) in cases {
        let message = error_text(&format!("{MINIMAL}\n{table}"), &[]);
        assert!(message.contains(key), "{table}: {message}");
    }
}

#[test]
fn mcp_url_query_values_print_masked() {
    let table = "[mcp.servers.a]\ntransport = \"http\"\nurl = \"http://u:pw-secret@h/mcp?api_key=${URLKEY}\"\n";
    let config = parse_with(
        &format!("{MINIMAL}\n{table}"),
        &[("URLKEY", "url-secret-1")],
    )
    .unwrap();
    let printed = config.to_masked_toml();
    assert!(!printed.contains("url-secret-1"), "{printed}");
    assert!(!printed.contains("pw-secret"), "{printed}");
    assert!(printed.contains("api_key=********"), "{printed}");
}

fn with_code_mode(table: &str) -> String {
    format!("{MINIMAL}\n[agent.code_mode]\n{table}\n")
}

#[test]
fn code_mode_defaults_match_the_design() {
    let config = parse_with(MINIMAL, &[]).unwrap();
    let code = &config.agent.code_mode;
    assert!(!code.enabled);
    assert!(!code.shadow_mode);
    assert_eq!((code.max_calls, code.max_parallel), (6, 2));
    assert_eq!(
        (code.max_runtime_ms, code.max_call_timeout_ms),
        (2_500, 1_200)
    );
    assert_eq!(code.max_result_chars, 12_000);
    assert_eq!(code.timeout_warn_ratio, 0.4);
    assert!(code.timeout_auto_shadow_enabled);
    assert_eq!(
        (
            code.timeout_auto_shadow_streak,
            code.timeout_auto_shadow_probe_every
        ),
        (3, 5)
    );
    assert_eq!(code.max_repair_attempts, 1);
    assert!(!code.allow_network);
    assert!(!code.allow_filesystem);
    assert!(!code.allow_env);
}

#[test]
fn code_mode_zero_and_contradictory_values_name_the_key() {
    let cases = [
        (
            "max_calls = 0",
            "agent.code_mode.max_calls",
            "below the minimum",
        ),
        (
            "max_parallel = 0",
            "agent.code_mode.max_parallel",
            "below the minimum",
        ),
        (
            "max_calls = 2\nmax_parallel = 3",
            "agent.code_mode.max_parallel",
            "above max_calls",
        ),
        (
            "max_runtime_ms = 0",
            "agent.code_mode.max_runtime_ms",
            "below the minimum",
        ),
        (
            "max_runtime_ms = 500\nmax_call_timeout_ms = 900",
            "agent.code_mode.max_call_timeout_ms",
            "cannot outlast",
        ),
        (
            "max_result_chars = 10",
            "agent.code_mode.max_result_chars",
            "minimum of 200",
        ),
        (
            "memory_limit_mb = 0",
            "agent.code_mode.memory_limit_mb",
            "below the minimum",
        ),
        (
            "memory_limit_mb = 5000",
            "agent.code_mode.memory_limit_mb",
            "maximum",
        ),
        (
            "timeout_auto_shadow_streak = 0",
            "agent.code_mode.timeout_auto_shadow_streak",
            "minimum",
        ),
        (
            "timeout_auto_shadow_probe_every = 0",
            "agent.code_mode.timeout_auto_shadow_probe_every",
            "minimum",
        ),
        (
            "timeout_warn_ratio = nan",
            "agent.code_mode.timeout_warn_ratio",
            "NaN",
        ),
        (
            "max_repair_attempts = 9",
            "agent.code_mode.max_repair_attempts",
            "maximum of 5",
        ),
        (
            "execution_mode = \"thread\"",
            "agent.code_mode.execution_mode",
            "in_process",
        ),
        (
            "allow_network = \"yes\"",
            "agent.code_mode.allow_network",
            "bool",
        ),
        ("max_call = 3", "agent.code_mode.max_call", "unknown field"),
    ];
    for (table, key, needle) in cases {
        let message = error_text(&with_code_mode(table), &[]);
        assert!(message.contains(key), "{table}: {message}");
        assert!(message.contains(needle), "{table}: {message}");
    }
}

#[test]
fn code_mode_run_time_cannot_exceed_the_turn() {
    let text = format!(
        "{MINIMAL}\n[agent]\nturn_timeout_ms = 1000\n[agent.code_mode]\nmax_runtime_ms = 2000\nmax_call_timeout_ms = 100\n"
    );
    let message = error_text(&text, &[]);
    assert!(
        message.contains("agent.code_mode.max_runtime_ms"),
        "{message}"
    );
    assert!(message.contains("turn_timeout_ms (1000)"), "{message}");
}

#[test]
fn code_mode_warn_ratio_outside_range_is_clamped() {
    for (written, effective) in [("-0.5", 0.0), ("1.5", 1.0), ("inf", 1.0), ("0.25", 0.25)] {
        let config = parse_with(
            &with_code_mode(&format!("timeout_warn_ratio = {written}")),
            &[],
        )
        .unwrap();
        assert_eq!(
            config.agent.code_mode.timeout_warn_ratio, effective,
            "{written}"
        );
    }
}

#[test]
fn mcp_server_capabilities_parse_sorted_and_unknown_ones_are_rejected() {
    let text = format!(
        "{MINIMAL}\n[mcp.servers.files]\ncommand = \"x\"\ncapabilities = [\"filesystem\", \"network\", \"filesystem\"]\n"
    );
    let config = parse_with(&text, &[]).unwrap();
    let capabilities = config.mcp.servers["files"].capabilities.clone().unwrap();
    assert_eq!(format!("{capabilities:?}"), "[Network, Filesystem]");
    let bad = text.replace("\"network\"", "\"gpu\"");
    let message = error_text(&bad, &[]);
    assert!(
        message.contains("mcp.servers.files.capabilities"),
        "{message}"
    );
}

fn with_store_url(url: &str) -> String {
    MINIMAL.replace("sqlite://xiaomaolv.db", url)
}

#[test]
fn postgres_store_url_is_accepted_and_masked() {
    for scheme in ["postgres", "postgresql"] {
        let url = format!("{scheme}://app:${{PGPASS}}@db.internal:5432/history?sslmode=disable");
        let config = parse_with(&with_store_url(&url), &[("PGPASS", "pg-pw-93b1")]).unwrap();
        assert_eq!(
            config.store.url,
            format!("{scheme}://app:pg-pw-93b1@db.internal:5432/history?sslmode=disable")
        );

        let printed = config.to_masked_toml();
        let debug = format!("{:?}", config.store);
        assert!(!printed.contains("pg-pw-93b1"), "{printed}");
        assert!(!debug.contains("pg-pw-93b1"), "{debug}");
        let masked = format!("{scheme}://app:{MASK}@db.internal:5432/history");
        assert!(printed.contains(&masked), "{printed}");
        assert!(debug.contains(&masked), "{debug}");
    }
}

#[test]
fn bad_postgres_store_url_names_key() {
    let cases = [
        // A `/` in the password ends the host part early, so the password must be encoded.
        ("postgres://app:pg/pw-93b1@db/history", "percent-encoded"),
        ("postgres://app:pg#pw-93b1@db/history", "percent-encoded"),
        ("postgres://app:pgpw-93b1@db/hist#pw-93b1", "%23"),
        ("postgres://app:pgpw-93b1@/history", "empty host"),
        (
            "postgres://app:pgpw-93b1@db/history?pass=pgpw-93b1",
            "unknown connection parameter `pass`",
        ),
        (
            "postgres://app:pgpw-93b1@db/history?sslmode=verify-fully",
            "unknown sslmode `verify-fully`",
        ),
        (
            "postgres://app:pgpw-93b1@db/history?sslmode=verify-full&sslrootcert=/no/ca.pem",
            "`sslrootcert` file `/no/ca.pem` cannot be read",
        ),
    ];
    for (url, expected) in cases {
        let message = error_text(&with_store_url(url), &[]);
        assert!(message.starts_with("store.url: "), "{url}: {message}");
        assert!(message.contains(expected), "{url}: {message}");
        assert!(!message.contains("pw-93b1"), "{url}: {message}");
    }
}

#[test]
fn unsupported_store_url_lists_forms() {
    let message = error_text(&with_store_url("mysql://app:pw-93b1@db/history"), &[]);
    assert!(message.contains("store.url"), "{message}");
    assert!(
        message.contains("postgres://USER:PASSWORD@HOST"),
        "{message}"
    );
    assert!(!message.contains("pw-93b1"), "{message}");
}

#[test]
fn max_concurrent_turns_defaults_and_rejects_zero() {
    let config = parse_with(MINIMAL, &[]).unwrap();
    assert_eq!(config.app.max_concurrent_turns, 1024);
    let text = MINIMAL.replace("[store]", "max_concurrent_turns = 0\n\n[store]");
    let error = error_text(&text, &[]);
    assert!(error.contains("app.max_concurrent_turns"), "{error}");
    assert!(error.contains("at least 1"), "{error}");
}

#[test]
fn worker_threads_defaults_and_rejects_too_many() {
    let config = parse_with(MINIMAL, &[]).unwrap();
    assert_eq!(config.app.worker_threads, 0);
    let text = MINIMAL.replace("[store]", "worker_threads = 600\n\n[store]");
    let error = error_text(&text, &[]);
    assert!(error.contains("app.worker_threads"), "{error}");
    assert!(error.contains("600"), "{error}");
    assert!(error.contains("use 0 for one thread per CPU"), "{error}");
}
