//! Reads the gateway's own Server-Sent Events response into `(event name, JSON data)` pairs.

use futures_util::StreamExt;
use serde_json::Value;

/// Reads the whole body and splits it into events. A read error ends the body where it broke,
/// so a cut stream shows up as missing events rather than a panic.
pub async fn read_events(response: reqwest::Response) -> Vec<(String, Value)> {
    let mut bytes = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(piece) = body.next().await {
        let Ok(piece) = piece else { break };
        bytes.extend_from_slice(&piece);
    }
    parse_events(&String::from_utf8(bytes).expect("the gateway sends UTF-8"))
}

/// Splits an event stream's text into `(event name, JSON data)` pairs, ignoring comments.
pub fn parse_events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| block.contains("data:"))
        .map(|block| {
            let event = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("message")
                .to_owned();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap();
            (event, serde_json::from_str(data).unwrap())
        })
        .collect()
}

/// Joins the text of the `delta` events.
pub fn streamed_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(name, _)| name == "delta")
        .map(|(_, data)| data["text"].as_str().unwrap())
        .collect()
}
