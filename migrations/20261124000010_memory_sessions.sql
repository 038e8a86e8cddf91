-- migrate:up
-- Sessions and their message history. Every row carries the tenant of the credential
-- that wrote it, first in every key, so each query is scoped by it and served by an index.

CREATE TABLE IF NOT EXISTS memory.sessions (
    tenant        text        NOT NULL,
    id            text        NOT NULL,
    display_name  text        NOT NULL DEFAULT '',
    labels        jsonb       NOT NULL DEFAULT '{}',
    metadata      jsonb       NOT NULL DEFAULT '{}',
    -- Maintained by AppendMessages under the row lock that allocates sequences.
    message_count bigint      NOT NULL DEFAULT 0,
    last_sequence bigint      NOT NULL DEFAULT 0,
    -- Bumped by every UpdateSession; the etag is this number, quoted.
    version       bigint      NOT NULL DEFAULT 1,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
-- ListSessions: newest first, ties by id (keyset pagination walks this index).
CREATE INDEX IF NOT EXISTS sessions_list_order
    ON memory.sessions (tenant, create_time DESC, id);
-- ListSessions filter `labels.<k> = "v"` becomes `labels @> '{"k": "v"}'`.
CREATE INDEX IF NOT EXISTS sessions_labels
    ON memory.sessions USING gin (labels jsonb_path_ops);

CREATE TABLE IF NOT EXISTS memory.messages (
    tenant       text        NOT NULL,
    session_id   text        NOT NULL,
    -- 1, 2, 3... per session with no gaps: allocated only by AppendMessages.
    sequence     bigint      NOT NULL CHECK (sequence > 0),
    message_id   text        NOT NULL,
    role         text        NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
    -- The message's Parts as a JSON array (protobuf JSON mapping, snake_case names).
    parts        jsonb       NOT NULL,
    agent        text        NOT NULL DEFAULT '',
    tool_call_id text        NOT NULL DEFAULT '',
    token_count  bigint      NOT NULL DEFAULT 0,
    metadata     jsonb       NOT NULL DEFAULT '{}',
    create_time  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, session_id, sequence),
    -- A client's message_id is stored once per session (idempotent appends).
    UNIQUE (tenant, session_id, message_id),
    FOREIGN KEY (tenant, session_id) REFERENCES memory.sessions (tenant, id) ON DELETE CASCADE
);
-- ListMessages with a time range.
CREATE INDEX IF NOT EXISTS messages_create_time
    ON memory.messages (tenant, session_id, create_time, sequence);

-- migrate:down
DROP TABLE IF EXISTS memory.messages;
DROP TABLE IF EXISTS memory.sessions;
