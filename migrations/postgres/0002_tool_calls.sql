-- Tool calls made during a turn, in the order the model requested them.
CREATE TABLE tool_calls (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id    TEXT NOT NULL REFERENCES sessions (id),
    turn_id       TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    name          TEXT NOT NULL,
    server        TEXT,
    tool          TEXT,
    arguments     JSONB NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('ok', 'tool_error', 'failed', 'rejected')),
    error         TEXT,
    duration_ms   BIGINT NOT NULL,
    truncated     BOOLEAN NOT NULL
);

CREATE INDEX tool_calls_by_session ON tool_calls (session_id, turn_id, seq);
