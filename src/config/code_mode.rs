//! Validation of `[agent.code_mode]`: defaults, ranges, and limits that must agree.
//!
//! Kept apart from the other tables because code mode has many related budgets; a value that
//! contradicts another (a call timeout longer than the whole run) is an error naming the key.

use serde::Serialize;

use super::ConfigError;
use super::raw::{ExecutionMode, ProgramDelivery, RawCodeMode};

/// The validated code-mode settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CodeModeConfig {
    pub enabled: bool,
    pub shadow_mode: bool,
    pub max_calls: u32,
    pub max_parallel: u32,
    pub max_runtime_ms: u64,
    pub max_call_timeout_ms: u64,
    pub max_result_chars: usize,
    pub memory_limit_mb: u32,
    pub timeout_warn_ratio: f64,
    pub timeout_auto_shadow_enabled: bool,
    pub timeout_auto_shadow_streak: u32,
    pub timeout_auto_shadow_probe_every: u32,
    pub execution_mode: ExecutionMode,
    pub program_delivery: ProgramDelivery,
    pub max_repair_attempts: u32,
    pub allow_network: bool,
    pub allow_filesystem: bool,
    pub allow_env: bool,
}

impl Default for CodeModeConfig {
    fn default() -> Self {
        validate(RawCodeMode::default(), u64::MAX).expect("the defaults are valid")
    }
}

/// Smallest result budget that leaves room for the truncation marker and some text.
const MIN_RESULT_CHARS: usize = 200;
/// Largest engine memory limit accepted, in MiB.
const MAX_MEMORY_LIMIT_MB: u32 = 4096;
/// Repairs beyond this only burn model requests on a program that keeps failing.
const MAX_REPAIR_ATTEMPTS: u32 = 5;

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("agent.code_mode.{field}"),
        message: message.into(),
    }
}

fn at_least<T: PartialOrd + std::fmt::Display>(
    field: &str,
    value: T,
    min: T,
) -> Result<T, ConfigError> {
    if value < min {
        return Err(invalid(
            field,
            format!("{value} is below the minimum of {min}"),
        ));
    }
    Ok(value)
}

/// Validates the table; `turn_timeout_ms` bounds the run time, since a run happens inside a turn.
pub(super) fn validate(
    raw: RawCodeMode,
    turn_timeout_ms: u64,
) -> Result<CodeModeConfig, ConfigError> {
    let max_calls = at_least("max_calls", raw.max_calls.unwrap_or(6), 1)?;
    let max_parallel = at_least("max_parallel", raw.max_parallel.unwrap_or(2), 1)?;
    if max_parallel > max_calls {
        return Err(invalid(
            "max_parallel",
            format!("{max_parallel} is above max_calls ({max_calls}); lower it or raise max_calls"),
        ));
    }
    let max_runtime_ms = at_least("max_runtime_ms", raw.max_runtime_ms.unwrap_or(2_500), 1)?;
    if max_runtime_ms > turn_timeout_ms {
        return Err(invalid(
            "max_runtime_ms",
            format!("{max_runtime_ms} is above agent.turn_timeout_ms ({turn_timeout_ms})"),
        ));
    }
    let max_call_timeout_ms = at_least(
        "max_call_timeout_ms",
        raw.max_call_timeout_ms.unwrap_or(1_200),
        1,
    )?;
    if max_call_timeout_ms > max_runtime_ms {
        return Err(invalid(
            "max_call_timeout_ms",
            format!(
                "{max_call_timeout_ms} is above max_runtime_ms ({max_runtime_ms}); a call cannot outlast its run"
            ),
        ));
    }
    let memory_limit_mb = at_least("memory_limit_mb", raw.memory_limit_mb.unwrap_or(32), 1)?;
    if memory_limit_mb > MAX_MEMORY_LIMIT_MB {
        return Err(invalid(
            "memory_limit_mb",
            format!("{memory_limit_mb} is above the maximum of {MAX_MEMORY_LIMIT_MB}"),
        ));
    }
    let max_repair_attempts = raw.max_repair_attempts.unwrap_or(1);
    if max_repair_attempts > MAX_REPAIR_ATTEMPTS {
        return Err(invalid(
            "max_repair_attempts",
            format!("{max_repair_attempts} is above the maximum of {MAX_REPAIR_ATTEMPTS}"),
        ));
    }
    Ok(CodeModeConfig {
        enabled: raw.enabled.unwrap_or(false),
        shadow_mode: raw.shadow_mode.unwrap_or(false),
        max_calls,
        max_parallel,
        max_runtime_ms,
        max_call_timeout_ms,
        max_result_chars: at_least(
            "max_result_chars",
            raw.max_result_chars.unwrap_or(12_000),
            MIN_RESULT_CHARS,
        )?,
        memory_limit_mb,
        timeout_warn_ratio: warn_ratio(raw.timeout_warn_ratio.unwrap_or(0.4))?,
        timeout_auto_shadow_enabled: raw.timeout_auto_shadow_enabled.unwrap_or(true),
        timeout_auto_shadow_streak: at_least(
            "timeout_auto_shadow_streak",
            raw.timeout_auto_shadow_streak.unwrap_or(3),
            1,
        )?,
        timeout_auto_shadow_probe_every: at_least(
            "timeout_auto_shadow_probe_every",
            raw.timeout_auto_shadow_probe_every.unwrap_or(5),
            1,
        )?,
        execution_mode: raw.execution_mode.unwrap_or_default(),
        program_delivery: raw.program_delivery.unwrap_or_default(),
        max_repair_attempts,
        allow_network: raw.allow_network.unwrap_or(false),
        allow_filesystem: raw.allow_filesystem.unwrap_or(false),
        allow_env: raw.allow_env.unwrap_or(false),
    })
}

/// NaN has no sensible clamp and is rejected; other values are clamped into 0..=1 with a warning,
/// as `check-config` shows the effective value.
fn warn_ratio(value: f64) -> Result<f64, ConfigError> {
    if value.is_nan() {
        return Err(invalid(
            "timeout_warn_ratio",
            "NaN is not a ratio; use a number from 0 to 1, e.g. 0.4",
        ));
    }
    let clamped = value.clamp(0.0, 1.0);
    if clamped != value {
        tracing::warn!(
            key = "agent.code_mode.timeout_warn_ratio",
            configured = value,
            effective = clamped,
            "Timeout warn ratio is outside 0..1 and was clamped"
        );
    }
    Ok(clamped)
}

impl CodeModeConfig {
    pub fn max_runtime(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.max_runtime_ms)
    }

    pub fn max_call_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.max_call_timeout_ms)
    }
}
