//! A thread that runs passive checkpoints under Linux's `SCHED_IDLE` policy.
//!
//! A passive checkpoint copies megabytes of log into the database with no pause. At 2,000
//! messages/s on the 2-vCPU benchmark machine the checkpointer ran for 0.6 to 1.9 ms at a time.
//! At normal priority it preempted the gateway's runtime thread and kept it waiting on that CPU
//! while the other CPU was idle, which set most of the p99 at that rate (docs/benchmarks.md,
//! run 12). In Linux's fair scheduler a waking normal thread always preempts a `SCHED_IDLE`
//! thread, and a `SCHED_IDLE` thread never preempts a normal one.
//!
//! But a `SCHED_IDLE` thread gets almost no CPU while normal threads keep every CPU busy, and an
//! unprivileged thread cannot leave that policy again (sched(7), with the default `RLIMIT_NICE`
//! of 0). So the checkpointer thread, which keeps normal priority, gives each copy a deadline
//! (see [`IdleCopier::copy`]) and runs the checkpoint itself when the copier misses it.

use std::thread;
use std::time::Duration;

use flume::{RecvTimeoutError, TryRecvError};
use rusqlite::{Connection, InterruptHandle};

use super::checkpoint::{LogState, run_checkpoint};

/// The checkpointer's handle on the copier thread. Dropping it stops the thread once the thread
/// next runs.
///
/// NOTE: SQLite code on the copier takes mutexes shared by every connection in the process, such
/// as the one around the log's shared-memory locks. A copier preempted inside one while other
/// processes keep every CPU busy holds up any thread that needs the same mutex until the copier
/// runs again. A closed loop beside two CPU-bound processes showed no such wait of 5 ms or more.
pub(super) struct IdleCopier {
    requests: flume::Sender<()>,
    replies: flume::Receiver<rusqlite::Result<LogState>>,
    interrupt: InterruptHandle,
    /// Whether a request has no reply yet, in which case the copier may still hold SQLite's
    /// checkpoint lock.
    pending: bool,
}

impl std::fmt::Debug for IdleCopier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleCopier")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

/// The outcome of asking the copier for one passive checkpoint.
#[derive(Debug)]
pub(super) enum Copy {
    /// The copier ran the checkpoint in time.
    Done(rusqlite::Result<LogState>),
    /// The copier missed the deadline or is still busy with an earlier request. A late copy was
    /// interrupted, and it may hold the checkpoint lock until the copier next runs.
    Late,
    /// The copier thread has stopped.
    Stopped,
}

impl IdleCopier {
    /// Starts the copier thread on its own `connection` to the database.
    pub(super) fn spawn(connection: Connection) -> std::io::Result<Self> {
        let (copier, jobs, results) = Self::with_channels(&connection);
        thread::Builder::new()
            .name("store-ckpt-idle".to_owned())
            .spawn(move || {
                lower_priority();
                while jobs.recv().is_ok() {
                    if results
                        .send(run_checkpoint(&connection, "PASSIVE"))
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok(copier)
    }

    /// Returns a copier for `connection` with no thread behind it yet, and the channel ends that
    /// the thread takes requests from and sends outcomes to.
    pub(super) fn with_channels(
        connection: &Connection,
    ) -> (
        Self,
        flume::Receiver<()>,
        flume::Sender<rusqlite::Result<LogState>>,
    ) {
        let (requests, jobs) = flume::bounded(1);
        let (results, replies) = flume::bounded(1);
        let copier = Self {
            requests,
            replies,
            interrupt: connection.get_interrupt_handle(),
            pending: false,
        };
        (copier, jobs, results)
    }

    /// Asks the copier for one passive checkpoint and waits up to `deadline` for its outcome.
    pub(super) fn copy(&mut self, deadline: Duration) -> Copy {
        if self.pending {
            match self.replies.try_recv() {
                // The outcome of a late copy, which no caller waits for any more.
                Ok(_) => self.pending = false,
                Err(TryRecvError::Empty) => return Copy::Late,
                Err(TryRecvError::Disconnected) => return Copy::Stopped,
            }
        }
        if self.requests.send(()).is_err() {
            return Copy::Stopped;
        }
        self.pending = true;
        match self.replies.recv_timeout(deadline) {
            Ok(outcome) => {
                self.pending = false;
                Copy::Done(outcome)
            }
            Err(RecvTimeoutError::Timeout) => {
                // SQLite checks for an interrupt before each page it copies, and it clears a
                // stale interrupt when the connection's next statement starts.
                self.interrupt.interrupt();
                Copy::Late
            }
            Err(RecvTimeoutError::Disconnected) => Copy::Stopped,
        }
    }
}

/// Puts the calling thread under `SCHED_IDLE`. Where that fails, the thread keeps its policy and
/// the gateway works as before.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` that lives across the call, and pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "Failed to put the store's checkpoint copier under SCHED_IDLE; it runs at normal priority."
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_without_reply_is_late() {
        let connection = Connection::open_in_memory().unwrap();
        let (mut copier, jobs, _results) = IdleCopier::with_channels(&connection);

        assert!(matches!(copier.copy(Duration::ZERO), Copy::Late));
        assert!(copier.pending);
        // A second request waits for the first one's reply instead of queueing behind it.
        assert!(matches!(copier.copy(Duration::from_secs(5)), Copy::Late));
        assert_eq!(jobs.len(), 1);
    }

    #[test]
    fn stale_reply_is_dropped() {
        let connection = Connection::open_in_memory().unwrap();
        let (mut copier, jobs, results) = IdleCopier::with_channels(&connection);
        assert!(matches!(copier.copy(Duration::ZERO), Copy::Late));
        jobs.recv().unwrap();
        let stale = LogState {
            pages: 1,
            copied: 0,
        };
        results.send(Ok(stale)).unwrap();

        let answering = thread::spawn(move || {
            jobs.recv().unwrap();
            let fresh = LogState {
                pages: 7,
                copied: 7,
            };
            results.send(Ok(fresh)).unwrap();
        });
        match copier.copy(Duration::from_secs(30)) {
            Copy::Done(Ok(log)) => assert_eq!(log.pages, 7),
            other => panic!("expected the second copy's outcome, got {other:?}"),
        }
        assert!(!copier.pending);
        answering.join().unwrap();
    }

    #[test]
    fn stopped_copier_reports_stopped() {
        let connection = Connection::open_in_memory().unwrap();
        let (mut copier, jobs, results) = IdleCopier::with_channels(&connection);
        drop((jobs, results));

        assert!(matches!(copier.copy(Duration::from_secs(5)), Copy::Stopped));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn copier_thread_runs_under_sched_idle() {
        let dir = tempfile::tempdir().unwrap();
        let connection = Connection::open(dir.path().join("idle.db")).unwrap();
        connection
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        let mut copier = IdleCopier::spawn(connection).unwrap();
        // The thread lowers its priority before it takes its first request.
        assert!(matches!(
            copier.copy(Duration::from_secs(30)),
            Copy::Done(Ok(_))
        ));

        let mut policies = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().path();
            let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
                continue;
            };
            if name.trim_end() != "store-ckpt-idle" {
                continue;
            }
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            // The fields after the command name, which is in parentheses. The policy is field
            // 41 of the whole line, see proc_pid_stat(5).
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
            policies.push(fields[41 - 3].parse::<i32>().unwrap());
        }
        assert!(!policies.is_empty(), "no thread named store-ckpt-idle");
        assert!(
            policies.iter().all(|&policy| policy == libc::SCHED_IDLE),
            "policies {policies:?}"
        );
    }
}
