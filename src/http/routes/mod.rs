//! Route handlers; each parses its input, calls one service, and shapes the response.

mod body;
pub mod diag;
pub mod health;
pub mod mcp;
pub mod messages;
pub mod sessions;

use super::error::ApiError;

pub use body::{check_content_type, read_body};

/// Longest accepted `session_id` or `user_id`, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Checks a session or user id: not empty, at most [`MAX_ID_BYTES`], no control characters or line
/// breaks, and no invisible formatting characters that would make two different ids look the same
/// in logs.
pub fn validate_id(field: &str, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::field(
            field,
            format!("`{field}` must not be empty"),
        ));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(ApiError::field(
            field,
            format!(
                "`{field}` is {} bytes; the limit is {MAX_ID_BYTES}, so use a shorter id",
                value.len()
            ),
        ));
    }
    if let Some(c) = value.chars().find(|&c| is_control_or_line_break(c)) {
        return Err(ApiError::field(
            field,
            format!(
                "`{field}` must not contain control characters or line breaks; remove U+{:04X}",
                u32::from(c)
            ),
        ));
    }
    if let Some(c) = value.chars().find(|&c| is_invisible_format(c)) {
        return Err(ApiError::field(
            field,
            format!(
                "`{field}` must not contain invisible or direction-changing characters; remove \
                 U+{:04X}",
                u32::from(c)
            ),
        ));
    }
    Ok(())
}

/// Returns whether `c` is a control character (Unicode category Cc) or the line or paragraph
/// separator U+2028 or U+2029, which JavaScript and many text viewers treat as line breaks.
fn is_control_or_line_break(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Zero-width, direction-override and byte-order-mark characters (Unicode format characters that
/// render as nothing or reorder the text around them).
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}
