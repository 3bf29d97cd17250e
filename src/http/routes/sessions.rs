//! `GET /v1/sessions/{session_id}/messages`: the stored history of a session.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use serde::Serialize;

use super::validate_id;
use crate::http::error::ApiError;
use crate::http::state::AppState;
use crate::store::StoredMessage;

#[derive(Serialize)]
pub struct SessionHistory {
    session_id: String,
    messages: Vec<StoredMessage>,
}

// NOTE: the whole history is read and returned at once, with no page size or cursor, so a long
// session makes a large reply: 400 turns of 16 KB each came back as 13 MB.
pub async fn messages(
    State(state): State<AppState>,
    session_id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionHistory>, ApiError> {
    let Path(session_id) = session_id.map_err(|rejection| {
        ApiError::field(
            "session_id",
            format!("invalid session id in the path: {rejection}"),
        )
    })?;
    validate_id("session_id", &session_id)?;
    let messages = state
        .store
        .session_messages(&session_id)
        .await
        .map_err(ApiError::Store)?
        .ok_or_else(|| ApiError::NotFound(format!("session `{session_id}` not found")))?;
    Ok(Json(SessionHistory {
        session_id,
        messages,
    }))
}
