//! The JSON document of `GET /v1/code-mode/diag`: build, uptime, code mode's settings, circuit,
//! counters and recent audit records, and the MCP server states.
//!
//! Every field is documented in `docs/observability.md`; a renamed field breaks operators' scripts
//! just as a renamed metric breaks their dashboards.

use std::time::SystemTime;

use serde::Serialize;

use super::metrics::{ScrapeSources, build_profile};
use crate::code_mode::CodeModeSnapshot;
use crate::mcp::ServerStatus;

/// The diag document.
#[derive(Debug, Clone, Serialize)]
pub struct DiagSnapshot {
    pub build: BuildInfo,
    pub started_at_unix_ms: i64,
    pub uptime_seconds: f64,
    pub code_mode: CodeModeSnapshot,
    pub mcp_servers: Vec<ServerStatus>,
}

/// Build information, with the same values as the labels of `xiaomaolv_build_info`.
#[derive(Debug, Clone, Serialize)]
pub struct BuildInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub profile: &'static str,
}

/// Takes the snapshot now.
pub fn snapshot(sources: &ScrapeSources) -> DiagSnapshot {
    let now = SystemTime::now();
    let uptime = now.duration_since(sources.started_at).unwrap_or_default();
    DiagSnapshot {
        build: BuildInfo {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            profile: build_profile(),
        },
        started_at_unix_ms: unix_millis(sources.started_at),
        uptime_seconds: uptime.as_secs_f64(),
        code_mode: sources.code_mode.snapshot(),
        mcp_servers: sources.hub.statuses(),
    }
}

fn unix_millis(at: SystemTime) -> i64 {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}
