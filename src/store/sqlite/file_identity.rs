//! The identity of the database file, to notice when it is moved, deleted or replaced.
//!
//! SQLite keeps reading and writing an open file after it was renamed or unlinked. Turns would
//! still commit, into a file that the next start of the gateway no longer finds at the path, so
//! they would be lost. The store compares the device and inode at the path with those recorded
//! at open, one `stat` per check.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::store::StoreError;

/// The device and inode of the database file when the store opened it.
#[derive(Debug, Clone)]
pub(super) struct FileIdentity {
    path: PathBuf,
    device: u64,
    inode: u64,
}

impl FileIdentity {
    /// Records the identity of the file now at `path`.
    pub(super) fn record(path: &Path) -> Result<Self, StoreError> {
        let metadata = std::fs::metadata(path).map_err(|err| moved(path, stat_failure(&err)))?;
        Ok(Self {
            path: path.to_owned(),
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }

    /// Returns an error unless the file at the path is still the one recorded.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        let metadata = match std::fs::metadata(&self.path) {
            Ok(metadata) => metadata,
            Err(err) => return Err(moved(&self.path, stat_failure(&err))),
        };
        if metadata.dev() != self.device || metadata.ino() != self.inode {
            return Err(moved(
                &self.path,
                "another file is at that path now".to_owned(),
            ));
        }
        Ok(())
    }
}

fn stat_failure(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => "no file is at that path now".to_owned(),
        _ => format!("cannot read the file's metadata: {err}"),
    }
}

fn moved(path: &Path, reason: String) -> StoreError {
    StoreError::FileMoved {
        path: path.to_owned(),
        reason,
    }
}
