//! Opening the database: the URL, the connection settings and the migrations.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use sqlx::ConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use crate::store::StoreError;

/// Largest write-ahead log kept on disk after a checkpoint, in bytes. It is above the size the log
/// reaches between two checkpoints at 2,000 messages/s (see `checkpoint.rs`), so the file is not
/// cut and grown again on every cycle.
const JOURNAL_SIZE_LIMIT_BYTES: i64 = 128 * 1024 * 1024;

/// Capacity of each connection's prepared-statement cache, more than the store's statements.
const STATEMENT_CACHE_CAPACITY: usize = 32;

/// Gives each in-memory store its own database.
static MEMORY_DATABASES: AtomicU64 = AtomicU64::new(0);

/// Location of the database, parsed from the store URL.
#[derive(Debug, Clone)]
pub(super) enum Location {
    File {
        url: String,
        path: PathBuf,
    },
    /// A named in-memory database in shared-cache mode, so the migration connection and the
    /// writer connection of this process see the same database.
    Memory {
        url: String,
        name: String,
    },
}

impl Location {
    /// Parses `sqlite://PATH`, `sqlite:PATH` or `sqlite::memory:`, with sqlx's URL rules.
    pub(super) fn parse(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url).map_err(|source| StoreError::Open {
            url: url.to_owned(),
            source,
        })?;
        let url = url.to_owned();
        if is_memory(&url) {
            let id = MEMORY_DATABASES.fetch_add(1, Ordering::Relaxed);
            let name = format!("file:xiaomaolv-memory-{}-{id}", std::process::id());
            return Ok(Self::Memory { url, name });
        }
        let path = options.get_filename().to_path_buf();
        Ok(Self::File { url, path })
    }

    fn url(&self) -> &str {
        match self {
            Self::File { url, .. } | Self::Memory { url, .. } => url,
        }
    }

    /// Wraps an error that stopped the store from opening.
    pub(super) fn error(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Connect {
            url: self.url().to_owned(),
            source,
        }
    }

    fn open(&self, flags: OpenFlags) -> Result<Connection, StoreError> {
        let connection = match self {
            Self::File { path, .. } => Connection::open_with_flags(path, flags),
            Self::Memory { name, .. } => Connection::open_with_flags(
                name,
                flags | OpenFlags::SQLITE_OPEN_MEMORY | OpenFlags::SQLITE_OPEN_SHARED_CACHE,
            ),
        };
        connection.map_err(|err| self.error(err))
    }
}

/// Returns whether the URL names an in-memory database (`:memory:` or `mode=memory`).
fn is_memory(url: &str) -> bool {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (database, params) = rest.split_once('?').unwrap_or((rest, ""));
    database == ":memory:" || params.split('&').any(|param| param == "mode=memory")
}

/// Opens the read-write connection, creating the database file when it is missing.
pub(super) fn writer(
    location: &Location,
    busy_timeout: Duration,
) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = location.open(flags)?;
    configure(&connection, busy_timeout).map_err(|err| location.error(err))?;
    write_settings(&connection).map_err(|err| location.error(err))?;
    Ok(connection)
}

fn write_settings(connection: &Connection) -> rusqlite::Result<()> {
    // The journal mode is stored in the file. An in-memory database keeps its own mode.
    connection.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)?;
    // Only the checkpointer thread checkpoints; see `checkpoint.rs` for why.
    connection.pragma_update(None, "wal_autocheckpoint", 0)
}

/// Opens the checkpointer's read-write connection to the existing database file.
pub(super) fn checkpointer(
    location: &Location,
    busy_timeout: Duration,
) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = location.open(flags)?;
    configure(&connection, busy_timeout).map_err(|err| location.error(err))?;
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(|err| location.error(err))?;
    Ok(connection)
}

/// Opens a read-only connection to an existing database file.
pub(super) fn reader(
    location: &Location,
    busy_timeout: Duration,
) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = location.open(flags)?;
    configure(&connection, busy_timeout).map_err(|err| location.error(err))?;
    Ok(connection)
}

fn configure(connection: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    connection.busy_timeout(busy_timeout)?;
    connection.pragma_update(None, "foreign_keys", true)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(())
}

/// Applies the embedded migrations on a short-lived sqlx connection.
pub(super) async fn migrate(location: &Location, busy_timeout: Duration) -> Result<(), StoreError> {
    let options = match location {
        Location::File { path, .. } => SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal),
        Location::Memory { name, .. } => SqliteConnectOptions::new()
            .filename(name)
            .in_memory(true)
            .shared_cache(true),
    };
    let options = options
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(busy_timeout)
        .foreign_keys(true);
    let open_error = |source| StoreError::Open {
        url: location.url().to_owned(),
        source,
    };
    let mut connection = options.connect().await.map_err(open_error)?;
    let migrator = sqlx::migrate!("./migrations/sqlite");
    let applied = applied_versions(&mut connection).await;
    for pending in migrator.iter().filter(|m| !applied.contains(&m.version)) {
        tracing::info!(
            version = pending.version,
            migration = %pending.description,
            "Applying a migration to the SQLite history store."
        );
    }
    migrator
        .run(&mut connection)
        .await
        .map_err(|source| StoreError::MigrateFile {
            url: location.url().to_owned(),
            check: migration_check(&source),
            source,
        })?;
    sqlx::Connection::close(connection)
        .await
        .map_err(open_error)
}

/// Returns the versions of the migrations applied to the database, none for a new one.
async fn applied_versions(connection: &mut sqlx::SqliteConnection) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
        .fetch_all(connection)
        .await
        .unwrap_or_default()
}

/// Returns what to check after a failed migration, from SQLite's primary result code.
fn migration_check(err: &sqlx::migrate::MigrateError) -> &'static str {
    use sqlx::migrate::MigrateError;
    let database = match err {
        MigrateError::Execute(sqlx::Error::Database(db))
        | MigrateError::ExecuteMigration(sqlx::Error::Database(db), _) => db,
        MigrateError::VersionMissing(_) => {
            return "a newer release has migrated this file, and this release cannot open it; \
                    run the newer release, or restore the backup taken before the upgrade";
        }
        _ => return "see docs/store.md on upgrades",
    };
    let primary = database
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .map(|code| code & 0xff);
    match primary {
        Some(13) => {
            "free disk space: a migration that rebuilds the tables needs about twice the \
             file's size free"
        }
        Some(8 | 14 | 23) => {
            "make the file, its -wal and -shm files and their directory writable by the \
             gateway's user"
        }
        Some(5 | 6) => "stop the other process that has the file open, then start again",
        _ => {
            "the file holds rows or objects this release does not expect, such as a view, \
             trigger or row added by hand; see docs/store.md on upgrades"
        }
    }
}
