//! Sorting failed PostgreSQL saves into store faults, which `/health` reports, and rejections of
//! one turn's rows, which it ignores.

use crate::store::{StoreError, WriteFault};

const CONNECTION_LOST: &str = "check that the PostgreSQL server is running and reachable at \
     store.url, and see its log";

/// Returns the store fault behind a failed save, or `None` when the error rejects only the rows of
/// one turn. Such rejections have SQLSTATE class 22 (a data exception, such as a NUL character),
/// 23 (a constraint), 40 (a serialization failure or deadlock) or P0 (raised by a trigger). The
/// code 55P03, a wait for the session's lock that timed out, is one too.
pub(super) fn write_fault(err: &StoreError) -> Option<WriteFault> {
    let (kind, code, check) = match err {
        StoreError::PoolTimedOut { .. } => (
            "timed_out",
            None,
            "no pooled connection became free within store.busy_timeout_ms; check the server's \
             load, and raise store.max_connections if every connection is busy",
        ),
        StoreError::Postgres(sqlx::Error::Database(db)) => {
            let code = db.code().map(|code| code.into_owned());
            let (kind, check) = database_fault(code.as_deref().unwrap_or(""))?;
            (kind, code, check)
        }
        StoreError::Postgres(
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed,
        ) => ("connection_lost", None, CONNECTION_LOST),
        StoreError::Postgres(
            sqlx::Error::Encode(_)
            | sqlx::Error::Decode(_)
            | sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::TypeNotFound { .. },
        ) => return None,
        _ => (
            "other",
            None,
            "see the gateway log for the error of the failed turns",
        ),
    };
    Some(WriteFault { kind, code, check })
}

/// Returns the kind and the check for an error that the server reported with SQLSTATE `code`.
fn database_fault(code: &str) -> Option<(&'static str, &'static str)> {
    let class = code.get(..2).unwrap_or("");
    let fault = match (class, code) {
        ("22" | "23" | "40" | "P0", _) | (_, "55P03") => return None,
        (_, "42501") => (
            "permission_denied",
            "grant the user of store.url INSERT, UPDATE and SELECT on the gateway's tables",
        ),
        (_, "25006") => (
            "read_only",
            "the server accepts only reads; check that store.url names the primary, not a standby, \
             and that default_transaction_read_only is off",
        ),
        (_, "53100") => ("disk_full", "free disk space on the PostgreSQL server"),
        ("53", _) => (
            "out_of_resources",
            "check the PostgreSQL server's log and its memory and connection limits",
        ),
        (_, "57014") => (
            "timed_out",
            "a statement was cancelled, for example by statement_timeout; check the server's load",
        ),
        ("08" | "57", _) | (_, "55000") => ("connection_lost", CONNECTION_LOST),
        ("28", _) => (
            "login_failed",
            "check the user and password in store.url and the server's pg_hba.conf",
        ),
        ("58", _) => (
            "io_error",
            "check the PostgreSQL server's log and its disks",
        ),
        ("XX", _) => (
            "server_error",
            "the PostgreSQL server reported an internal error or damaged data; see its log",
        ),
        _ => (
            "other",
            "see the gateway log for the error of the failed turns",
        ),
    };
    Some(fault)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insufficient_privilege_is_permission_denied() {
        let (kind, _) = database_fault("42501").unwrap();
        assert_eq!(kind, "permission_denied");
    }

    #[test]
    fn disk_full_and_read_only_are_faults() {
        assert_eq!(database_fault("53100").unwrap().0, "disk_full");
        assert_eq!(database_fault("25006").unwrap().0, "read_only");
        assert_eq!(database_fault("57P01").unwrap().0, "connection_lost");
    }

    #[test]
    fn rejected_rows_are_not_faults() {
        for code in ["22021", "23505", "40P01", "P0001", "55P03"] {
            assert_eq!(database_fault(code), None, "SQLSTATE {code}");
        }
    }

    #[test]
    fn pool_timeout_is_fault() {
        let err = StoreError::PoolTimedOut {
            server: "127.0.0.1:5432/db as gateway".to_owned(),
            timeout_ms: 5000,
        };
        let fault = write_fault(&err).unwrap();
        assert_eq!(fault.kind, "timed_out");
        assert_eq!(fault.code, None, "the server name stays out of the record");
    }
}
