//! Timeout circuit for code mode: a thread-safe state machine that decides, for each request,
//! whether code mode runs normally, runs as a probe, or is skipped.
//!
//! When tool calls keep timing out, code mode spends its whole budget and then falls back anyway,
//! so the user waits for both. After `streak_to_open` consecutive timeout alerts the circuit opens and
//! code mode is skipped, except that every `probe_every`-th request runs it as a probe. A probe
//! that executes at least one tool call without an alert closes the circuit again.
//!
//! The module only decides and records. The caller runs the program (probes in shadow), serves the
//! reply, and reads metrics and diag fields from [`CircuitSnapshot`]. All state sits behind one
//! `std::sync::Mutex` that is held for a few field updates only, and logs are written after it is
//! released. Every open and close bumps an epoch, so a normal run admitted before a transition can
//! no longer move the streak. With `shadow_mode` set the circuit keeps its state, and reloaded
//! settings keep the state and counters.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Timeout-circuit settings, already validated by the config loader.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CircuitSettings {
    /// Minimum share of timed-out calls among executed calls (0 to 1) that makes a run a timeout
    /// alert.
    pub warn_ratio: f64,
    /// Whether a streak of timeout alerts opens the circuit.
    pub auto_shadow_enabled: bool,
    /// Number of consecutive timeout alerts that opens the circuit (at least 1).
    pub streak_to_open: u32,
    /// While the circuit is open, every `probe_every`-th request runs as a probe (at least 1).
    pub probe_every: u32,
    /// Code mode already runs in shadow, so the circuit keeps its state.
    pub shadow_mode: bool,
}

impl CircuitSettings {
    /// Raises zero counts to 1, because a zero would open on clean runs or never probe.
    fn normalized(self) -> Self {
        Self {
            streak_to_open: self.streak_to_open.max(1),
            probe_every: self.probe_every.max(1),
            ..self
        }
    }
}

/// Returns whether a run is a timeout alert. An alert needs at least one timed-out call and a
/// share of timed-out calls among executed calls of at least `warn_ratio`, so a run without
/// executed calls is never an alert.
pub fn is_timeout_alert(executed_calls: u32, timed_out_calls: u32, warn_ratio: f64) -> bool {
    if executed_calls == 0 || timed_out_calls == 0 {
        return false;
    }
    timeout_ratio(executed_calls, timed_out_calls) >= warn_ratio
}

fn timeout_ratio(executed_calls: u32, timed_out_calls: u32) -> f64 {
    if executed_calls == 0 {
        return 0.0;
    }
    f64::from(timed_out_calls) / f64::from(executed_calls)
}

/// Decision for one request.
#[derive(Debug)]
pub enum Admission {
    /// Run code mode as usual, in shadow when `shadow_mode` is set.
    Run(RunTicket),
    /// Run code mode in shadow to test whether tool calls have recovered.
    Probe(RunTicket),
    /// Skip code mode because the circuit is open.
    Skip,
}

/// Result of an admitted run, reported through [`RunTicket::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunResult {
    /// The program ran to its end or failed, after executing `executed_calls` tool calls, of
    /// which `timed_out_calls` hit their per-call timeout.
    Completed {
        executed_calls: u32,
        timed_out_calls: u32,
    },
    /// The model returned a reply without a program.
    NoProgram,
    /// The whole run exceeded its time budget.
    TimedOut,
}

/// Effect of a finished run on the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The circuit kept its state. The result may have moved the streak, or shadow mode kept
    /// the circuit from moving.
    None,
    /// A streak of timeout alerts opened the circuit.
    Opened,
    /// A probe without a timeout alert closed the circuit.
    Closed,
    /// A probe had a timeout alert or timed out as a whole, so the circuit stays open.
    KeptOpen,
    /// A probe got no program or executed no tool call, so the next request probes again.
    Inconclusive,
    /// A normal run finished after the circuit had opened, so its result was discarded.
    Ignored,
}

/// Cause of the last open or close, serialized in snake_case for the diag endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionReason {
    /// `streak_to_open` consecutive timeout alerts.
    TimeoutStreak,
    /// A probe executed tool calls without a timeout alert.
    ProbeSucceeded,
}

/// Time and cause of a circuit transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TransitionRecord {
    /// Wall-clock time of the transition, in milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    pub reason: TransitionReason,
}

/// Circuit state and counters, as shown by the diag endpoint and exported as metrics.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CircuitSnapshot {
    pub open: bool,
    /// Consecutive timeout alerts of normal runs. It keeps its value while the circuit is open.
    pub streak: u32,
    /// Requests counted toward the next probe since the last probe started or the circuit opened.
    pub probe_counter: u32,
    pub probe_in_flight: bool,
    pub opens_total: u64,
    pub closes_total: u64,
    pub probes_total: u64,
    /// Requests that skipped code mode because the circuit was open.
    pub skips_total: u64,
    /// Timeout alerts of every run, including shadow runs, probes and discarded runs.
    pub alerts_total: u64,
    pub last_transition: Option<TransitionRecord>,
}

/// Timeout circuit shared by all requests through an `Arc`.
#[derive(Debug)]
pub struct TimeoutCircuit {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    settings: CircuitSettings,
    /// Bumped by every open and close.
    epoch: u64,
    circuit: CircuitSnapshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Normal,
    Probe,
}

/// Permit for one admitted run. Finish it with [`RunTicket::finish`]. Dropping an unfinished
/// probe ticket frees the probe slot, so a cancelled request cannot block probing.
#[derive(Debug)]
pub struct RunTicket {
    circuit: Arc<TimeoutCircuit>,
    kind: RunKind,
    epoch: u64,
    finished: bool,
}

impl RunTicket {
    pub fn is_probe(&self) -> bool {
        self.kind == RunKind::Probe
    }

    /// Applies the run's result to the circuit and logs any alert or transition.
    pub fn finish(mut self, result: RunResult) -> Transition {
        self.finished = true;
        self.circuit.finish(self.kind, self.epoch, result)
    }
}

impl Drop for RunTicket {
    fn drop(&mut self) {
        if !self.finished && self.is_probe() {
            self.circuit.release_dropped_probe();
        }
    }
}

impl TimeoutCircuit {
    pub fn new(settings: CircuitSettings) -> Arc<Self> {
        let state = State {
            settings: settings.normalized(),
            epoch: 0,
            circuit: CircuitSnapshot::default(),
        };
        Arc::new(Self {
            state: Mutex::new(state),
        })
    }

    /// Decides how the current request uses code mode, counting it toward the next probe while
    /// the circuit is open.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let (kind, epoch) = {
            let mut state = self.lock();
            (state.admit(), state.epoch)
        };
        let ticket = |kind| RunTicket {
            circuit: Arc::clone(self),
            kind,
            epoch,
            finished: false,
        };
        match kind {
            Some(RunKind::Normal) => Admission::Run(ticket(RunKind::Normal)),
            Some(RunKind::Probe) => Admission::Probe(ticket(RunKind::Probe)),
            None => Admission::Skip,
        }
    }

    pub fn snapshot(&self) -> CircuitSnapshot {
        self.lock().circuit.clone()
    }

    pub fn settings(&self) -> CircuitSettings {
        self.lock().settings
    }

    /// Replaces the settings after a config reload. State and counters stay, so an open circuit
    /// stays open until a probe closes it, even if auto shadow was turned off.
    pub fn update_settings(&self, settings: CircuitSettings) {
        self.lock().settings = settings.normalized();
    }

    /// Recovers the state from a poisoned lock. Every update leaves the state consistent between
    /// statements, and a ticket's `Drop` must not panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(&self, kind: RunKind, epoch: u64, result: RunResult) -> Transition {
        let outcome = self.lock().finish(kind, epoch, result);
        outcome.log();
        outcome.transition
    }

    fn release_dropped_probe(&self) {
        self.lock().release_probe();
        tracing::info!("Probe was dropped before it finished, so the next request probes again");
    }
}

impl State {
    /// Returns the kind of run to admit, or `None` to skip code mode.
    fn admit(&mut self) -> Option<RunKind> {
        if self.settings.shadow_mode || !self.circuit.open {
            return Some(RunKind::Normal);
        }
        // Requests keep counting while a probe is in flight, so after a long probe fails the
        // next request may probe at once.
        self.circuit.probe_counter = self.circuit.probe_counter.saturating_add(1);
        if self.circuit.probe_in_flight || self.circuit.probe_counter < self.settings.probe_every {
            self.circuit.skips_total += 1;
            return None;
        }
        self.circuit.probe_counter = 0;
        self.circuit.probe_in_flight = true;
        self.circuit.probes_total += 1;
        Some(RunKind::Probe)
    }

    fn finish(&mut self, kind: RunKind, epoch: u64, result: RunResult) -> Outcome {
        let alert = match result {
            RunResult::Completed {
                executed_calls,
                timed_out_calls,
            } => is_timeout_alert(executed_calls, timed_out_calls, self.settings.warn_ratio),
            RunResult::NoProgram | RunResult::TimedOut => false,
        };
        if alert {
            self.circuit.alerts_total += 1;
        }
        let transition = match kind {
            RunKind::Normal => self.finish_normal(epoch, result, alert),
            RunKind::Probe => self.finish_probe(result, alert),
        };
        Outcome {
            transition,
            result,
            alert,
            probe: kind == RunKind::Probe,
            streak: self.circuit.streak,
            settings: self.settings,
        }
    }

    fn finish_normal(&mut self, epoch: u64, result: RunResult, alert: bool) -> Transition {
        if self.settings.shadow_mode {
            return Transition::None;
        }
        // A run from an earlier epoch is stale. A current run that finishes while the circuit is
        // open was admitted in shadow mode, and only probes decide for an open circuit.
        if epoch != self.epoch || self.circuit.open {
            return Transition::Ignored;
        }
        match result {
            RunResult::Completed { .. } if alert => self.extend_streak(),
            RunResult::Completed { .. } => {
                self.circuit.streak = 0;
                Transition::None
            }
            // Neither result shows whether tool calls time out, so the streak stays.
            RunResult::NoProgram | RunResult::TimedOut => Transition::None,
        }
    }

    fn extend_streak(&mut self) -> Transition {
        self.circuit.streak = self.circuit.streak.saturating_add(1);
        let enabled = self.settings.auto_shadow_enabled;
        if !enabled || self.circuit.streak < self.settings.streak_to_open {
            return Transition::None;
        }
        self.circuit.opens_total += 1;
        self.move_to(true, TransitionReason::TimeoutStreak);
        Transition::Opened
    }

    fn finish_probe(&mut self, result: RunResult, alert: bool) -> Transition {
        if self.settings.shadow_mode {
            self.circuit.probe_in_flight = false;
            return Transition::None;
        }
        match result {
            RunResult::Completed {
                executed_calls: 0, ..
            }
            | RunResult::NoProgram => {
                self.release_probe();
                Transition::Inconclusive
            }
            RunResult::Completed { .. } if !alert => {
                self.circuit.probe_in_flight = false;
                self.close();
                Transition::Closed
            }
            RunResult::Completed { .. } | RunResult::TimedOut => {
                self.circuit.probe_in_flight = false;
                Transition::KeptOpen
            }
        }
    }

    /// Frees the probe slot and makes the next request a probe, for a probe that proved nothing.
    fn release_probe(&mut self) {
        self.circuit.probe_in_flight = false;
        let due = self.settings.probe_every - 1;
        self.circuit.probe_counter = self.circuit.probe_counter.max(due);
    }

    fn close(&mut self) {
        self.circuit.closes_total += 1;
        self.circuit.streak = 0;
        self.move_to(false, TransitionReason::ProbeSucceeded);
    }

    fn move_to(&mut self, open: bool, reason: TransitionReason) {
        self.epoch += 1;
        self.circuit.open = open;
        self.circuit.probe_counter = 0;
        self.circuit.last_transition = Some(TransitionRecord {
            at_unix_ms: now_unix_ms(),
            reason,
        });
    }
}

fn now_unix_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// Facts about one finished run, logged after the lock is released.
struct Outcome {
    transition: Transition,
    result: RunResult,
    alert: bool,
    probe: bool,
    streak: u32,
    settings: CircuitSettings,
}

impl Outcome {
    fn log(&self) {
        if self.alert {
            self.log_alert();
        }
        match self.transition {
            Transition::Opened => tracing::warn!(
                streak = self.streak,
                streak_to_open = self.settings.streak_to_open,
                probe_every = self.settings.probe_every,
                "Timeout circuit opened, so code mode is skipped except for probes"
            ),
            Transition::Closed => tracing::info!(
                result = ?self.result,
                "Timeout circuit closed because a probe ran without a timeout alert"
            ),
            Transition::KeptOpen => tracing::info!(
                result = ?self.result,
                "Timeout circuit stays open because the probe failed"
            ),
            Transition::Inconclusive => tracing::info!(
                result = ?self.result,
                "Probe executed no tool call, so the next request probes again"
            ),
            Transition::None | Transition::Ignored => {}
        }
    }

    fn log_alert(&self) {
        let RunResult::Completed {
            executed_calls,
            timed_out_calls,
        } = self.result
        else {
            return;
        };
        tracing::warn!(
            executed_calls,
            timed_out_calls,
            timeout_ratio = timeout_ratio(executed_calls, timed_out_calls),
            warn_ratio = self.settings.warn_ratio,
            streak = self.streak,
            probe = self.probe,
            transition = ?self.transition,
            "Code-mode run reached the timeout alert ratio"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(streak_to_open: u32, probe_every: u32) -> CircuitSettings {
        CircuitSettings {
            warn_ratio: 0.5,
            auto_shadow_enabled: true,
            streak_to_open,
            probe_every,
            shadow_mode: false,
        }
    }

    const ALERT: RunResult = RunResult::Completed {
        executed_calls: 2,
        timed_out_calls: 2,
    };
    const CLEAN: RunResult = RunResult::Completed {
        executed_calls: 2,
        timed_out_calls: 0,
    };
    const NO_CALLS: RunResult = RunResult::Completed {
        executed_calls: 0,
        timed_out_calls: 0,
    };

    fn run_ticket(circuit: &Arc<TimeoutCircuit>) -> RunTicket {
        match circuit.admit() {
            Admission::Run(ticket) => ticket,
            other => panic!("expected a normal run, got {other:?}"),
        }
    }

    fn probe_ticket(circuit: &Arc<TimeoutCircuit>) -> RunTicket {
        match circuit.admit() {
            Admission::Probe(ticket) => ticket,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    fn assert_skips(circuit: &Arc<TimeoutCircuit>, requests: u32) {
        for request in 0..requests {
            let admission = circuit.admit();
            assert!(
                matches!(admission, Admission::Skip),
                "request {request} should skip, got {admission:?}"
            );
        }
    }

    /// Returns a circuit that one alert has opened.
    fn open_circuit(probe_every: u32) -> Arc<TimeoutCircuit> {
        let circuit = TimeoutCircuit::new(settings(1, probe_every));
        assert_eq!(run_ticket(&circuit).finish(ALERT), Transition::Opened);
        circuit
    }

    #[test]
    fn alert_needs_timed_out_call_and_ratio() {
        assert!(is_timeout_alert(4, 2, 0.5));
        assert!(!is_timeout_alert(4, 1, 0.5));
        assert!(!is_timeout_alert(4, 0, 0.5));
        assert!(!is_timeout_alert(0, 0, 0.5));
        assert!(!is_timeout_alert(0, 3, 0.5));
    }

    #[test]
    fn warn_ratio_zero_alerts_on_any_timeout() {
        assert!(is_timeout_alert(100, 1, 0.0));
        assert!(!is_timeout_alert(100, 0, 0.0));
    }

    #[test]
    fn warn_ratio_one_needs_all_timed_out() {
        assert!(is_timeout_alert(3, 3, 1.0));
        assert!(!is_timeout_alert(3, 2, 1.0));
    }

    #[test]
    fn opens_after_streak_of_alerts() {
        let circuit = TimeoutCircuit::new(settings(3, 2));
        assert_eq!(run_ticket(&circuit).finish(ALERT), Transition::None);
        assert_eq!(run_ticket(&circuit).finish(ALERT), Transition::None);
        assert_eq!(circuit.snapshot().streak, 2);
        assert!(!circuit.snapshot().open);

        assert_eq!(run_ticket(&circuit).finish(ALERT), Transition::Opened);
        let snapshot = circuit.snapshot();
        assert!(snapshot.open);
        assert_eq!(snapshot.opens_total, 1);
        assert_eq!(snapshot.alerts_total, 3);
        assert_eq!(snapshot.probe_counter, 0);
        let record = snapshot.last_transition.expect("open records a transition");
        assert_eq!(record.reason, TransitionReason::TimeoutStreak);
        assert!(record.at_unix_ms > 0);
    }

    #[test]
    fn clean_run_resets_streak() {
        let circuit = TimeoutCircuit::new(settings(2, 2));
        run_ticket(&circuit).finish(ALERT);
        assert_eq!(run_ticket(&circuit).finish(CLEAN), Transition::None);
        assert_eq!(circuit.snapshot().streak, 0);
        assert_eq!(run_ticket(&circuit).finish(ALERT), Transition::None);
        assert!(!circuit.snapshot().open);
    }

    #[test]
    fn run_without_calls_resets_streak() {
        let circuit = TimeoutCircuit::new(settings(2, 2));
        run_ticket(&circuit).finish(ALERT);
        run_ticket(&circuit).finish(NO_CALLS);
        assert_eq!(circuit.snapshot().streak, 0);
    }

    #[test]
    fn no_program_or_run_timeout_keeps_streak() {
        let circuit = TimeoutCircuit::new(settings(3, 2));
        run_ticket(&circuit).finish(ALERT);
        assert_eq!(
            run_ticket(&circuit).finish(RunResult::NoProgram),
            Transition::None
        );
        assert_eq!(
            run_ticket(&circuit).finish(RunResult::TimedOut),
            Transition::None
        );
        assert_eq!(circuit.snapshot().streak, 1);
    }

    #[test]
    fn disabled_auto_shadow_counts_streak_without_opening() {
        let circuit = TimeoutCircuit::new(CircuitSettings {
            auto_shadow_enabled: false,
            ..settings(1, 1)
        });
        for _ in 0..3 {
            assert_eq!(run_ticket(&circuit).finish(ALERT), Transition::None);
        }
        let snapshot = circuit.snapshot();
        assert!(!snapshot.open);
        assert_eq!(snapshot.streak, 3);
        assert_eq!(snapshot.alerts_total, 3);
    }

    #[test]
    fn open_circuit_probes_every_nth_request() {
        let circuit = open_circuit(3);
        for round in 0..3 {
            assert_skips(&circuit, 2);
            let probe = probe_ticket(&circuit);
            assert!(probe.is_probe(), "round {round}");
            assert_eq!(probe.finish(ALERT), Transition::KeptOpen);
        }
        let snapshot = circuit.snapshot();
        assert_eq!(snapshot.probes_total, 3);
        assert_eq!(snapshot.skips_total, 6);
    }

    #[test]
    fn probe_every_one_probes_each_request() {
        let circuit = open_circuit(1);
        probe_ticket(&circuit).finish(RunResult::TimedOut);
        probe_ticket(&circuit).finish(ALERT);
        assert_eq!(circuit.snapshot().skips_total, 0);
    }

    #[test]
    fn allows_one_probe_in_flight() {
        let circuit = open_circuit(2);
        assert_skips(&circuit, 1);
        let probe = probe_ticket(&circuit);
        assert_skips(&circuit, 5);
        assert!(circuit.snapshot().probe_in_flight);
        assert_eq!(circuit.snapshot().probe_counter, 5);

        // The skipped requests already reached `probe_every`, so the next request probes.
        assert_eq!(probe.finish(ALERT), Transition::KeptOpen);
        assert!(!circuit.snapshot().probe_in_flight);
        probe_ticket(&circuit);
    }

    #[test]
    fn successful_probe_closes_circuit() {
        let circuit = open_circuit(1);
        let probe = probe_ticket(&circuit);
        assert_eq!(probe.finish(CLEAN), Transition::Closed);
        let snapshot = circuit.snapshot();
        assert!(!snapshot.open);
        assert!(!snapshot.probe_in_flight);
        assert_eq!(snapshot.streak, 0);
        assert_eq!(snapshot.probe_counter, 0);
        assert_eq!(snapshot.closes_total, 1);
        let record = snapshot
            .last_transition
            .expect("close records a transition");
        assert_eq!(record.reason, TransitionReason::ProbeSucceeded);
        run_ticket(&circuit);
    }

    #[test]
    fn probe_below_warn_ratio_closes_circuit() {
        let circuit = open_circuit(1);
        let below_ratio = RunResult::Completed {
            executed_calls: 4,
            timed_out_calls: 1,
        };
        assert_eq!(
            probe_ticket(&circuit).finish(below_ratio),
            Transition::Closed
        );
    }

    #[test]
    fn probe_with_alert_keeps_circuit_open() {
        let circuit = open_circuit(1);
        assert_eq!(probe_ticket(&circuit).finish(ALERT), Transition::KeptOpen);
        let snapshot = circuit.snapshot();
        assert!(snapshot.open);
        assert_eq!(snapshot.closes_total, 0);
        assert_eq!(snapshot.alerts_total, 2);
    }

    #[test]
    fn timed_out_probe_keeps_circuit_open() {
        let circuit = open_circuit(1);
        let transition = probe_ticket(&circuit).finish(RunResult::TimedOut);
        assert_eq!(transition, Transition::KeptOpen);
        assert!(circuit.snapshot().open);
    }

    #[test]
    fn probe_without_program_retries_next_request() {
        let circuit = open_circuit(4);
        assert_skips(&circuit, 3);
        let transition = probe_ticket(&circuit).finish(RunResult::NoProgram);
        assert_eq!(transition, Transition::Inconclusive);
        assert!(circuit.snapshot().open);
        probe_ticket(&circuit);
    }

    #[test]
    fn probe_without_calls_retries_next_request() {
        let circuit = open_circuit(4);
        assert_skips(&circuit, 3);
        assert_eq!(
            probe_ticket(&circuit).finish(NO_CALLS),
            Transition::Inconclusive
        );
        let next = probe_ticket(&circuit);
        assert_eq!(next.finish(CLEAN), Transition::Closed);
    }

    #[test]
    fn stale_run_cannot_move_streak_after_open() {
        let circuit = TimeoutCircuit::new(settings(2, 1));
        run_ticket(&circuit).finish(ALERT);
        let stale = run_ticket(&circuit);
        assert_eq!(run_ticket(&circuit).finish(ALERT), Transition::Opened);

        assert_eq!(stale.finish(CLEAN), Transition::Ignored);
        let snapshot = circuit.snapshot();
        assert!(snapshot.open);
        assert_eq!(snapshot.streak, 2);
    }

    #[test]
    fn stale_run_cannot_move_streak_after_close() {
        let circuit = TimeoutCircuit::new(settings(1, 1));
        let stale = run_ticket(&circuit);
        run_ticket(&circuit).finish(ALERT);
        probe_ticket(&circuit).finish(CLEAN);

        assert_eq!(stale.finish(ALERT), Transition::Ignored);
        let snapshot = circuit.snapshot();
        assert!(!snapshot.open);
        assert_eq!(snapshot.streak, 0);
        assert_eq!(snapshot.opens_total, 1);
        assert_eq!(snapshot.alerts_total, 2);
    }

    #[test]
    fn shadow_mode_never_opens() {
        let circuit = TimeoutCircuit::new(CircuitSettings {
            shadow_mode: true,
            ..settings(1, 1)
        });
        for _ in 0..5 {
            assert_eq!(run_ticket(&circuit).finish(ALERT), Transition::None);
        }
        let snapshot = circuit.snapshot();
        assert!(!snapshot.open);
        assert_eq!(snapshot.streak, 0);
        assert_eq!(snapshot.alerts_total, 5);
    }

    #[test]
    fn shadow_mode_runs_everything_while_open() {
        let circuit = open_circuit(1);
        circuit.update_settings(CircuitSettings {
            shadow_mode: true,
            ..settings(1, 1)
        });
        assert_eq!(run_ticket(&circuit).finish(CLEAN), Transition::None);
        let snapshot = circuit.snapshot();
        assert!(snapshot.open);
        assert_eq!(snapshot.skips_total, 0);
        assert_eq!(snapshot.probes_total, 0);
    }

    #[test]
    fn late_shadow_run_is_ignored() {
        let circuit = open_circuit(1);
        let shadow_settings = CircuitSettings {
            shadow_mode: true,
            ..settings(1, 1)
        };
        circuit.update_settings(shadow_settings);
        let shadow_run = run_ticket(&circuit);
        circuit.update_settings(settings(1, 1));
        assert_eq!(shadow_run.finish(CLEAN), Transition::Ignored);
        assert!(circuit.snapshot().open);
    }

    #[test]
    fn dropped_probe_frees_probe_slot() {
        let circuit = open_circuit(3);
        assert_skips(&circuit, 2);
        drop(probe_ticket(&circuit));
        let snapshot = circuit.snapshot();
        assert!(!snapshot.probe_in_flight);
        assert!(snapshot.open);
        probe_ticket(&circuit);
    }

    #[test]
    fn dropped_normal_run_changes_nothing() {
        let circuit = TimeoutCircuit::new(settings(2, 1));
        run_ticket(&circuit).finish(ALERT);
        let before = circuit.snapshot();
        drop(run_ticket(&circuit));
        assert_eq!(circuit.snapshot(), before);
    }

    #[test]
    fn finished_probe_does_not_release_again_on_drop() {
        let circuit = open_circuit(2);
        assert_skips(&circuit, 1);
        probe_ticket(&circuit).finish(ALERT);
        assert_eq!(circuit.snapshot().probe_counter, 0);
    }

    #[test]
    fn update_settings_keeps_state_and_counters() {
        let circuit = open_circuit(5);
        assert_skips(&circuit, 2);
        let before = circuit.snapshot();
        let reloaded = CircuitSettings {
            warn_ratio: 0.9,
            auto_shadow_enabled: false,
            ..settings(4, 3)
        };
        circuit.update_settings(reloaded);
        assert_eq!(circuit.snapshot(), before);
        assert_eq!(circuit.settings(), reloaded);

        // The two skips still count toward the new `probe_every` of 3.
        probe_ticket(&circuit);
    }

    #[test]
    fn zero_counts_in_settings_act_as_one() {
        let circuit = TimeoutCircuit::new(settings(0, 0));
        assert_eq!(circuit.settings().streak_to_open, 1);
        assert_eq!(circuit.settings().probe_every, 1);
        assert_eq!(run_ticket(&circuit).finish(CLEAN), Transition::None);
        assert!(!circuit.snapshot().open);
    }

    #[test]
    fn snapshot_serializes_reason_in_snake_case() {
        let circuit = open_circuit(1);
        let json = serde_json::to_value(circuit.snapshot()).expect("snapshot serializes");
        assert_eq!(json["open"], true);
        assert_eq!(json["last_transition"]["reason"], "timeout_streak");
        probe_ticket(&circuit).finish(CLEAN);
        let json = serde_json::to_value(circuit.snapshot()).expect("snapshot serializes");
        assert_eq!(json["last_transition"]["reason"], "probe_succeeded");
    }

    mod properties {
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

        use proptest::prelude::*;
        use proptest::sample::Index;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Admit,
            Finish(Index, RunResult),
            Drop(Index),
            Reload(CircuitSettings),
        }

        fn run_result() -> impl Strategy<Value = RunResult> {
            prop_oneof![
                6 => (0u32..4, 0u32..4).prop_map(|(executed_calls, timed_out_calls)| {
                    RunResult::Completed { executed_calls, timed_out_calls }
                }),
                1 => Just(RunResult::NoProgram),
                1 => Just(RunResult::TimedOut),
            ]
        }

        fn circuit_settings() -> impl Strategy<Value = CircuitSettings> {
            let warn_ratio = prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64];
            (
                warn_ratio,
                prop::bool::weighted(0.8),
                1u32..4,
                1u32..4,
                prop::bool::weighted(0.15),
            )
                .prop_map(
                    |(
                        warn_ratio,
                        auto_shadow_enabled,
                        streak_to_open,
                        probe_every,
                        shadow_mode,
                    )| {
                        CircuitSettings {
                            warn_ratio,
                            auto_shadow_enabled,
                            streak_to_open,
                            probe_every,
                            shadow_mode,
                        }
                    },
                )
        }

        fn operation(with_reload: bool) -> impl Strategy<Value = Op> {
            let reload_weight = if with_reload { 1 } else { 0 };
            prop_oneof![
                5 => Just(Op::Admit),
                4 => (any::<Index>(), run_result()).prop_map(|(at, result)| Op::Finish(at, result)),
                1 => any::<Index>().prop_map(Op::Drop),
                reload_weight => circuit_settings().prop_map(Op::Reload),
            ]
        }

        /// Reference model: the rules written out plainly, without locks or tickets.
        #[derive(Debug)]
        struct Model {
            settings: CircuitSettings,
            open: bool,
            streak: u32,
            probe_counter: u32,
            probe_in_flight: bool,
            generation: u64,
            opens_total: u64,
            closes_total: u64,
            probes_total: u64,
            skips_total: u64,
            alerts_total: u64,
            last_reason: Option<TransitionReason>,
        }

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Admitted {
            Run,
            Probe,
            Skip,
        }

        #[derive(Debug, Clone, Copy)]
        struct ModelTicket {
            probe: bool,
            generation: u64,
        }

        impl Model {
            fn new(settings: CircuitSettings) -> Self {
                Self {
                    settings,
                    open: false,
                    streak: 0,
                    probe_counter: 0,
                    probe_in_flight: false,
                    generation: 0,
                    opens_total: 0,
                    closes_total: 0,
                    probes_total: 0,
                    skips_total: 0,
                    alerts_total: 0,
                    last_reason: None,
                }
            }

            fn admit(&mut self) -> Admitted {
                if !self.open || self.settings.shadow_mode {
                    return Admitted::Run;
                }
                self.probe_counter += 1;
                let due = self.probe_counter >= self.settings.probe_every;
                if due && !self.probe_in_flight {
                    self.probe_counter = 0;
                    self.probe_in_flight = true;
                    self.probes_total += 1;
                    Admitted::Probe
                } else {
                    self.skips_total += 1;
                    Admitted::Skip
                }
            }

            fn finish(&mut self, ticket: ModelTicket, result: RunResult) -> Transition {
                let (executed, timed_out) = match result {
                    RunResult::Completed {
                        executed_calls,
                        timed_out_calls,
                    } => (Some(executed_calls), timed_out_calls),
                    RunResult::NoProgram | RunResult::TimedOut => (None, 0),
                };
                let alert = executed.is_some_and(|calls| {
                    is_timeout_alert(calls, timed_out, self.settings.warn_ratio)
                });
                if alert {
                    self.alerts_total += 1;
                }
                if ticket.probe {
                    self.probe_in_flight = false;
                }
                if self.settings.shadow_mode {
                    return Transition::None;
                }
                if !ticket.probe {
                    if self.open || ticket.generation != self.generation {
                        return Transition::Ignored;
                    }
                    if executed.is_none() {
                        return Transition::None;
                    }
                    if !alert {
                        self.streak = 0;
                        return Transition::None;
                    }
                    self.streak += 1;
                    if self.settings.auto_shadow_enabled
                        && self.streak >= self.settings.streak_to_open
                    {
                        self.open = true;
                        self.probe_counter = 0;
                        self.generation += 1;
                        self.opens_total += 1;
                        self.last_reason = Some(TransitionReason::TimeoutStreak);
                        return Transition::Opened;
                    }
                    return Transition::None;
                }
                match (result, alert) {
                    (RunResult::TimedOut, _) | (_, true) => Transition::KeptOpen,
                    (RunResult::NoProgram, _) => self.probe_next_request(),
                    (
                        RunResult::Completed {
                            executed_calls: 0, ..
                        },
                        _,
                    ) => self.probe_next_request(),
                    (RunResult::Completed { .. }, false) => {
                        self.open = false;
                        self.streak = 0;
                        self.probe_counter = 0;
                        self.generation += 1;
                        self.closes_total += 1;
                        self.last_reason = Some(TransitionReason::ProbeSucceeded);
                        Transition::Closed
                    }
                }
            }

            fn drop_ticket(&mut self, ticket: ModelTicket) {
                if ticket.probe {
                    self.probe_in_flight = false;
                    self.probe_next_request();
                }
            }

            fn probe_next_request(&mut self) -> Transition {
                if self.probe_counter < self.settings.probe_every - 1 {
                    self.probe_counter = self.settings.probe_every - 1;
                }
                Transition::Inconclusive
            }

            fn assert_matches(&self, snapshot: &CircuitSnapshot) {
                assert_eq!(snapshot.open, self.open, "open");
                assert_eq!(snapshot.streak, self.streak, "streak");
                assert_eq!(snapshot.probe_counter, self.probe_counter, "probe_counter");
                assert_eq!(
                    snapshot.probe_in_flight, self.probe_in_flight,
                    "probe_in_flight"
                );
                assert_eq!(snapshot.opens_total, self.opens_total, "opens_total");
                assert_eq!(snapshot.closes_total, self.closes_total, "closes_total");
                assert_eq!(snapshot.probes_total, self.probes_total, "probes_total");
                assert_eq!(snapshot.skips_total, self.skips_total, "skips_total");
                assert_eq!(snapshot.alerts_total, self.alerts_total, "alerts_total");
                let reason = snapshot.last_transition.map(|record| record.reason);
                assert_eq!(reason, self.last_reason, "last transition reason");
            }
        }

        /// Admits a request on the real circuit, returning what was admitted and its ticket.
        fn admit_real(circuit: &Arc<TimeoutCircuit>) -> (Admitted, Option<RunTicket>) {
            match circuit.admit() {
                Admission::Run(ticket) => (Admitted::Run, Some(ticket)),
                Admission::Probe(ticket) => (Admitted::Probe, Some(ticket)),
                Admission::Skip => (Admitted::Skip, None),
            }
        }

        /// Invariants that hold after every operation on a circuit with fixed settings.
        fn assert_invariants(
            settings: &CircuitSettings,
            snapshot: &CircuitSnapshot,
            outstanding_probes: usize,
        ) {
            let open = u64::from(snapshot.open);
            assert_eq!(
                snapshot.opens_total - snapshot.closes_total,
                open,
                "opens minus closes"
            );
            assert!(
                outstanding_probes <= 1,
                "{outstanding_probes} probes in flight"
            );
            assert_eq!(
                snapshot.probe_in_flight,
                outstanding_probes == 1,
                "probe_in_flight"
            );
            if settings.shadow_mode {
                assert_eq!(snapshot.opens_total, 0, "shadow mode opened the circuit");
            }
            if !snapshot.open && settings.auto_shadow_enabled {
                assert!(
                    snapshot.streak < settings.streak_to_open,
                    "closed with a full streak"
                );
            }
        }

        proptest! {
            #[test]
            fn random_operations_keep_invariants(
                settings in circuit_settings(),
                ops in prop::collection::vec(operation(false), 1..80),
            ) {
                let circuit = TimeoutCircuit::new(settings);
                let mut tickets: Vec<RunTicket> = Vec::new();
                let mut admitted_probes = 0u64;
                let mut skips = 0u64;
                for op in ops {
                    let before = circuit.snapshot();
                    let mut transition = Transition::None;
                    let mut finished_probe = false;
                    match op {
                        Op::Admit => {
                            let (admitted, ticket) = admit_real(&circuit);
                            if admitted == Admitted::Skip {
                                prop_assert!(before.open, "skipped while closed");
                                skips += 1;
                            }
                            if admitted == Admitted::Probe {
                                admitted_probes += 1;
                            }
                            tickets.extend(ticket);
                        }
                        Op::Finish(at, result) if !tickets.is_empty() => {
                            let ticket = tickets.swap_remove(at.index(tickets.len()));
                            finished_probe = ticket.is_probe();
                            transition = ticket.finish(result);
                        }
                        Op::Drop(at) if !tickets.is_empty() => {
                            drop(tickets.swap_remove(at.index(tickets.len())));
                        }
                        Op::Finish(..) | Op::Drop(_) | Op::Reload(_) => {}
                    }
                    let after = circuit.snapshot();
                    let outstanding = tickets.iter().filter(|ticket| ticket.is_probe()).count();
                    assert_invariants(&settings, &after, outstanding);
                    if after.closes_total > before.closes_total {
                        prop_assert!(finished_probe, "closed by a normal run");
                        prop_assert_eq!(transition, Transition::Closed);
                    }
                    if matches!(transition, Transition::Opened | Transition::Closed) {
                        prop_assert_eq!(after.probe_counter, 0);
                    }
                    prop_assert_eq!(after.probes_total, admitted_probes);
                    prop_assert_eq!(after.skips_total, skips);
                }
            }

            #[test]
            fn circuit_follows_reference_model(
                settings in circuit_settings(),
                ops in prop::collection::vec(operation(true), 1..80),
            ) {
                let circuit = TimeoutCircuit::new(settings);
                let mut model = Model::new(settings);
                let mut tickets: Vec<(RunTicket, ModelTicket)> = Vec::new();
                for (step, op) in ops.into_iter().enumerate() {
                    match op {
                        Op::Admit => {
                            let generation = model.generation;
                            let expected = model.admit();
                            let (admitted, ticket) = admit_real(&circuit);
                            prop_assert_eq!(admitted, expected, "step {}", step);
                            if let Some(ticket) = ticket {
                                let probe = expected == Admitted::Probe;
                                tickets.push((ticket, ModelTicket { probe, generation }));
                            }
                        }
                        Op::Finish(at, result) if !tickets.is_empty() => {
                            let (ticket, model_ticket) = tickets.remove(at.index(tickets.len()));
                            let expected = model.finish(model_ticket, result);
                            prop_assert_eq!(ticket.finish(result), expected, "step {}", step);
                        }
                        Op::Drop(at) if !tickets.is_empty() => {
                            let (ticket, model_ticket) = tickets.remove(at.index(tickets.len()));
                            model.drop_ticket(model_ticket);
                            drop(ticket);
                        }
                        Op::Reload(settings) => {
                            model.settings = settings;
                            circuit.update_settings(settings);
                        }
                        Op::Finish(..) | Op::Drop(_) => {}
                    }
                    model.assert_matches(&circuit.snapshot());
                }
            }
        }

        /// Small xorshift generator, so each thread draws its own reproducible results.
        fn next_random(seed: &mut u64) -> u64 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        }

        fn random_result(seed: &mut u64) -> RunResult {
            match next_random(seed) % 8 {
                0 => RunResult::NoProgram,
                1 => RunResult::TimedOut,
                2..=4 => RunResult::Completed {
                    executed_calls: 2,
                    timed_out_calls: 2,
                },
                _ => RunResult::Completed {
                    executed_calls: 2,
                    timed_out_calls: 0,
                },
            }
        }

        #[derive(Default)]
        struct Tally {
            probes_in_flight: AtomicU32,
            max_probes_in_flight: AtomicU32,
            probes: AtomicU64,
            skips: AtomicU64,
        }

        fn hammer(circuit: &Arc<TimeoutCircuit>, tally: &Tally, mut seed: u64) {
            for _ in 0..2_000 {
                let ticket = match circuit.admit() {
                    Admission::Skip => {
                        tally.skips.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    Admission::Run(ticket) => ticket,
                    Admission::Probe(ticket) => {
                        tally.probes.fetch_add(1, Ordering::SeqCst);
                        let in_flight = tally.probes_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        tally
                            .max_probes_in_flight
                            .fetch_max(in_flight, Ordering::SeqCst);
                        ticket
                    }
                };
                std::thread::yield_now();
                // The tally counts the probe as ended before the circuit frees its slot, so a
                // probe that another thread admits right after cannot overlap it in the tally.
                if ticket.is_probe() {
                    tally.probes_in_flight.fetch_sub(1, Ordering::SeqCst);
                }
                if next_random(&mut seed).is_multiple_of(10) {
                    drop(ticket);
                } else {
                    ticket.finish(random_result(&mut seed));
                }
            }
        }

        #[test]
        fn concurrent_requests_keep_one_probe_in_flight() {
            let circuit = TimeoutCircuit::new(CircuitSettings {
                warn_ratio: 0.5,
                auto_shadow_enabled: true,
                streak_to_open: 2,
                probe_every: 3,
                shadow_mode: false,
            });
            let tally = Tally::default();
            std::thread::scope(|scope| {
                for thread in 0..8u64 {
                    let (circuit, tally) = (&circuit, &tally);
                    scope.spawn(move || hammer(circuit, tally, 0x9E37_79B9 + thread));
                }
            });
            let snapshot = circuit.snapshot();
            assert_eq!(tally.max_probes_in_flight.load(Ordering::SeqCst), 1);
            assert!(!snapshot.probe_in_flight);
            let open = u64::from(snapshot.open);
            assert_eq!(snapshot.opens_total - snapshot.closes_total, open);
            assert!(snapshot.opens_total > 0, "the circuit never opened");
            assert_eq!(snapshot.probes_total, tally.probes.load(Ordering::SeqCst));
            assert_eq!(snapshot.skips_total, tally.skips.load(Ordering::SeqCst));
        }
    }
}
