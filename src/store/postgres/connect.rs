//! Opening the database: the connection options, the first connection, the migrations and the pool.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use crate::config::{StoreConfig, mask_url_password};
use crate::store::StoreError;

/// The parsed store URL and a description of the server for errors and logs.
pub(super) struct Target {
    options: PgConnectOptions,
    /// Host and port (or socket), database and user. It never contains the password.
    pub(super) server: String,
}

impl Target {
    /// Parses a `postgres://` or `postgresql://` URL with sqlx's rules, which follow libpq's.
    pub(super) fn parse(url: &str) -> Result<Self, StoreError> {
        let mut options = PgConnectOptions::from_str(url).map_err(|source| StoreError::Open {
            url: mask_url_password(url),
            source,
        })?;
        // The server never offers TLS on a Unix socket, and libpq ignores `sslmode` there. sqlx
        // would ask for TLS anyway and fail under `require` and the `verify-*` modes.
        if options.get_socket().is_some() {
            options = options.ssl_mode(PgSslMode::Disable);
        }
        let server = describe(&options);
        Ok(Self { options, server })
    }
}

fn describe(options: &PgConnectOptions) -> String {
    let address = match options.get_socket() {
        Some(directory) => format!(
            "socket {}, port {}",
            directory.display(),
            options.get_port()
        ),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let user = options.get_username();
    // Without a database name the server uses the user name, as libpq does.
    let database = options.get_database().unwrap_or(user);
    format!("{address} (database `{database}`, user `{user}`)")
}

/// Connects once, applies the embedded migrations, then returns a pool that opens its
/// connections when they are first needed.
///
/// The first connection is made directly rather than through the pool, because the pool retries
/// a refused connection until its timeout and then reports only the timeout. A direct connection
/// reports why it failed.
pub(super) async fn open(config: &StoreConfig) -> Result<(PgPool, String), StoreError> {
    let target = Target::parse(&config.url)?;
    let timeout = config.busy_timeout();
    let mut connection = connect(&target, timeout).await?;
    migrate(&mut connection, &target.server, timeout).await?;
    if let Err(err) = connection.close().await {
        tracing::warn!(error = %err, "Failed to close the PostgreSQL migration connection.");
    }
    let pool_options = target
        .options
        .options([("lock_timeout", lock_timeout(timeout))]);
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(timeout)
        .connect_lazy_with(pool_options);
    tracing::info!(server = %target.server, "Opened the PostgreSQL history store.");
    Ok((pool, target.server))
}

async fn connect(target: &Target, timeout: Duration) -> Result<PgConnection, StoreError> {
    match tokio::time::timeout(timeout, target.options.connect()).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(source)) if is_tls_failure(&source) => Err(StoreError::TlsFailed {
            server: target.server.clone(),
            source,
        }),
        Ok(Err(source)) => Err(StoreError::Unreachable {
            server: target.server.clone(),
            source,
        }),
        Err(_) => Err(StoreError::ConnectTimedOut {
            server: target.server.clone(),
            timeout_ms: millis(timeout),
        }),
    }
}

/// Applies the embedded migrations. sqlx takes an advisory lock around them, so replicas that
/// start together apply each migration once.
///
/// Each wait for a lock, held by another replica that migrates or by any other session, is cut
/// at `timeout` and then tried again, with a warning each time. Without that a start could hang
/// with nothing in the log. A migration cut that way rolls back, so it is safe to try again.
async fn migrate(
    connection: &mut PgConnection,
    server: &str,
    timeout: Duration,
) -> Result<(), StoreError> {
    sqlx::query(&format!("SET lock_timeout = '{}'", lock_timeout(timeout)))
        .execute(&mut *connection)
        .await
        .map_err(StoreError::Postgres)?;
    let migrator = sqlx::migrate!("./migrations/postgres");
    let started = std::time::Instant::now();
    loop {
        match migrator.run(&mut *connection).await {
            Ok(()) => return Ok(()),
            Err(err) if is_lock_timeout(&err) => tracing::warn!(
                server,
                waited_ms = millis(started.elapsed()),
                "Waiting for a lock before migrating the PostgreSQL store: another replica may \
                 be migrating it, or another session holds a lock on its tables."
            ),
            Err(source) => {
                return Err(StoreError::MigratePostgres {
                    server: server.to_owned(),
                    source,
                });
            }
        }
    }
}

/// Returns whether a migration failed because a lock wait reached `lock_timeout` (SQLSTATE
/// 55P03).
fn is_lock_timeout(err: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    match err {
        MigrateError::Execute(sqlx::Error::Database(db))
        | MigrateError::ExecuteMigration(sqlx::Error::Database(db), _) => {
            db.code().as_deref() == Some("55P03")
        }
        _ => false,
    }
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Formats the server's `lock_timeout` setting. It bounds how long a save waits for its session's
/// advisory lock while a save of another replica holds it.
fn lock_timeout(timeout: Duration) -> String {
    format!("{}ms", timeout.as_millis())
}

/// Returns whether connecting failed in TLS: sqlx reports a server without TLS as
/// [`sqlx::Error::Tls`], and a rejected certificate as an I/O error from rustls.
fn is_tls_failure(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => io.to_string().starts_with("invalid peer certificate"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn description_names_server_without_password() {
        let target = Target::parse("postgres://app:hunter2@db.internal:6543/history").unwrap();
        assert_eq!(
            target.server,
            "db.internal:6543 (database `history`, user `app`)"
        );
    }

    #[test]
    fn description_defaults_database_to_user() {
        let target = Target::parse("postgresql://app:hunter2@db.internal").unwrap();
        assert_eq!(
            target.server,
            "db.internal:5432 (database `app`, user `app`)"
        );
    }
}
