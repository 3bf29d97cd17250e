//! Masking of the provider's API key in text that came from the model server.
//!
//! A model server may quote the `Authorization` header back: in an error message, or in a field of
//! the wrong type that serde then quotes in its parse error. Such text reaches the client's error
//! body and the gateway log, so every error the provider client returns passes through
//! [`Redactor::error`]. Upstream text quoted in an error is masked before it is cut to length,
//! because a key that straddles the cut would otherwise leave its start in the message.

use super::ProviderError;
use crate::config::{MASK, Secret};

/// Maximum length of the upstream error text quoted in an error message, in characters.
const MAX_QUOTED_CHARS: usize = 300;

/// The masking rules for one provider's API key in upstream text.
#[derive(Debug, Clone, Default)]
pub(super) struct Redactor {
    api_key: Option<Secret>,
}

impl Redactor {
    pub(super) fn new(api_key: Option<&Secret>) -> Self {
        Self {
            api_key: api_key.filter(|key| !key.expose().is_empty()).cloned(),
        }
    }

    /// Masks the key in `text`: as sent, and in the escaped forms in which serde's messages
    /// (`{:?}`) and JSON quote a string.
    pub(super) fn mask(&self, text: &str) -> String {
        let Some(key) = self.api_key.as_ref().map(Secret::expose) else {
            return text.to_owned();
        };
        let mut text = text.to_owned();
        for form in quoted_forms(key) {
            text = text.replace(&form, MASK);
        }
        text
    }

    /// Masks the key in text that was cut at its end, and removes a start of the key that the cut
    /// left at the end, which [`Redactor::mask`] cannot recognize.
    pub(super) fn mask_cut(&self, text: &str) -> String {
        let mut masked = self.mask(text);
        let Some(key) = self.api_key.as_ref().map(Secret::expose) else {
            return masked;
        };
        for form in quoted_forms(key) {
            let partial = (1..form.len())
                .rev()
                .filter(|&len| form.is_char_boundary(len))
                .find(|&len| masked.ends_with(&form[..len]));
            if let Some(len) = partial {
                masked.truncate(masked.len() - len);
            }
        }
        masked
    }

    /// Masks the key in upstream text, then cuts it to [`MAX_QUOTED_CHARS`] characters with a
    /// trailing `…` when it was longer.
    pub(super) fn quote(&self, text: &str) -> String {
        let masked = self.mask(text);
        let mut cut: String = masked.chars().take(MAX_QUOTED_CHARS).collect();
        if cut.len() < masked.len() {
            cut.push('…');
        }
        cut
    }

    /// Masks the key in every message of `error` that may hold upstream text.
    pub(super) fn error(&self, error: ProviderError) -> ProviderError {
        if self.api_key.is_none() {
            return error;
        }
        match error {
            ProviderError::Status {
                status,
                message,
                retry_after,
            } => ProviderError::Status {
                status,
                message: self.mask(&message),
                retry_after,
            },
            ProviderError::InvalidResponse(message) => {
                ProviderError::InvalidResponse(self.mask(&message))
            }
            ProviderError::Transport(message) => ProviderError::Transport(self.mask(&message)),
            ProviderError::Connect(message) => ProviderError::Connect(self.mask(&message)),
            ProviderError::Setup(message) => ProviderError::Setup(self.mask(&message)),
            other @ (ProviderError::Timeout(_)
            | ProviderError::DeadlineExceeded
            | ProviderError::IncompleteStream) => other,
        }
    }
}

/// Returns the key as sent, as `{:?}` prints it and as a JSON string literal encodes it, without
/// quotes and without repeats. The three are equal for the usual keys of letters, digits, `-`
/// and `_`.
fn quoted_forms(key: &str) -> Vec<String> {
    let debug = format!("{key:?}");
    let json = serde_json::to_string(key).unwrap_or_default();
    let mut forms = vec![key.to_owned()];
    for quoted in [debug, json] {
        let bare = quoted
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .unwrap_or(quoted.as_str());
        if !bare.is_empty() && !forms.iter().any(|form| form == bare) {
            forms.push(bare.to_owned());
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(key: &str) -> Redactor {
        Redactor::new(Secret::non_empty(key.to_owned()).as_ref())
    }

    #[test]
    fn masks_key_before_cutting() {
        let key = "sk-straddle-0123456789";
        // 292 characters come before the key, so the cut falls inside it.
        let text = format!("{}Bearer {key} and more", "x".repeat(285));
        let quoted = redactor(key).quote(&text);
        assert!(!quoted.contains("sk-"), "{quoted}");
        assert!(quoted.ends_with('…'), "{quoted}");
        assert_eq!(quoted.chars().count(), MAX_QUOTED_CHARS + 1);
    }

    #[test]
    fn mask_cut_removes_key_start_at_end() {
        let key = "sk-cut-in-half-31337";
        let text = format!("Bearer {key} and Bearer {}", &key[..9]);
        let masked = redactor(key).mask_cut(&text);
        assert_eq!(masked, format!("Bearer {MASK} and Bearer "));
    }

    #[test]
    fn mask_cut_keeps_text_without_key_start() {
        let masked = redactor("sk-abc").mask_cut("upstream failed: x");
        assert_eq!(masked, "upstream failed: x");
    }

    #[test]
    fn cuts_on_a_character_boundary() {
        let text = "é".repeat(MAX_QUOTED_CHARS + 5);
        let quoted = Redactor::default().quote(&text);
        assert_eq!(quoted, format!("{}…", "é".repeat(MAX_QUOTED_CHARS)));
    }

    #[test]
    fn masks_escaped_forms_of_key() {
        let key = "sk-\"quoted\"\\key";
        let text = format!("raw {key}, debug {key:?}, json {}", serde_json::json!(key));
        let masked = redactor(key).mask(&text);
        assert!(!masked.contains("quoted"), "{masked}");
        assert_eq!(masked.matches(MASK).count(), 3, "{masked}");
    }
}
