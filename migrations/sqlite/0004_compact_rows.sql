-- Fewer pages written per turn. A new session's turn wrote five pages to the write-ahead log:
-- the sessions table and its separate primary-key index, the messages table and its index, and
-- the AUTOINCREMENT counter in sqlite_sequence. Sessions are now stored in their primary-key
-- B-tree (WITHOUT ROWID), and ids come from the rowid, which grows with every insert because no
-- row is ever deleted. A new session's turn now writes three pages.
--
-- Each table is rebuilt under a new name and renamed at the end. The new tables refer to
-- new_sessions, so dropping the old sessions table leaves no row without its parent, and renaming
-- new_sessions to sessions rewrites those references. Row ids are copied, so history cursors stay
-- valid.
--
-- The CHECK constraints compare with OR instead of IN: SQLite builds a temporary table for an IN
-- list of more than two values on every insert, which cost more than the rest of the check.

CREATE TABLE new_sessions (
    id            TEXT PRIMARY KEY NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO new_sessions (id, created_at_ms, updated_at_ms)
    SELECT id, created_at_ms, updated_at_ms FROM sessions;

CREATE TABLE new_messages (
    id                INTEGER PRIMARY KEY,
    session_id        TEXT NOT NULL REFERENCES new_sessions (id),
    turn_id           TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role = 'system' OR role = 'user' OR
                                           role = 'assistant' OR role = 'tool'),
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

INSERT INTO new_messages (id, session_id, turn_id, role, content, user_id, created_at_ms,
        provider, model, finish_reason, prompt_tokens, completion_tokens, total_tokens)
    SELECT id, session_id, turn_id, role, content, user_id, created_at_ms, provider, model,
        finish_reason, prompt_tokens, completion_tokens, total_tokens
    FROM messages;

CREATE TABLE new_tool_calls (
    id            INTEGER PRIMARY KEY,
    session_id    TEXT NOT NULL REFERENCES new_sessions (id),
    turn_id       TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    name          TEXT NOT NULL,
    server        TEXT,
    tool          TEXT,
    arguments     TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status = 'ok' OR status = 'tool_error' OR
                                       status = 'failed' OR status = 'rejected'),
    error         TEXT,
    duration_ms   INTEGER NOT NULL,
    truncated     INTEGER NOT NULL,
    origin        TEXT NOT NULL DEFAULT 'tool_loop'
                  CHECK (origin = 'tool_loop' OR origin = 'code_mode')
);

INSERT INTO new_tool_calls (id, session_id, turn_id, seq, name, server, tool, arguments, status,
        error, duration_ms, truncated, origin)
    SELECT id, session_id, turn_id, seq, name, server, tool, arguments, status, error,
        duration_ms, truncated, origin
    FROM tool_calls;

CREATE TABLE new_code_mode_attempts (
    id         INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES new_sessions (id),
    turn_id    TEXT NOT NULL,
    -- The audit record as JSON.
    record     TEXT NOT NULL
);

INSERT INTO new_code_mode_attempts (id, session_id, turn_id, record)
    SELECT id, session_id, turn_id, record FROM code_mode_attempts;

-- Children first: dropping a parent that still has children would fail their foreign keys.
DROP TABLE code_mode_attempts;
DROP TABLE tool_calls;
DROP TABLE messages;
DROP TABLE sessions;

ALTER TABLE new_sessions RENAME TO sessions;
ALTER TABLE new_messages RENAME TO messages;
ALTER TABLE new_tool_calls RENAME TO tool_calls;
ALTER TABLE new_code_mode_attempts RENAME TO code_mode_attempts;

CREATE INDEX messages_by_session ON messages (session_id, id);
CREATE INDEX tool_calls_by_session ON tool_calls (session_id, turn_id, seq);
CREATE INDEX code_mode_attempts_by_turn ON code_mode_attempts (session_id, turn_id);
