//! The model's answer to one request, and how streamed chunks add up to it.

use serde_json::Value;

use super::ProviderError;
use super::wire::{
    ChatChunk, ChatCompletion, FunctionCall, ToolArguments, ToolCall, Usage,
    normalize_finish_reason,
};
use crate::store::without_nul;

/// The assistant's answer to one chat-completions request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    /// `None` when the server never sent one (allowed: some servers omit it or send `""`).
    pub finish_reason: Option<String>,
    /// `None` when the server reported no usage; unknown is not zero.
    pub usage: Option<Usage>,
    pub model: Option<String>,
}

impl TryFrom<ChatCompletion> for Completion {
    type Error = ProviderError;

    fn try_from(response: ChatCompletion) -> Result<Self, ProviderError> {
        let choice =
            response.choices.into_iter().next().ok_or_else(|| {
                ProviderError::InvalidResponse("the response has no choices".into())
            })?;
        let completion = Self {
            content: choice.message.content.unwrap_or_default(),
            tool_calls: choice.message.tool_calls,
            finish_reason: normalize_finish_reason(choice.finish_reason),
            usage: response.usage,
            model: response.model,
        };
        Ok(completion.without_nul())
    }
}

impl Completion {
    /// Replaces U+0000 with U+FFFD in every text field that the history stores, so the client
    /// gets the same reply that the history keeps, on either store. Tool-call arguments keep
    /// U+0000, because a tool may need the exact value.
    fn without_nul(self) -> Self {
        Self {
            content: without_nul(self.content),
            tool_calls: self
                .tool_calls
                .into_iter()
                .map(|call| ToolCall {
                    id: without_nul(call.id),
                    function: FunctionCall {
                        name: without_nul(call.function.name),
                        ..call.function
                    },
                    ..call
                })
                .collect(),
            finish_reason: self.finish_reason.map(without_nul),
            usage: self.usage,
            model: self.model.map(without_nul),
        }
    }
}

/// Collects streamed chunks into a [`Completion`].
#[derive(Debug, Default)]
pub struct CompletionBuilder {
    content: String,
    tool_calls: Vec<PartialToolCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    saw_choice: bool,
}

#[derive(Debug, Default)]
struct PartialToolCall {
    index: Option<usize>,
    id: String,
    name: String,
    arguments_text: String,
    arguments_value: Option<Value>,
}

impl CompletionBuilder {
    /// Applies one chunk and returns the text it adds, if any.
    pub fn apply(&mut self, chunk: ChatChunk) -> Option<String> {
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        if self.model.is_none() {
            self.model = chunk.model;
        }
        let mut text = String::new();
        for choice in chunk.choices {
            self.saw_choice = true;
            if let Some(piece) = choice.delta.content {
                text.push_str(&piece);
            }
            for delta in choice.delta.tool_calls {
                self.apply_tool_call(delta);
            }
            if let Some(reason) = normalize_finish_reason(choice.finish_reason) {
                self.finish_reason = Some(reason);
            }
        }
        let text = without_nul(text);
        self.content.push_str(&text);
        (!text.is_empty()).then_some(text)
    }

    fn apply_tool_call(&mut self, delta: super::wire::ToolCallDelta) {
        let position = match delta.index {
            Some(index) => self.tool_calls.iter().position(|c| c.index == Some(index)),
            // Without an index, a fragment carrying an id starts a new call.
            None if delta.id.is_some() => None,
            None => self.tool_calls.len().checked_sub(1),
        };
        let call = match position {
            Some(position) => &mut self.tool_calls[position],
            None => {
                self.tool_calls.push(PartialToolCall {
                    index: delta.index,
                    ..Default::default()
                });
                self.tool_calls.last_mut().expect("just pushed")
            }
        };
        if let Some(id) = delta.id.filter(|id| !id.is_empty()) {
            call.id = id;
        }
        let Some(function) = delta.function else {
            return;
        };
        if let Some(name) = function.name {
            call.name.push_str(&name);
        }
        match function.arguments {
            Some(Value::String(fragment)) => call.arguments_text.push_str(&fragment),
            Some(Value::Null) | None => {}
            Some(object) => call.arguments_value = Some(object),
        }
    }

    /// Whether any choice arrived; a stream without one is not a valid answer.
    pub fn is_empty(&self) -> bool {
        !self.saw_choice
    }

    /// Returns whether any chunk carried a non-empty `finish_reason`.
    pub fn has_finish_reason(&self) -> bool {
        self.finish_reason.is_some()
    }

    pub fn finish(self) -> Completion {
        let tool_calls = self
            .tool_calls
            .into_iter()
            .map(|call| ToolCall {
                id: call.id,
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: call.name,
                    arguments: match call.arguments_value {
                        Some(value) => ToolArguments::from_value(value),
                        None => ToolArguments::from_text(&call.arguments_text),
                    },
                },
            })
            .collect();
        let completion = Completion {
            content: self.content,
            tool_calls,
            finish_reason: self.finish_reason,
            usage: self.usage,
            model: self.model,
        };
        completion.without_nul()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_in_model_text_becomes_replacement_character() {
        let response: ChatCompletion = serde_json::from_str(
            r#"{"model":"m\u0000","choices":[{"message":{"role":"assistant",
                "content":"a\u0000b","tool_calls":[{"id":"c\u0000","type":"function",
                "function":{"name":"n\u0000","arguments":"{}"}}]},
                "finish_reason":"st\u0000op"}]}"#,
        )
        .unwrap();
        let completion = Completion::try_from(response).unwrap();
        assert_eq!(completion.content, "a\u{FFFD}b");
        assert_eq!(completion.model.as_deref(), Some("m\u{FFFD}"));
        assert_eq!(completion.finish_reason.as_deref(), Some("st\u{FFFD}op"));
        assert_eq!(completion.tool_calls[0].id, "c\u{FFFD}");
        assert_eq!(completion.tool_calls[0].function.name, "n\u{FFFD}");

        let mut builder = CompletionBuilder::default();
        let chunk: ChatChunk =
            serde_json::from_str(r#"{"choices":[{"delta":{"content":"\u0000x"}}]}"#).unwrap();
        assert_eq!(builder.apply(chunk).as_deref(), Some("\u{FFFD}x"));
        assert_eq!(builder.finish().content, "\u{FFFD}x");
    }
}
