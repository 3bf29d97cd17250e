-- Code mode: where each tool call came from, and the audit record of each code-mode attempt.
ALTER TABLE tool_calls ADD COLUMN origin TEXT NOT NULL DEFAULT 'tool_loop'
    CHECK (origin IN ('tool_loop', 'code_mode'));

CREATE TABLE code_mode_attempts (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id),
    turn_id    TEXT NOT NULL,
    record     JSONB NOT NULL
);

CREATE INDEX code_mode_attempts_by_turn ON code_mode_attempts (session_id, turn_id);
