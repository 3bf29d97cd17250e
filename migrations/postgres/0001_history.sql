-- Conversation history: one row per session, one row per message. The tables and columns are the
-- SQLite store's; times are Unix milliseconds.
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE messages (
    -- Ascends in the order a session's rows are inserted, which is the order of its turns.
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id        TEXT NOT NULL REFERENCES sessions (id),
    turn_id           TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content           TEXT NOT NULL,
    user_id           TEXT NOT NULL,
    created_at_ms     BIGINT NOT NULL,
    provider          TEXT,
    model             TEXT,
    finish_reason     TEXT,
    -- NULL when the provider reported no usage: unknown, not zero.
    prompt_tokens     BIGINT,
    completion_tokens BIGINT,
    total_tokens      BIGINT
);

CREATE INDEX messages_by_session ON messages (session_id, id);
