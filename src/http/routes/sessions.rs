//! `GET /v1/sessions/{session_id}/messages`: the stored history of a session, one page at a time.
//!
//! A page is the newest `limit` messages with an id below `before`, oldest first. The reply's
//! `next_before` is the `before` of the next older page, so a client walks back from the newest
//! message until `next_before` is `null`. Turns saved while a client pages get higher ids, so
//! they never shift the older pages.

use std::num::NonZeroU32;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use serde::Serialize;

use super::validate_id;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::store::{PageRequest, StoredMessage};

/// Page size when the request has no `limit`.
pub const DEFAULT_PAGE_LIMIT: NonZeroU32 = NonZeroU32::new(100).unwrap();

/// Largest accepted `limit`.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// Maximum number of characters of a rejected query key or value that an error message repeats.
const MAX_ECHOED_CHARS: usize = 64;

#[derive(Serialize)]
pub struct SessionHistory {
    session_id: String,
    /// Oldest first.
    messages: Vec<StoredMessage>,
    /// The `before` of the next older page, or `null` when no older message exists.
    next_before: Option<i64>,
}

pub async fn messages(
    State(state): State<AppState>,
    session_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<SessionHistory>, ApiError> {
    let Path(session_id) = session_id.map_err(|rejection| {
        ApiError::field(
            "session_id",
            format!("invalid session id in the path: {rejection}"),
        )
    })?;
    validate_id("session_id", &session_id)?;
    let request = parse_page_query(query.as_deref().unwrap_or_default())?;
    let page = state
        .store
        .message_page(&session_id, request)
        .await
        .map_err(ApiError::Store)?
        .ok_or_else(|| ApiError::NotFound(format!("session `{session_id}` not found")))?;
    Ok(Json(SessionHistory {
        session_id,
        messages: page.messages,
        next_before: page.next_before,
    }))
}

/// Parses the `limit` and `before` query parameters. An unknown or repeated key and a value out
/// of range are rejected with an error that names the parameter.
fn parse_page_query(query: &str) -> Result<PageRequest, ApiError> {
    let mut limit = None;
    let mut before = None;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "limit" => set_once(&mut limit, "limit", parse_limit(&value)?)?,
            "before" => set_once(&mut before, "before", parse_before(&value)?)?,
            other => {
                return Err(ApiError::field(
                    truncate(other),
                    format!(
                        "unknown query parameter {}; this route accepts `limit` (an integer \
                         from 1 to {MAX_PAGE_LIMIT}) and `before` (a message id)",
                        echo(other)
                    ),
                ));
            }
        }
    }
    Ok(PageRequest {
        limit: limit.unwrap_or(DEFAULT_PAGE_LIMIT),
        before,
    })
}

fn parse_limit(value: &str) -> Result<NonZeroU32, ApiError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|limit| *limit <= MAX_PAGE_LIMIT)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| {
            ApiError::field(
                "limit",
                format!(
                    "`limit` must be an integer from 1 to {MAX_PAGE_LIMIT} \
                     (default {DEFAULT_PAGE_LIMIT}), got {}",
                    echo(value)
                ),
            )
        })
}

fn parse_before(value: &str) -> Result<i64, ApiError> {
    value
        .parse::<i64>()
        .ok()
        .filter(|id| *id >= 1)
        .ok_or_else(|| {
            ApiError::field(
                "before",
                format!(
                    "`before` must be a message id, an integer from 1 to {}, got {}; \
                     pass the `next_before` of the previous page",
                    i64::MAX,
                    echo(value)
                ),
            )
        })
}

fn set_once<T>(slot: &mut Option<T>, key: &str, value: T) -> Result<(), ApiError> {
    if slot.is_some() {
        return Err(ApiError::field(
            key,
            format!("query parameter `{key}` is given more than once; give it once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// Returns the first [`MAX_ECHOED_CHARS`] characters of `text`.
fn truncate(text: &str) -> &str {
    match text.char_indices().nth(MAX_ECHOED_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Quotes `text` for an error message, with control characters escaped and long text cut short.
fn echo(text: &str) -> String {
    let prefix = truncate(text);
    if prefix.len() < text.len() {
        format!("{prefix:?}...")
    } else {
        format!("{prefix:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(query: &str) -> (String, String) {
        match parse_page_query(query) {
            Err(ApiError::InvalidField { field, message }) => (field, message),
            other => panic!("{query}: expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn empty_query_uses_defaults() {
        let request = parse_page_query("").unwrap();
        assert_eq!(request.limit, DEFAULT_PAGE_LIMIT);
        assert_eq!(request.before, None);
    }

    #[test]
    fn limit_and_before_parse() {
        let request = parse_page_query("limit=1000&before=9223372036854775807").unwrap();
        assert_eq!(request.limit.get(), 1000);
        assert_eq!(request.before, Some(i64::MAX));
        let request = parse_page_query("before=1&limit=1").unwrap();
        assert_eq!(request.limit.get(), 1);
        assert_eq!(request.before, Some(1));
    }

    #[test]
    fn percent_encoded_values_parse() {
        let request = parse_page_query("limit=%35").unwrap();
        assert_eq!(request.limit.get(), 5);
    }

    #[test]
    fn bad_values_name_parameter_and_value() {
        let limit_range = "from 1 to 1000";
        let before_range = "from 1 to 9223372036854775807";
        let cases = [
            ("limit=0", "limit", "\"0\"", limit_range),
            ("limit=1001", "limit", "\"1001\"", limit_range),
            ("limit=abc", "limit", "\"abc\"", limit_range),
            ("limit=", "limit", "\"\"", limit_range),
            ("limit", "limit", "\"\"", limit_range),
            ("limit=-1", "limit", "\"-1\"", limit_range),
            ("limit=4294967296", "limit", "\"4294967296\"", limit_range),
            ("before=0", "before", "\"0\"", before_range),
            ("before=-1", "before", "\"-1\"", before_range),
            ("before=1.5", "before", "\"1.5\"", before_range),
            (
                "before=9223372036854775808",
                "before",
                "\"9223372036854775808\"",
                before_range,
            ),
            ("page=2", "page", "\"page\"", limit_range),
        ];
        for (query, parameter, value, range) in cases {
            let (field, message) = rejected(query);
            assert_eq!(field, parameter, "{query}");
            assert!(message.contains(value), "{query}: {message}");
            assert!(message.contains(range), "{query}: {message}");
        }
    }

    #[test]
    fn repeated_parameter_is_rejected() {
        let (field, message) = rejected("limit=5&limit=6");
        assert_eq!(field, "limit");
        assert!(message.contains("more than once"), "{message}");
    }

    #[test]
    fn long_value_is_cut_short() {
        let value = "9".repeat(500);
        let (_, message) = rejected(&format!("limit={value}"));
        assert!(
            message.contains(&format!("\"{}\"...", "9".repeat(64))),
            "{message}"
        );
        assert!(!message.contains(&"9".repeat(65)), "{message}");
    }

    #[test]
    fn control_characters_are_escaped() {
        let (_, message) = rejected("limit=a%0Ab");
        assert!(message.contains("\"a\\nb\""), "{message}");
    }
}
