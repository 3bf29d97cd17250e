//! OpenAI chat-completions wire types, lenient where real servers differ.
//!
//! Requests are strict: exactly what the OpenAI API documents. Responses accept the variations seen
//! in practice: tool-call arguments as a JSON string, as an object, or as a string that encodes a
//! string; `finish_reason` null, empty or missing; `usage` missing.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: Some(content.into()),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A tool offered to the model, in the `tools` array of a request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolSpec {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionSpec {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub parameters: Value,
}

/// The body of `POST /chat/completions`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    pub stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamOptions {
    pub include_usage: bool,
}

/// A tool call requested by the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub arguments: ToolArguments,
}

/// Tool-call arguments, normalized from whatever shape the server sent.
///
/// Sent back to a provider, both variants become one JSON string, as the OpenAI API expects.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolArguments {
    /// Arguments that parsed as JSON (an empty string counts as `{}`).
    Json(Value),
    /// Text that is not JSON, kept verbatim so the error sent to the model can quote it.
    Invalid(String),
}

impl Default for ToolArguments {
    fn default() -> Self {
        Self::Json(Value::Object(Default::default()))
    }
}

impl ToolArguments {
    /// Normalizes arguments given as text: JSON, or a JSON string whose content is JSON.
    pub fn from_text(text: &str) -> Self {
        if text.trim().is_empty() {
            return Self::default();
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::String(inner)) => match serde_json::from_str::<Value>(&inner) {
                Ok(value) if !value.is_string() => Self::Json(value),
                _ => Self::Json(Value::String(inner)),
            },
            Ok(value) => Self::Json(value),
            Err(_) => Self::Invalid(text.to_owned()),
        }
    }

    /// Normalizes arguments given as any JSON value.
    pub fn from_value(value: Value) -> Self {
        match value {
            Value::String(text) => Self::from_text(&text),
            Value::Null => Self::default(),
            other => Self::Json(other),
        }
    }

    /// The arguments as the single JSON string the OpenAI API carries.
    pub fn to_wire_string(&self) -> String {
        match self {
            Self::Json(value) => value.to_string(),
            Self::Invalid(text) => text.clone(),
        }
    }
}

impl Serialize for ToolArguments {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_wire_string())
    }
}

impl<'de> Deserialize<'de> for ToolArguments {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Self::from_value)
    }
}

/// Token counts reported by the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default, deserialize_with = "null_as_zero")]
    pub prompt_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub completion_tokens: u64,
    #[serde(default, deserialize_with = "null_as_zero")]
    pub total_tokens: u64,
}

fn null_as_zero<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(deserializer)?.unwrap_or_default())
}

/// Reads `content` given as a string, as null, or as an array of `{"type": "text"}` parts.
fn content_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(Value::Array(parts)) => Ok(Some(
            parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect(),
        )),
        Some(other) => Err(serde::de::Error::custom(format!(
            "content must be a string or an array of parts, got {other}"
        ))),
    }
}

/// The non-streaming response body.
#[derive(Debug, Deserialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub choices: Vec<CompletionChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionChoice {
    #[serde(default)]
    pub message: ResponseMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// The assistant message of a response. `content` may be null when the model only calls tools.
#[derive(Debug, Default, Deserialize)]
pub struct ResponseMessage {
    #[serde(default, deserialize_with = "content_text")]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// One `data:` payload of a streamed response.
#[derive(Debug, Deserialize)]
pub struct ChatChunk {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub choices: Vec<ChunkChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
}

#[derive(Debug, Deserialize)]
pub struct ChunkChoice {
    #[serde(default)]
    pub delta: ChunkDelta,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChunkDelta {
    #[serde(default, deserialize_with = "content_text")]
    pub content: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
}

/// A fragment of a streamed tool call; fragments with the same `index` belong together.
#[derive(Debug, Deserialize)]
pub struct ToolCallDelta {
    #[serde(default)]
    pub index: Option<usize>,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
pub struct FunctionDelta {
    #[serde(default)]
    pub name: Option<String>,
    /// A text fragment to append, or (from some servers) the whole arguments as an object.
    #[serde(default)]
    pub arguments: Option<Value>,
}

fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Treats `""` like an absent `finish_reason`.
pub fn normalize_finish_reason(reason: Option<String>) -> Option<String> {
    reason.filter(|r| !r.is_empty())
}
