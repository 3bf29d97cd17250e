//! A throwaway PostgreSQL cluster on loopback, started once per test process, with a fresh
//! database for each test.
//!
//! The cluster lives in a temporary directory: `initdb` creates it, and `postgres` serves it on a
//! free port of 127.0.0.1 with its socket in that directory, so it never meets another server.
//! PostgreSQL refuses to run as root, so as root both run as the `postgres` user of the Debian
//! package. The server accepts TLS with a certificate from a throwaway CA, and plain connections
//! too. The server runs under a small shell script that reads its standard input from this
//! process. When this process exits, for any reason, that pipe closes, and the script stops the
//! server and deletes the directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use sqlx::Connection;

/// The superuser the tests connect as.
pub const USER: &str = "postgres";

/// The superuser's password. It is distinctive, so tests can check that it never appears in an
/// error, a log line or printed settings.
pub const PASSWORD: &str = "pg-test-pw-5e1f0c";

const INSTALL_HINT: &str = "run scripts/install-test-deps.sh, which installs the Debian package \
     `postgresql`";

/// The server's log line once it accepts connections.
const READY: &str = "database system is ready to accept connections";

/// How long `initdb` plus the server start may take before the tests give up.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Stops the server and deletes `$1` once standard input closes. The server's own standard input
/// is /dev/null, so only `cat` reads the pipe.
const SUPERVISOR: &str = r#"
"$3/postgres" -D "$1/data" -h 127.0.0.1 -p "$2" -k "$1" \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
    -c ssl=on -c ssl_cert_file="$1/server.crt" -c ssl_key_file="$1/server.key" \
    </dev/null >"$1/postgres.log" 2>&1 &
pid=$!
cat >/dev/null
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$1"
"#;

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

pub struct Cluster {
    pub port: u16,
    /// The directory of the server's Unix socket.
    pub socket_dir: PathBuf,
    /// The PEM file of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// The PEM file of another CA, which signed nothing this server presents.
    pub other_ca_file: PathBuf,
    /// The supervisor script. Its standard input stays open as long as this process runs.
    _supervisor: Child,
}

/// Returns the cluster of this test process, starting it on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

/// Creates an empty database in the cluster and returns its URL, with the password in it.
pub async fn fresh_database() -> String {
    let cluster = cluster();
    let name = format!(
        "xiaomaolv_test_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = cluster.connect("postgres").await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|err| panic!("CREATE DATABASE {name} failed: {err}"));
    admin.close().await.unwrap();
    cluster.url(&name)
}

/// A database owned by a login role that is not a superuser, so that revoked privileges apply
/// to the gateway that connects as that role.
pub struct OwnedDatabase {
    /// The URL of the database as `role`, with the password in it.
    pub url: String,
    pub role: String,
    pub database: String,
}

/// Creates a login role and an empty database that it owns. The gateway's migrations then create
/// the tables as that role.
pub async fn fresh_database_owned_by_role() -> OwnedDatabase {
    let cluster = cluster();
    let number = DATABASES.fetch_add(1, Ordering::Relaxed);
    let role = format!("xiaomaolv_role_{}_{number}", std::process::id());
    let database = format!("xiaomaolv_test_{}_{number}", std::process::id());
    let mut admin = cluster.connect("postgres").await;
    // CREATE DATABASE cannot run in the implicit transaction of a multi-statement query.
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'"),
        format!("CREATE DATABASE {database} OWNER {role}"),
    ] {
        sqlx::raw_sql(&sql)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("`{sql}` failed: {err}"));
    }
    admin.close().await.unwrap();
    OwnedDatabase {
        url: format!(
            "postgres://{role}:{PASSWORD}@127.0.0.1:{}/{database}",
            cluster.port
        ),
        role,
        database,
    }
}

/// Makes every insert of a message with content `boom` fail with "rejected by test trigger".
pub async fn reject_boom(url: &str) {
    let mut raw = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE FUNCTION reject_boom() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
             IF NEW.content = 'boom' THEN RAISE EXCEPTION 'rejected by test trigger'; END IF; \
             RETURN NEW; \
         END $$; \
         CREATE TRIGGER reject_boom BEFORE INSERT ON messages \
             FOR EACH ROW EXECUTE FUNCTION reject_boom();",
    )
    .execute(&mut raw)
    .await
    .unwrap();
}

/// Returns the database name at the end of a URL of the test cluster.
pub fn database_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// Returns, for each server session on `database` other than this check's own, whether it uses
/// TLS.
pub async fn session_encryption(database: &str) -> Vec<bool> {
    let mut admin = cluster().connect("postgres").await;
    let encrypted = sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    admin.close().await.unwrap();
    encrypted
}

impl Cluster {
    /// Returns the URL of a database of this cluster.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port
        )
    }

    /// Connects as the superuser, for set-up that the store itself never does.
    pub async fn connect(&self, database: &str) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url(database))
            .await
            .unwrap_or_else(|err| panic!("connecting to the test cluster failed: {err}"))
    }

    fn start() -> Self {
        let bin = server_bindir();
        let dir = tempfile::Builder::new()
            .prefix("xiaomaolv-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let password_file = dir.join("password");
        std::fs::write(&password_file, PASSWORD).unwrap();
        write_certificates(&dir);
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(
                status.success(),
                "chown of {} to the `postgres` user failed; {INSTALL_HINT}",
                dir.display()
            );
        }
        init_cluster(&bin, &dir, &password_file);
        let port = free_port();
        let supervisor = as_server_user(Path::new("sh"))
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("sh")
            .arg(&dir)
            .arg(port.to_string())
            .arg(&bin)
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("starting the PostgreSQL supervisor failed: {err}"));
        wait_until_ready(&dir.join("postgres.log"));
        Self {
            port,
            socket_dir: dir.clone(),
            ca_file: dir.join("ca.crt"),
            other_ca_file: dir.join("other-ca.crt"),
            _supervisor: supervisor,
        }
    }
}

/// Writes a CA (`ca.crt`), the server's certificate signed by it for the name `localhost` only
/// (`server.crt`, `server.key`), and a second, unrelated CA (`other-ca.crt`) into `dir`. The
/// cluster's URLs use 127.0.0.1, which the certificate does not name.
fn write_certificates(dir: &Path) {
    let new_ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let certificate = params.self_signed(&key).unwrap();
        (certificate, Issuer::new(params, key))
    };
    let (ca, issuer) = new_ca("xiaomaolv test CA");
    let (other_ca, _) = new_ca("xiaomaolv other test CA");
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("other-ca.crt"), other_ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    let key_file = dir.join("server.key");
    std::fs::write(&key_file, server_key.serialize_pem()).unwrap();
    // The server rejects a key file that others can read.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn init_cluster(bin: &Path, dir: &Path, password_file: &Path) {
    let output = as_server_user(&bin.join("initdb"))
        .arg("-D")
        .arg(dir.join("data"))
        .arg(format!("--username={USER}"))
        .arg(format!("--pwfile={}", password_file.display()))
        .args([
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| panic!("running initdb failed: {err}; {INSTALL_HINT}"));
    assert!(
        output.status.success(),
        "initdb failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits for the server's ready line in its log, or fails with the log.
fn wait_until_ready(log: &Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(READY) {
            return;
        }
        if text.contains("FATAL") || Instant::now() > deadline {
            panic!("the test PostgreSQL server did not start; its log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Builds a command that runs as the `postgres` user when this process is root, else as this user.
fn as_server_user(program: &Path) -> Command {
    if !is_root() {
        return Command::new(program);
    }
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns a port that was free a moment ago. Another process could take it before the server
/// binds it, and then the server fails with the error in its log.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The directory with `initdb` and `postgres`: `pg_config --bindir`, the newest version under
/// /usr/lib/postgresql (where Debian puts them, off PATH), or a directory on PATH.
fn server_bindir() -> PathBuf {
    let pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let path = std::env::var_os("PATH").unwrap_or_default();
    pg_config
        .into_iter()
        .chain(debian_bindirs())
        .chain(std::env::split_paths(&path))
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .unwrap_or_else(|| {
            panic!(
                "the PostgreSQL server programs initdb and postgres were not found in \
                 `pg_config --bindir`, /usr/lib/postgresql/*/bin or PATH; {INSTALL_HINT}"
            )
        })
}

/// `/usr/lib/postgresql/VERSION/bin` directories, newest version first.
fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}
