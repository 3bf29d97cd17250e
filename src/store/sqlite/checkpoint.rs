//! The checkpointer thread: moves committed pages from the write-ahead log into the database file.
//!
//! With `synchronous = NORMAL` a commit only appends to the log, and the fsyncs happen when a
//! checkpoint copies the log into the database. SQLite's automatic checkpoint runs inside the
//! committing connection, so the turn that crossed the threshold, and every turn queued behind
//! it, waited for the copy and its fsyncs: about 12 ms, three times a second, at 500 messages/s on
//! the 2-vCPU benchmark machine. The write connection therefore has automatic checkpoints off,
//! and this thread is the only one that checkpoints.
//!
//! A checkpoint that copied the whole log also costs one commit an fsync: the first commit after
//! it starts the log again from its beginning, and SQLite syncs the log's new header before it
//! writes on. That stalls the turns behind that commit for 2 to 7 ms on the same machine, so that
//! commit runs on the writer thread (see `restart_pending`). So passive checkpoints
//! run at least [`COMMITS_PER_CHECKPOINT`] commits apart, which at low rates keeps the stalled
//! turns to a few in a thousand. At high rates a passive checkpoint rarely finishes, because
//! commits go on while it copies, and restart checkpoints at least [`RESTART_INTERVAL`] apart
//! start the log again. One checkpoint every 64 commits stalled several turns in a hundred.
//!
//! The passive checkpoints run on a second thread under `SCHED_IDLE` as long as it keeps a
//! deadline. `idle_copier.rs` explains why, and what happens when it misses one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::idle_copier::{Copy, IdleCopier};

/// Commits between two passive checkpoints at the least; the writer nudges this thread after
/// that many.
pub(super) const COMMITS_PER_CHECKPOINT: u32 = 300;

/// Shortest time between two restart checkpoints. At 2,000 single-turn commits per second, about
/// 11,000 log pages a second on the benchmark machine, the log reaches about 90 MB in this time.
const RESTART_INTERVAL: Duration = Duration::from_secs(2);

/// Runs a restart checkpoint on the write connection while no turn is being written.
pub(super) type Restart = Box<dyn Fn() -> rusqlite::Result<LogState> + Send>;

/// The writer's handle on the checkpointer thread.
#[derive(Debug)]
pub(super) struct Checkpointer {
    /// Wakes the thread. One pending nudge is enough, because commits made during a checkpoint
    /// share the next one.
    pub nudges: flume::Sender<()>,
    /// Set after a checkpoint that copied the whole log, because the next commit may then start
    /// the log again and wait for an fsync. The writer thread clears it after its next commit.
    /// After a checkpoint that left pages uncopied, the next commit appends as usual.
    pub restart_pending: Arc<AtomicBool>,
}

/// The checkpointer's connections to the database file.
#[derive(Debug)]
pub(super) struct CheckpointConnections {
    /// The checkpointer thread's own connection.
    pub own: Connection,
    /// The idle copier's connection.
    pub idle: Connection,
}

/// Starts the checkpointer and its idle copier on `connections`. Both threads stop when the
/// writer drops the sender of `nudges`.
pub(super) fn spawn(
    connections: CheckpointConnections,
    restart: Restart,
) -> std::io::Result<Checkpointer> {
    let (nudges, wakes) = flume::bounded(1);
    let restart_pending = Arc::new(AtomicBool::new(false));
    let pending = Arc::clone(&restart_pending);
    let copier = IdleCopier::spawn(connections.idle)?;
    let own = connections.own;
    thread::Builder::new()
        .name("store-checkpoint".to_owned())
        .spawn(move || run(&mut Passive::new(&own, copier), &restart, &wakes, &pending))?;
    Ok(Checkpointer {
        nudges,
        restart_pending,
    })
}

fn run(
    passive: &mut Passive<'_>,
    restart: &Restart,
    wakes: &flume::Receiver<()>,
    restart_pending: &AtomicBool,
) {
    let mut last_restart = Instant::now();
    while wakes.recv().is_ok() {
        let log_copied = match checkpoint(passive, restart, last_restart.elapsed()) {
            Ok(done) => {
                if done.restarted {
                    last_restart = Instant::now();
                }
                done.log.all_copied()
            }
            Err(err) => {
                tracing::warn!(error = %err, "Failed to checkpoint the write-ahead log.");
                true
            }
        };
        if log_copied {
            restart_pending.store(true, Ordering::Release);
        }
    }
}

/// Log size in pages above which a passive checkpoint is followed by a restart checkpoint, once
/// [`RESTART_INTERVAL`] has passed since the last one: about 16 MB with 4 KiB pages.
const RESTART_LOG_PAGES: i64 = 4096;

/// Log size in pages above which the restart checkpoint does not wait for [`RESTART_INTERVAL`],
/// about 128 MB. A closed loop of 9,000 messages/s on the benchmark machine writes about 30,000
/// pages a second.
const MAX_LOG_PAGES: i64 = 32_768;

/// Copies the log into the database, and returns whether it ran a restart checkpoint.
///
/// A passive checkpoint takes no lock that the writer or the readers wait for. But under steady
/// writes, pages are committed while it copies, so the log is never fully copied when the next
/// commit starts and never starts again from its beginning: it grew to 450 MB in 10 s at 2,000
/// messages/s. So when the log is long and the last restart was `since_restart` ago, a restart
/// checkpoint follows on the write connection, and no commit of this process runs meanwhile. It
/// copies the pages committed since the passive one and waits for the readers to leave the log,
/// so the next commit starts the log again. Run from this thread's connection, it waited in
/// SQLite's busy handler for a gap between commits, and back-to-back commits could hold it off
/// until its busy timeout.
///
/// The restart checkpoint copies and fsyncs while it keeps commits out, so it should find little
/// left to copy. With one passive checkpoint before it, the closed-loop p99 at 9,000 messages/s
/// was 94 to 100 ms. So passive checkpoints repeat, each copying what was committed during the
/// one before, until that is under [`RESTART_LEFTOVER_PAGES`] or [`MAX_PASSES`] have run.
fn checkpoint(
    passive: &mut Passive<'_>,
    restart: &Restart,
    since_restart: Duration,
) -> rusqlite::Result<Checkpointed> {
    let mut log = passive.run()?;
    let due = log.pages >= RESTART_LOG_PAGES
        && (since_restart >= RESTART_INTERVAL || log.pages >= MAX_LOG_PAGES);
    if !due {
        return Ok(Checkpointed {
            log,
            restarted: false,
        });
    }
    for _ in 1..MAX_PASSES {
        let previous = log.pages;
        log = passive.run()?;
        // The log only grows between restarts, so the difference is what was committed meanwhile.
        if log.pages - previous < RESTART_LEFTOVER_PAGES {
            break;
        }
    }
    let log = restart()?;
    Ok(Checkpointed {
        log,
        // A restart that found the checkpoint lock taken, by a late copy, did nothing, so the next
        // round may try again. One that SQLite reports busy because a reader kept it from
        // starting the log again still counts, so that restarts stay `RESTART_INTERVAL` apart.
        restarted: !log.busy(),
    })
}

/// Time the idle copier gets for one passive checkpoint. In a closed loop of 10,700 messages/s on
/// the 2-vCPU benchmark machine, 724 of them took 3.5 ms at the median and 31 ms at most, fsyncs
/// included. A copy that misses the deadline costs a spell of copying at normal priority, as
/// before the copier existed.
const COPY_DEADLINE: Duration = Duration::from_millis(250);

/// How long the checkpointer thread copies itself, at normal priority, after the idle copier
/// missed a deadline, before it tries the copier again.
const NORMAL_PRIORITY_SPELL: Duration = Duration::from_secs(10);

/// The runner of the checkpointer thread's passive checkpoints, which uses the idle copier unless
/// the copier missed a deadline lately.
struct Passive<'a> {
    /// The checkpointer thread's own connection.
    connection: &'a Connection,
    /// `None` after the copier thread stopped.
    copier: Option<IdleCopier>,
    /// Time until which the checkpointer thread copies at normal priority itself.
    normal_priority_until: Option<Instant>,
}

impl<'a> Passive<'a> {
    fn new(connection: &'a Connection, copier: IdleCopier) -> Self {
        Self {
            connection,
            copier: Some(copier),
            normal_priority_until: None,
        }
    }

    /// Runs one passive checkpoint and returns the state of the log after it. While a late copy
    /// still holds SQLite's checkpoint lock, the checkpoint finds it busy and copies nothing.
    fn run(&mut self) -> rusqlite::Result<LogState> {
        let now = Instant::now();
        let copier_due = self.normal_priority_until.is_none_or(|until| now >= until);
        if copier_due && let Some(copier) = self.copier.as_mut() {
            match copier.copy(COPY_DEADLINE) {
                Copy::Done(outcome) => return outcome,
                Copy::Late => {
                    tracing::info!(
                        deadline_ms = COPY_DEADLINE.as_millis(),
                        normal_priority_s = NORMAL_PRIORITY_SPELL.as_secs(),
                        "The idle checkpoint copier missed its deadline, so the checkpointer copies at normal priority for a while."
                    );
                    self.normal_priority_until = Some(now + NORMAL_PRIORITY_SPELL);
                }
                Copy::Stopped => {
                    tracing::warn!(
                        "The idle checkpoint copier stopped, so the checkpointer copies at normal priority from now on."
                    );
                    self.copier = None;
                }
            }
        }
        run_checkpoint(self.connection, "PASSIVE")
    }
}

/// The outcome of one round of checkpoints.
#[derive(Debug, Clone, Copy)]
struct Checkpointed {
    /// The log after the last checkpoint of the round.
    log: LogState,
    /// Whether the round ended with a restart checkpoint.
    restarted: bool,
}

/// The write-ahead log as a checkpoint left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LogState {
    /// Pages in the log.
    pub pages: i64,
    /// Pages copied into the database, out of `pages`.
    pub copied: i64,
}

impl LogState {
    /// Returns whether every page in the log is in the database, so the next commit may start
    /// the log again. An empty log also starts with a new header.
    fn all_copied(self) -> bool {
        !self.busy() && self.copied >= self.pages
    }

    /// Returns whether the checkpoint found another checkpoint running and did nothing. SQLite
    /// then reports -1 for both counts.
    fn busy(self) -> bool {
        self.pages < 0
    }
}

/// Pages committed during the last passive checkpoint below which the restart checkpoint runs.
const RESTART_LEFTOVER_PAGES: i64 = 256;

/// Most passive checkpoints before a restart checkpoint, the first one included.
const MAX_PASSES: u32 = 4;

/// Runs one checkpoint and returns the state of the log after it.
pub(super) fn run_checkpoint(connection: &Connection, mode: &str) -> rusqlite::Result<LogState> {
    let started = Instant::now();
    let (busy, log_pages, copied_pages): (i64, i64, i64) =
        connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    tracing::debug!(
        mode,
        busy = busy != 0,
        log_pages,
        copied_pages,
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "Checkpointed the write-ahead log."
    );
    Ok(LogState {
        pages: log_pages,
        copied: copied_pages,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

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
    fn log_pinned_by_reader_is_not_all_copied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let writer = open(&path);
        writer.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        let reader = open(&path);
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        // Committed after the reader's snapshot, so a checkpoint may not copy it yet.
        writer.execute("INSERT INTO t VALUES (1)", []).unwrap();

        let pinned = run_checkpoint(&open(&path), "PASSIVE").unwrap();
        assert!(pinned.copied < pinned.pages, "{pinned:?}");
        assert!(!pinned.all_copied());

        reader.execute_batch("COMMIT").unwrap();
        let released = run_checkpoint(&open(&path), "PASSIVE").unwrap();
        assert_eq!(released.copied, released.pages);
        assert!(released.all_copied());
    }

    /// Returns a database at `path` whose log has uncopied pages.
    fn database_with_log(path: &std::path::Path) -> Connection {
        let writer = open(path);
        writer.execute_batch("CREATE TABLE t (v INTEGER)").unwrap();
        for v in 0..20 {
            writer.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
        }
        writer
    }

    #[test]
    fn late_copier_hands_copying_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let _writer = database_with_log(&path);
        let own = open(&path);
        let (copier, jobs, _results) = IdleCopier::with_channels(&own);
        let mut passive = Passive::new(&own, copier);

        let log = passive.run().unwrap();
        assert!(log.pages > 0, "{log:?}");
        assert!(log.all_copied(), "{log:?}");
        assert!(passive.normal_priority_until.is_some());
        assert_eq!(jobs.len(), 1);

        // Until the spell ends, the next pass sends the copier no request.
        jobs.recv().unwrap();
        passive.run().unwrap();
        assert!(jobs.is_empty());
    }

    #[test]
    fn stopped_copier_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let _writer = database_with_log(&path);
        let own = open(&path);
        let (copier, jobs, results) = IdleCopier::with_channels(&own);
        drop((jobs, results));
        let mut passive = Passive::new(&own, copier);

        let log = passive.run().unwrap();
        assert!(log.pages > 0, "{log:?}");
        assert!(log.all_copied(), "{log:?}");
        assert!(passive.copier.is_none());
    }

    #[test]
    fn copier_copies_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let _writer = database_with_log(&path);
        let own = open(&path);
        let mut passive = Passive::new(&own, IdleCopier::spawn(open(&path)).unwrap());

        let log = passive.run().unwrap();
        assert!(log.pages > 0, "{log:?}");
        assert!(log.all_copied(), "{log:?}");
        assert!(passive.normal_priority_until.is_none());
    }

    #[test]
    fn busy_log_is_not_all_copied() {
        let busy = LogState {
            pages: -1,
            copied: -1,
        };
        assert!(busy.busy());
        assert!(!busy.all_copied());
        let empty = LogState {
            pages: 0,
            copied: 0,
        };
        assert!(!empty.busy());
        assert!(empty.all_copied());
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
        // Commits back to back, each under the lock the restart takes too, as the store's writer
        // does.
        let writer = Arc::new(Mutex::new(writer));
        let stop = Arc::new(AtomicBool::new(false));
        let committing = {
            let (writer, stop) = (Arc::clone(&writer), Arc::clone(&stop));
            thread::spawn(move || {
                let mut commits = 0u32;
                while !stop.load(Ordering::Relaxed) || commits < 10 {
                    let writer = writer.lock().unwrap();
                    writer
                        .execute("INSERT INTO filler VALUES (zeroblob(100))", [])
                        .unwrap();
                    commits += 1;
                }
            })
        };
        let restart: Restart = {
            let writer = Arc::clone(&writer);
            Box::new(move || run_checkpoint(&writer.lock().unwrap(), "RESTART"))
        };

        let own = open(&path);
        let mut passive = Passive::new(&own, IdleCopier::spawn(open(&path)).unwrap());
        assert!(
            checkpoint(&mut passive, &restart, RESTART_INTERVAL)
                .unwrap()
                .restarted
        );
        stop.store(true, Ordering::Relaxed);
        committing.join().unwrap();

        // The commits after the restart checkpoint wrote from the log's beginning again.
        let pages = log_pages(&writer.lock().unwrap());
        assert!(
            pages < RESTART_LOG_PAGES / 2,
            "the log still has {pages} pages"
        );
    }
}
