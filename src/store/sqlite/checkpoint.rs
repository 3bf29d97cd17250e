//! The checkpointer thread: moves committed pages from the write-ahead log into the database file.
//!
//! With `synchronous = NORMAL` a commit only appends to the log, and the fsyncs happen when a
//! checkpoint copies the log into the database. SQLite's automatic checkpoint runs inside the
//! committing connection, so with the default threshold of 1,000 pages the writer thread stalled
//! for the copy and its fsyncs, and every turn queued behind it waited. At 500 messages/s with
//! `bench/load.sh` on the 2-vCPU benchmark machine that was about 12 ms, three times a second.
//! This thread runs passive checkpoints on its own connection instead, which by SQLite's
//! documentation of `PRAGMA wal_checkpoint` wait for neither the writer nor the readers. The
//! writer keeps a high threshold of its own, which bounds the log under steady load (see
//! `WRITER_CHECKPOINT_PAGES` in `connect.rs`).

use std::thread;

use rusqlite::Connection;

/// Starts the checkpointer. The writer sends on `nudges` every 64 batches, and the thread stops
/// when the writer drops its sender.
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
    }
}

/// Copies every log page that no reader still needs. A passive checkpoint takes no lock that
/// writers or readers wait for, so it may leave pages behind. The next one copies them.
fn checkpoint(connection: &Connection) -> rusqlite::Result<()> {
    let (busy, log_pages, checkpointed_pages): (i64, i64, i64) =
        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    tracing::debug!(
        busy,
        log_pages,
        checkpointed_pages,
        "Checkpointed the write-ahead log."
    );
    Ok(())
}
