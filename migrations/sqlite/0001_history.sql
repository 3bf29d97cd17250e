-- Conversation history: one row per session, one row per message.
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE messages (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id        TEXT NOT NULL REFERENCES sessions (id),
    turn_id           TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content           TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    provider          TEXT,
    model             TEXT,
    finish_reason     TEXT,
    -- NULL when the provider reported no usage: unknown, not zero.
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    total_tokens      INTEGER
);

CREATE INDEX messages_by_session ON messages (session_id, id);
