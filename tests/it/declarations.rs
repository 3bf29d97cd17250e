//! Code-mode declarations of a real server's tools, compared with a reviewed snapshot.

use std::path::PathBuf;

use serde_json::Value;
use xiaomaolv::code_mode::declarations::{ToolSource, declare};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/fixtures")
        .join(name)
}

/// Compares with the stored snapshot; `UPDATE_SNAPSHOTS=1` rewrites it instead.
#[test]
fn everything_server_declarations_match_snapshot() {
    let raw = std::fs::read_to_string(fixture("everything_tools.json")).unwrap();
    let mut tools: Vec<Value> = serde_json::from_str(&raw).unwrap();
    tools.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let sources: Vec<ToolSource<'_>> = tools
        .iter()
        .map(|tool| ToolSource {
            server: "everything",
            tool: tool["name"].as_str().unwrap(),
            description: tool["description"].as_str(),
            input_schema: &tool["inputSchema"],
            output_schema: tool.get("outputSchema"),
        })
        .collect();
    let text = declare(&sources).text;
    let snapshot = fixture("everything_declarations.ts");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot, &text).unwrap();
    }
    assert_eq!(text, std::fs::read_to_string(&snapshot).unwrap());
}
