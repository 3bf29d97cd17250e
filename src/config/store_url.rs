//! Checks of `store.url`: a SQLite URL, or a PostgreSQL URL in the form the store can open.
//!
//! A PostgreSQL URL usually carries a password, so no message here repeats the URL or a value
//! from it, except for the values of `sslmode` and `port` and the paths of certificate files,
//! which are never secret.

use std::net::IpAddr;
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;

use url::Url;

/// The expected form, shown in every error about a PostgreSQL URL.
const POSTGRES_FORM: &str = "postgres://USER:PASSWORD@HOST:PORT/DATABASE";

/// The query parameters that sqlx 0.8 reads from a PostgreSQL URL. sqlx logs any other parameter
/// with its value, which may be a secret, so the rest are rejected.
const POSTGRES_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The environment variables that sqlx reads for a parameter the URL leaves out, with that
/// parameter. sqlx silently drops a value it cannot parse, so a mistyped `PGSSLMODE=verify_full`
/// would connect with the default `prefer`.
const POSTGRES_ENVIRONMENT: &[(&str, &str)] = &[
    ("PGSSLMODE", "sslmode"),
    ("PGPORT", "port"),
    ("PGSSLROOTCERT", "sslrootcert"),
    ("PGSSLCERT", "sslcert"),
    ("PGSSLKEY", "sslkey"),
];

/// Returns why `url` cannot be a store URL, or `None` when it can.
pub(super) fn store_url_error(url: &str) -> Option<String> {
    // A value that is not UTF-8 is checked in its lossy form, which no rule accepts, where sqlx
    // would silently drop it.
    store_url_error_with(url, &|name| {
        std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
    })
}

/// Returns why `url` cannot be a store URL, reading variables through `environment` instead of
/// the process environment.
fn store_url_error_with(url: &str, environment: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if url.starts_with("sqlite:") {
        return sqlite_url_error(url);
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return postgres_url_error(url, environment)
            .map(|problem| format!("invalid PostgreSQL URL: {problem}"));
    }
    // The URL is not repeated: a password in a malformed URL may not be where masking finds it.
    let scheme = url
        .split_once(':')
        .map(|(scheme, _)| scheme)
        .filter(|scheme| is_plain_name(scheme));
    let named = scheme.map_or_else(String::new, |scheme| format!(" (scheme `{scheme}`)"));
    Some(format!(
        "not a supported store URL{named}; use sqlite://PATH, sqlite::memory: or {POSTGRES_FORM}"
    ))
}

/// Returns why a `sqlite:` URL cannot be opened, with sqlx's rules for its query parameters.
fn sqlite_url_error(url: &str) -> Option<String> {
    const FORMS: &str = "use sqlite://PATH, such as sqlite://xiaomaolv.db, or sqlite::memory:";
    match SqliteConnectOptions::from_str(url) {
        Err(err) => Some(format!("invalid SQLite URL: {err}; {FORMS}")),
        Ok(options) if options.get_filename().as_os_str().is_empty() => {
            Some(format!("the SQLite URL names no file; {FORMS}"))
        }
        Ok(_) => None,
    }
}

/// Returns whether `text` may be repeated in an error: a short name of lowercase ASCII letters,
/// `_`, `-`, `[`, `]` or `.`. NOTE: a piece of a password made only of these is still repeated.
fn is_plain_name(text: &str) -> bool {
    (1..=40).contains(&text.len())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || "_-[].".contains(c))
}

/// Returns the name sqlx gives a parameter that it also reads under other spellings.
fn canonical_parameter(key: &str) -> &str {
    match key {
        "ssl-mode" => "sslmode",
        "ssl-root-cert" | "ssl-ca" => "sslrootcert",
        "ssl-cert" => "sslcert",
        "ssl-key" => "sslkey",
        other => other,
    }
}

fn postgres_url_error(url: &str, environment: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    let parsed = match Url::parse(url) {
        Ok(parsed) => parsed,
        Err(err) => {
            return Some(format!(
                "{err}; expected {POSTGRES_FORM}, with the characters @ : / ? # % in the user \
                 name or password percent-encoded (@ as %40)"
            ));
        }
    };
    if parsed.fragment().is_some() {
        return Some(format!(
            "it contains `#`, which ends the URL; percent-encode a # in the password as %23 \
             (expected {POSTGRES_FORM})"
        ));
    }
    let mut has_host = parsed.host_str().is_some_and(|host| !host.is_empty());
    let query = parsed.query().unwrap_or("");
    if query
        .split('&')
        .any(|item| !item.is_empty() && !item.contains('='))
    {
        return Some(
            "a query item has no `=` (not shown, as it may be part of a password); \
             percent-encode `?`, `&` and `#` in the password"
                .to_owned(),
        );
    }
    let mut seen: Vec<String> = Vec::new();
    let mut url_ssl_mode = None;
    let mut socket_host = parsed
        .host_str()
        .is_some_and(|host| host.to_ascii_uppercase().starts_with("%2F"));
    for (key, value) in parsed.query_pairs() {
        has_host |= key == "host" || key == "hostaddr";
        socket_host |= key == "host" && value.starts_with('/');
        if let Some(problem) = parameter_error(&key, &value) {
            return Some(problem);
        }
        // sqlx applies parameters in order, so a second `sslmode=disable` would silently undo
        // an earlier `sslmode=verify-full`.
        let name = canonical_parameter(&key).to_owned();
        if seen.contains(&name) {
            return Some(format!(
                "connection parameter `{name}` is given more than once; give it once"
            ));
        }
        if name == "sslmode" {
            url_ssl_mode = Some(value.to_ascii_lowercase());
        }
        seen.push(name);
    }
    let url_port = parsed.port().is_some();
    let from_environment = match environment_error(&seen, url_port, url_ssl_mode, environment) {
        Ok(parameters) => parameters,
        Err(problem) => return Some(problem),
    };
    if socket_host && seen.iter().any(|name| name == "hostaddr") {
        // libpq would connect to `hostaddr` over TCP, while sqlx uses the socket.
        return Some(
            "`host` names a Unix socket directory and `hostaddr` an IP address; give only one \
             of them"
                .to_owned(),
        );
    }
    if !has_host {
        return Some(format!("it names no host; expected {POSTGRES_FORM}"));
    }
    let is_set = |parameter: &str| {
        seen.iter().any(|name| name == parameter) || from_environment.contains(&parameter)
    };
    if is_set("sslcert") != is_set("sslkey") {
        return Some(
            "a client certificate needs both `sslcert` and `sslkey`, from the URL or from \
             PGSSLCERT and PGSSLKEY; set both or neither"
                .to_owned(),
        );
    }
    None
}

/// Checks the variables of [`POSTGRES_ENVIRONMENT`] that sqlx would read, given the parameters
/// `in_url` names, and returns the parameters that they set.
fn environment_error(
    in_url: &[String],
    url_port: bool,
    url_ssl_mode: Option<String>,
    environment: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<&'static str>, String> {
    // Without TLS sqlx never reads the certificate files, so their variables may be stale.
    let ssl_mode = url_ssl_mode
        .or_else(|| environment("PGSSLMODE").map(|mode| mode.to_ascii_lowercase()))
        .unwrap_or_default();
    let without_tls = matches!(ssl_mode.as_str(), "disable" | "allow");
    let mut set = Vec::new();
    for &(variable, parameter) in POSTGRES_ENVIRONMENT {
        let overridden =
            in_url.iter().any(|name| name == parameter) || (parameter == "port" && url_port);
        let unread = without_tls && matches!(parameter, "sslrootcert" | "sslcert" | "sslkey");
        if overridden || unread {
            continue;
        }
        let Some(value) = environment(variable) else {
            continue;
        };
        // libpq reads an empty variable as unset, except `PGSSLMODE`, which it rejects.
        if value.is_empty() && variable != "PGSSLMODE" {
            continue;
        }
        if let Some(problem) = parameter_error(parameter, &value) {
            return Err(format!(
                "environment variable {variable}: {problem}; fix or unset {variable}, or set \
                 `{parameter}` in the URL, which takes precedence"
            ));
        }
        set.push(parameter);
    }
    Ok(set)
}

fn parameter_error(key: &str, value: &str) -> Option<String> {
    if key.starts_with("options[") && key.ends_with(']') {
        return None;
    }
    if !POSTGRES_PARAMETERS.contains(&key) {
        // A `?` or `&` left unencoded in a password makes the rest of it look like a parameter
        // name, so only a name that cannot be such a piece is repeated.
        let named = if is_plain_name(key) {
            format!(" `{key}`")
        } else {
            " (not shown; a `?`, `&` or `#` in the password must be percent-encoded)".to_owned()
        };
        return Some(format!(
            "unknown connection parameter{named}; supported: {}, options[NAME]",
            POSTGRES_PARAMETERS.join(", ")
        ));
    }
    match key {
        "sslmode" | "ssl-mode" => ssl_mode_error(value),
        "sslrootcert" | "ssl-root-cert" | "ssl-ca" | "sslcert" | "ssl-cert" | "sslkey"
        | "ssl-key" => certificate_file_error(key, value),
        "port" if value.parse::<u16>().is_err() => {
            Some(format!("port `{value}` is not a number from 0 to 65535"))
        }
        "hostaddr" if value.parse::<IpAddr>().is_err() => {
            Some("`hostaddr` is not an IP address".to_owned())
        }
        "statement-cache-capacity" if value.parse::<usize>().is_err() => {
            Some("`statement-cache-capacity` is not a number".to_owned())
        }
        _ => None,
    }
}

fn ssl_mode_error(value: &str) -> Option<String> {
    match value.to_ascii_lowercase().as_str() {
        "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full" => None,
        _ => Some(format!(
            "unknown sslmode `{value}`; use disable, allow, prefer, require, verify-ca or \
             verify-full"
        )),
    }
}

/// Checks that a certificate or key parameter names a readable PEM file of the right kind. sqlx
/// reads every one of these values as a path.
fn certificate_file_error(key: &str, path: &str) -> Option<String> {
    if path.contains("-----BEGIN") || path.contains('\n') {
        // PEM text, maybe a private key, which must not be repeated in an error.
        return Some(format!(
            "`{key}` is PEM text; give the path of a PEM file instead"
        ));
    }
    let is_key = matches!(key, "sslkey" | "ssl-key");
    // A key's value that names no file may be key material pasted without its PEM lines, so it
    // is shown only when a file of that name exists.
    let named_path = if !is_key || std::path::Path::new(path).exists() {
        format!(" `{path}`")
    } else {
        " (not shown, as it names no file and may be key material)".to_owned()
    };
    let (marker, kind) = if is_key {
        ("PRIVATE KEY-----", "private key")
    } else {
        ("-----BEGIN CERTIFICATE-----", "certificate")
    };
    match std::fs::read_to_string(path) {
        Ok(text) if is_key && text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") => {
            Some(format!(
                "`{key}` file{named_path} holds an encrypted private key, which the gateway cannot \
                 read; decrypt it, for example with `openssl pkcs8 -in KEY -out PLAIN.key`"
            ))
        }
        Ok(text) if text.contains(marker) => None,
        Ok(_) => Some(format!(
            "`{key}` file{named_path} contains no PEM {kind}; give the path of a PEM file with one"
        )),
        Err(err) => Some(format!(
            "`{key}` file{named_path} cannot be read ({err}); give the path of a PEM file"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_usual_forms() {
        for url in [
            "sqlite://xiaomaolv.db",
            "sqlite::memory:",
            "postgres://app:secret@db.internal:5432/history",
            "postgresql://app@127.0.0.1/history?sslmode=disable&application_name=gw",
            "postgres://app:p%40ss%23word@db/history",
            "postgres:///history?host=/var/run/postgresql",
            "postgres://app@db/history?options[statement_timeout]=5000",
            "postgres://app@db/history?sslmode=require",
        ] {
            assert_eq!(store_url_error_with(url, &|_| None), None, "{url}");
        }
    }

    /// Writes `text` to a file in `dir` and returns its path.
    fn pem_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn certificate_files_must_hold_pem() {
        let dir = tempfile::tempdir().unwrap();
        let cert = pem_file(&dir, "ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let key = pem_file(&dir, "key.pem", "-----BEGIN PRIVATE KEY-----\nMIIE\n");
        let empty = pem_file(&dir, "empty.pem", "");
        let base = "postgres://app@db/history?sslmode=verify-full";
        let accepted = [
            format!("{base}&sslrootcert={cert}"),
            format!("{base}&sslcert={cert}&sslkey={key}"),
        ];
        for url in accepted {
            assert_eq!(store_url_error_with(&url, &|_| None), None, "{url}");
        }

        let directory = dir.path().display().to_string();
        let rejected = [
            (
                format!("{base}&sslrootcert={empty}"),
                "contains no PEM certificate",
            ),
            (
                format!("{base}&sslrootcert={key}"),
                "contains no PEM certificate",
            ),
            (
                format!("{base}&sslcert={cert}&sslkey={cert}"),
                "contains no PEM private key",
            ),
            (format!("{base}&sslrootcert={directory}"), "cannot be read"),
            (format!("{base}&sslkey={key}"), "needs both"),
            (format!("{base}&sslcert={cert}"), "needs both"),
        ];
        for (url, expected) in rejected {
            let message = store_url_error_with(&url, &|_| None).expect(&url);
            assert!(message.contains(expected), "{url}: {message}");
        }
    }

    #[test]
    fn rejects_bad_forms_without_echoing_password() {
        let cases = [
            ("postgres://app:pa/ss@db/history", "invalid port number"),
            ("postgres://app:pa#ss@db/history", "percent-encode"),
            ("postgres://app:secret@/history", "empty host"),
            ("postgres:///history", "names no host"),
            (
                "postgres://app:pw@db/history?passwd=pw",
                "unknown connection parameter `passwd`",
            ),
            (
                "postgres://app:pw@db/history?sslmode=sometimes",
                "unknown sslmode `sometimes`",
            ),
            (
                "postgres://app:pw@db/history?sslrootcert=/no/such/ca.pem",
                "`sslrootcert` file `/no/such/ca.pem` cannot be read",
            ),
            (
                "postgres://app:pw@db/history?sslcert=/no/such/client.pem",
                "`sslcert` file",
            ),
            (
                "postgres://app:pw@db/history?sslkey=/no/such/key.pem",
                "`sslkey` file",
            ),
            ("postgres://app:pw@db/history?port=99999", "port `99999`"),
            ("sqlite://", "names no file"),
            ("sqlite:", "names no file"),
            ("sqlite://history.db?mode=bogus", "invalid SQLite URL"),
            ("postgres://xm:?secret@db/history", "percent-encode"),
            (
                "postgres://xm:pw@db/history?password=a&secret",
                "has no `=`",
            ),
            (
                "postgres://xm:pw@db/history?password=a&Secret=1",
                "not shown",
            ),
            ("postgress://xm:sec/ret@db/history", "scheme `postgress`"),
            ("postgres:xm:secret@db/history", "not a supported store URL"),
            (
                "postgres://app:pw@db/history?sslmode=verify-full&ssl-mode=disable",
                "`sslmode` is given more than once",
            ),
            (
                "postgres://app:pw@db/history?sslkey=%20-----BEGIN%20PRIVATE%20KEY-----secret",
                "`sslkey` is PEM text",
            ),
        ];
        for (url, expected) in cases {
            let message = store_url_error_with(url, &|_| None).expect(url);
            assert!(message.contains(expected), "{url}: {message}");
            assert!(!message.contains("pa/ss"), "{url}: {message}");
            assert!(!message.contains("pa#ss"), "{url}: {message}");
            assert!(!message.contains("secret"), "{url}: {message}");
            assert!(!message.contains("sec/ret"), "{url}: {message}");
        }
    }

    const PLAIN_URL: &str = "postgres://app:pw@db/history";

    /// Checks `url` with one environment variable set to `value`.
    fn error_with_variable(url: &str, variable: &str, value: &str) -> Option<String> {
        store_url_error_with(url, &|name| (name == variable).then(|| value.to_owned()))
    }

    #[test]
    fn bad_environment_values_are_named() {
        let cases = [
            (
                "PGSSLMODE",
                "verify_full",
                "environment variable PGSSLMODE: unknown sslmode",
            ),
            ("PGPORT", "54x2", "environment variable PGPORT: port `54x2`"),
            (
                "PGSSLROOTCERT",
                "/no/such/ca.pem",
                "environment variable PGSSLROOTCERT: `sslrootcert` file `/no/such/ca.pem`",
            ),
            (
                "PGSSLKEY",
                "-----BEGIN PRIVATE KEY-----secret",
                "environment variable PGSSLKEY: `sslkey` is PEM text",
            ),
            // A value that is not UTF-8 arrives in its lossy form.
            (
                "PGSSLMODE",
                "verify-full\u{FFFD}",
                "environment variable PGSSLMODE: unknown sslmode",
            ),
        ];
        for (variable, value, expected) in cases {
            let message = error_with_variable(PLAIN_URL, variable, value).expect(variable);
            assert!(message.contains(expected), "{variable}: {message}");
            assert!(!message.contains("secret"), "{variable}: {message}");
        }
        let valid = error_with_variable(PLAIN_URL, "PGSSLMODE", "verify-full");
        assert_eq!(valid, None);
    }

    #[test]
    fn url_parameters_override_environment() {
        let with_mode = "postgres://app:pw@db/history?sslmode=require";
        assert_eq!(
            error_with_variable(with_mode, "PGSSLMODE", "verify_full"),
            None
        );

        let with_port = "postgres://app:pw@db:5433/history";
        assert_eq!(error_with_variable(with_port, "PGPORT", "54x2"), None);

        // Without TLS sqlx never reads the certificate variables.
        let without_tls = "postgres://app:pw@db/history?sslmode=disable";
        let stale_ca = error_with_variable(without_tls, "PGSSLROOTCERT", "/no/such/ca.pem");
        assert_eq!(stale_ca, None);
        let read_ca = error_with_variable(PLAIN_URL, "PGSSLROOTCERT", "/no/such/ca.pem");
        assert!(read_ca.is_some());
    }

    #[test]
    fn empty_variables_count_as_unset() {
        assert_eq!(error_with_variable(PLAIN_URL, "PGPORT", ""), None);
        assert_eq!(error_with_variable(PLAIN_URL, "PGSSLROOTCERT", ""), None);

        // libpq rejects an empty PGSSLMODE, so the gateway does too.
        let message = error_with_variable(PLAIN_URL, "PGSSLMODE", "").unwrap();
        assert!(message.contains("PGSSLMODE"), "{message}");
    }

    #[test]
    fn key_variable_without_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = pem_file(
            &dir,
            "client.key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );

        let message = error_with_variable(PLAIN_URL, "PGSSLKEY", &key).unwrap();

        assert!(message.contains("PGSSLCERT and PGSSLKEY"), "{message}");
    }

    #[test]
    fn key_material_is_never_shown() {
        // A key's base64 body pasted without its PEM lines names no file.
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ";
        let url = format!("postgres://app:pw@db/history?sslkey={body}&sslcert=/etc/hostname");
        let message = store_url_error_with(&url, &|_| None).unwrap();
        assert!(message.contains("not shown"), "{message}");
        assert!(!message.contains(body), "{message}");

        let dir = tempfile::tempdir().unwrap();
        let encrypted = pem_file(
            &dir,
            "encrypted.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let url = format!("postgres://app:pw@db/history?sslkey={encrypted}&sslcert=/etc/hostname");
        let message = store_url_error_with(&url, &|_| None).unwrap();
        assert!(message.contains("encrypted private key"), "{message}");
        assert!(message.contains(&encrypted), "{message}");
    }

    #[test]
    fn socket_host_with_hostaddr_is_rejected() {
        for url in [
            "postgres://app:pw@localhost/history?host=/run/postgresql&hostaddr=10.0.0.5",
            "postgres://app:pw@%2Frun%2Fpostgresql/history?hostaddr=10.0.0.5",
        ] {
            let message = store_url_error_with(url, &|_| None).expect(url);
            assert!(message.contains("give only one"), "{url}: {message}");
        }
        let socket_only = "postgres://app:pw@localhost/history?host=/run/postgresql";
        assert_eq!(store_url_error_with(socket_only, &|_| None), None);
    }
}
