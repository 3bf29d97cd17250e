//! The checkpointer thread: moves committed pages from the write-ahead log into the database file.
//!
//! With `synchronous = NORMAL` a commit only appends to the log, and the fsyncs happen when a
//! checkpoint copies the log into the database. SQLite's automatic checkpoint runs inside the
//! committing connection, so the turn that crossed the threshold, and every turn queued behind
//! it, waited for the copy and its fsyncs: about 12 ms, three times a second, at 500 messages/s on
//! the 2-vCPU benchmark machine. The write connection therefore has automatic checkpoints off,
//! and this thread is the only one that checkpoints.
//!
//! A checkpoint also costs one commit an fsync: the first commit after a finished checkpoint
//! starts the log again from its beginning, and SQLite syncs the log's new header before it
//! writes on. That stalls the turns behind that commit for 2 to 7 ms on the same machine. So
//! checkpoints are rare: at least [`COMMITS_PER_CHECKPOINT`] commits and [`CHECKPOINT_INTERVAL`]
//! apart, which keeps the stalled turns to a few in a thousand at any rate, below the 99th
//! percentile of latency. One checkpoint every 64 commits stalled several in a hundred.

use std::thread;
use std::time::Duration;

use rusqlite::Connection;

/// Commits between two checkpoints at the least; the writer nudges this thread after that many.
pub(super) const COMMITS_PER_CHECKPOINT: u32 = 200;

/// Shortest time between two checkpoints. At 2,000 single-turn commits per second the log grows
/// by about 30 MB in this time.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the checkpointer. The thread stops when the writer drops the sender of `nudges`.
pub(super) fn spawn(connection: Connection, nudges: flume::Receiver<()>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("store-checkpoint".to_owned())
        .spawn(move || run(&connection, &nudges))
        .map(drop)
}

fn run(connection: &Connection, nudges: &flume::Receiver<()>) {
    while nudges.recv().is_ok() {
        if let Err(err) = checkpoint(connection) {
            tracing::warn!(error = %err, "Failed to checkpoint the write-ahead log.");
        }
        thread::sleep(CHECKPOINT_INTERVAL);
    }
}

/// Log size in pages above which a passive checkpoint is followed by a restart checkpoint, about
/// 16 MB with 4 KiB pages.
const RESTART_LOG_PAGES: i64 = 4096;

/// Copies the log into the database. A passive checkpoint takes no lock that the writer or the
/// readers wait for. But under steady writes, pages are committed while it copies, so the log is
/// never fully copied when the next commit starts and never starts again from its beginning: it
/// grew to 450 MB in 10 s at 2,000 messages/s. When the log is long, a restart checkpoint follows.
/// It keeps new commits out while it copies the few pages the passive one left, and waits for the
/// readers to leave the log, so the next commit starts the log again.
fn checkpoint(connection: &Connection) -> rusqlite::Result<()> {
    if run_checkpoint(connection, "PASSIVE")? < RESTART_LOG_PAGES {
        return Ok(());
    }
    run_checkpoint(connection, "RESTART").map(drop)
}

/// Runs one checkpoint and returns the number of pages in the log.
fn run_checkpoint(connection: &Connection, mode: &str) -> rusqlite::Result<i64> {
    let (busy, log_pages, copied_pages): (i64, i64, i64) =
        connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    tracing::debug!(
        mode,
        busy = busy != 0,
        log_pages,
        copied_pages,
        "Checkpointed the write-ahead log."
    );
    Ok(log_pages)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn open(path: &std::path::Path) -> Connection {
        let connection = Connection::open(path).unwrap();
        connection
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        connection
            .pragma_update(None, "wal_autocheckpoint", 0)
            .unwrap();
        connection.busy_timeout(Duration::from_secs(5)).unwrap();
        connection
    }

    fn log_pages(connection: &Connection) -> i64 {
        connection
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
            .unwrap()
    }

    #[test]
    fn long_log_restarts_under_commits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let writer = open(&path);
        writer
            .execute_batch("CREATE TABLE filler (body BLOB)")
            .unwrap();
        // About 5,000 pages of log, one commit per 16 KiB row.
        for _ in 0..1300 {
            writer
                .execute("INSERT INTO filler VALUES (zeroblob(16384))", [])
                .unwrap();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let committing = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut commits = 0u32;
                while !stop.load(Ordering::Relaxed) || commits < 10 {
                    writer
                        .execute("INSERT INTO filler VALUES (zeroblob(100))", [])
                        .unwrap();
                    commits += 1;
                }
                writer
            })
        };

        checkpoint(&open(&path)).unwrap();
        stop.store(true, Ordering::Relaxed);
        let writer = committing.join().unwrap();

        // The commits after the restart checkpoint wrote from the log's beginning again.
        let pages = log_pages(&writer);
        assert!(
            pages < RESTART_LOG_PAGES / 2,
            "the log still has {pages} pages"
        );
    }
}
