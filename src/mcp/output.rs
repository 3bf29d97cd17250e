//! Tool results as the model sees them: text, an error flag, and a size cut with a marker.

use rmcp::model::{CallToolResult, ContentBlock};
use serde::Serialize;

/// The outcome of one `tools/call`, reduced to what the model and the audit need.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolOutput {
    /// `isError: true` from the server: the tool ran and reported a failure.
    pub is_error: bool,
    /// `structuredContent` as JSON text when present, else the text content blocks joined.
    pub text: String,
    /// `structuredContent` when present, so code mode can hand programs a value, not text.
    #[serde(skip)]
    pub structured: Option<serde_json::Value>,
}

impl From<CallToolResult> for ToolOutput {
    fn from(result: CallToolResult) -> Self {
        let structured = result.structured_content.filter(|value| !value.is_null());
        let text = match &structured {
            Some(value) => value.to_string(),
            None => content_text(&result.content),
        };
        Self {
            is_error: result.is_error.unwrap_or(false),
            text,
            structured,
        }
    }
}

fn content_text(blocks: &[ContentBlock]) -> String {
    let mut parts = Vec::with_capacity(blocks.len());
    for block in blocks {
        match serde_json::to_value(block) {
            Ok(value) => parts.push(block_text(&value)),
            Err(err) => parts.push(format!("[unreadable content block: {err}]")),
        }
    }
    parts.join("\n")
}

/// Text of one content block; non-text blocks are named rather than inlined.
fn block_text(block: &serde_json::Value) -> String {
    let kind = block
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or("unknown");
    match kind {
        "text" => block
            .get("text")
            .and_then(|t| t.as_str())
            .unwrap_or_default()
            .to_owned(),
        "resource" => {
            let resource = &block["resource"];
            match resource.get("text").and_then(|t| t.as_str()) {
                Some(text) => text.to_owned(),
                None => format!("[resource {}]", resource["uri"].as_str().unwrap_or("")),
            }
        }
        "resource_link" => format!("[resource link {}]", block["uri"].as_str().unwrap_or("")),
        other => {
            let mime = block
                .get("mimeType")
                .and_then(|m| m.as_str())
                .unwrap_or("unknown type");
            format!("[{other} content, {mime}]")
        }
    }
}

/// A string cut to a number of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncated {
    pub text: String,
    pub truncated: bool,
    /// Characters in the text before the cut.
    pub original_chars: usize,
}

/// Cuts `text` to at most `max_chars` characters, marker included, on a character boundary.
///
/// The marker states the original size, so the model can tell that the result is incomplete.
pub fn truncate_chars(text: &str, max_chars: usize) -> Truncated {
    let original_chars = text.chars().count();
    if original_chars <= max_chars {
        return Truncated {
            text: text.to_owned(),
            truncated: false,
            original_chars,
        };
    }
    let marker = format!(
        "\n[truncated: showing {{kept}} of {original_chars} characters ({} bytes)]",
        text.len()
    );
    let marker_chars = marker.chars().count() + 8;
    let kept = max_chars.saturating_sub(marker_chars);
    let cut = text
        .char_indices()
        .nth(kept)
        .map_or(text.len(), |(index, _)| index);
    let mut out = String::with_capacity(cut + marker.len());
    out.push_str(&text[..cut]);
    out.push_str(&marker.replace("{kept}", &kept.to_string()));
    Truncated {
        text: out,
        truncated: true,
        original_chars,
    }
}
