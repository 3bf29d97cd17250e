//! Sorting SQLite write errors into store faults, which `/health` reports, and rejections of one
//! turn's rows, which it ignores.

use rusqlite::ErrorCode;

use crate::store::WriteFault;

/// Returns the store fault behind a failed write, or `None` when the error rejects only the rows
/// of one turn (a constraint, a value too big or of the wrong type) or is not an SQLite error.
pub(super) fn write_fault(err: &rusqlite::Error) -> Option<WriteFault> {
    let rusqlite::Error::SqliteFailure(failure, _) = err else {
        return None;
    };
    let (kind, check) = match failure.code {
        ErrorCode::ConstraintViolation
        | ErrorCode::TooBig
        | ErrorCode::TypeMismatch
        | ErrorCode::ParameterOutOfRange => return None,
        ErrorCode::DiskFull => (
            "disk_full",
            "free space on the file system of the database file and its -wal file",
        ),
        ErrorCode::ReadOnly => (
            "read_only",
            "check that the gateway's user can write the database file, its -wal and -shm files \
             and their directory, and that the file system is not mounted read-only",
        ),
        ErrorCode::SystemIoFailure | ErrorCode::NoLargeFileSupport => (
            "io_error",
            "check the kernel log for disk errors, and that the database file and its -wal file \
             can be written: not full, not on a read-only mount and without the immutable \
             attribute (lsattr)",
        ),
        ErrorCode::PermissionDenied => (
            "permission_denied",
            "check the owner and mode of the database file, its -wal and -shm files and their \
             directory",
        ),
        ErrorCode::CannotOpen => (
            "cannot_open",
            "check that the gateway's user can create files in the directory of the database \
             file, where SQLite keeps its -wal and -shm files",
        ),
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => (
            "locked",
            "another process held the database's write lock for longer than \
             store.busy_timeout_ms; check which processes have the database file open",
        ),
        ErrorCode::FileLockingProtocolFailed => (
            "locking_failed",
            "check that the database is on a local file system, not a network share",
        ),
        ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => (
            "corrupt",
            "the database file is damaged; stop the gateway and restore the file from a backup",
        ),
        ErrorCode::OutOfMemory => (
            "out_of_memory",
            "check the memory limit of the gateway process",
        ),
        _ => (
            "other",
            "see the gateway log for the error of the failed turns",
        ),
    };
    Some(WriteFault {
        kind,
        // The extended code distinguishes, for example, a failed write from a failed fsync.
        code: Some(format!(
            "{} ({})",
            primary_name(failure.extended_code),
            failure.extended_code
        )),
        check,
    })
}

/// Returns the name of the primary result code in an extended one, as sqlite3.h spells it.
fn primary_name(extended_code: i32) -> &'static str {
    use rusqlite::ffi;
    match extended_code & 0xff {
        ffi::SQLITE_ERROR => "SQLITE_ERROR",
        ffi::SQLITE_INTERNAL => "SQLITE_INTERNAL",
        ffi::SQLITE_PERM => "SQLITE_PERM",
        ffi::SQLITE_ABORT => "SQLITE_ABORT",
        ffi::SQLITE_BUSY => "SQLITE_BUSY",
        ffi::SQLITE_LOCKED => "SQLITE_LOCKED",
        ffi::SQLITE_NOMEM => "SQLITE_NOMEM",
        ffi::SQLITE_READONLY => "SQLITE_READONLY",
        ffi::SQLITE_INTERRUPT => "SQLITE_INTERRUPT",
        ffi::SQLITE_IOERR => "SQLITE_IOERR",
        ffi::SQLITE_CORRUPT => "SQLITE_CORRUPT",
        ffi::SQLITE_NOTFOUND => "SQLITE_NOTFOUND",
        ffi::SQLITE_FULL => "SQLITE_FULL",
        ffi::SQLITE_CANTOPEN => "SQLITE_CANTOPEN",
        ffi::SQLITE_PROTOCOL => "SQLITE_PROTOCOL",
        ffi::SQLITE_SCHEMA => "SQLITE_SCHEMA",
        ffi::SQLITE_MISUSE => "SQLITE_MISUSE",
        ffi::SQLITE_NOLFS => "SQLITE_NOLFS",
        ffi::SQLITE_AUTH => "SQLITE_AUTH",
        ffi::SQLITE_NOTADB => "SQLITE_NOTADB",
        _ => "SQLITE_UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(extended_code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(extended_code), None)
    }

    #[test]
    fn disk_full_is_fault() {
        let fault = write_fault(&sqlite_error(rusqlite::ffi::SQLITE_FULL)).unwrap();
        assert_eq!(fault.kind, "disk_full");
        assert_eq!(fault.code.as_deref(), Some("SQLITE_FULL (13)"));
    }

    #[test]
    fn write_io_error_keeps_extended_code() {
        let fault = write_fault(&sqlite_error(rusqlite::ffi::SQLITE_IOERR_WRITE)).unwrap();
        assert_eq!(fault.kind, "io_error");
        assert_eq!(fault.code.as_deref(), Some("SQLITE_IOERR (778)"));
    }

    #[test]
    fn constraint_is_not_fault() {
        let err = sqlite_error(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY);
        assert_eq!(write_fault(&err), None);
    }

    #[test]
    fn non_sqlite_error_is_not_fault() {
        assert_eq!(write_fault(&rusqlite::Error::InvalidQuery), None);
    }
}
