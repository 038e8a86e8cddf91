-- migrate:up
-- The decision audit trail: append-only rows, one per decision an agent or the
-- Conductor made. `session_id` and `job_id` are plain ids with no foreign key on
-- purpose: the trail must accept a decision whose session is gone (or lives in
-- another service, for jobs), and must not lose rows when a session is deleted.
CREATE TABLE IF NOT EXISTS memory.decisions (
    tenant              text        NOT NULL,
    id                  text        NOT NULL,
    agent               text        NOT NULL,  -- `agents/{id}` or `conductor`
    session_id          text,
    job_id              text,
    input_summary       text        NOT NULL DEFAULT '',
    reasoning           text        NOT NULL DEFAULT '',
    candidates          jsonb       NOT NULL DEFAULT '[]',  -- [{name, score, reason}]
    chosen_action       text        NOT NULL,
    tools               text[]      NOT NULL DEFAULT '{}',
    outcome             text        NOT NULL DEFAULT '',
    latency_ns          bigint      CHECK (latency_ns >= 0),  -- NULL: not reported
    input_tokens        bigint,  -- the three are NULL together: no usage reported
    output_tokens       bigint,
    total_tokens        bigint,
    trace_id            text        NOT NULL DEFAULT '',
    metadata            jsonb       NOT NULL DEFAULT '{}',
    create_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
-- ListDecisions reads newest first with `id` as the tie-break, unfiltered or by
-- one of agent / session / job; each index serves one of those keyset scans.
CREATE INDEX IF NOT EXISTS decisions_by_time
    ON memory.decisions (tenant, create_time DESC, id DESC);
CREATE INDEX IF NOT EXISTS decisions_by_agent
    ON memory.decisions (tenant, agent, create_time DESC, id DESC);
CREATE INDEX IF NOT EXISTS decisions_by_session
    ON memory.decisions (tenant, session_id, create_time DESC, id DESC)
    WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS decisions_by_job
    ON memory.decisions (tenant, job_id, create_time DESC, id DESC)
    WHERE job_id IS NOT NULL;

-- Artifact heads: one row per artifact, the lock that serialises puts (the next
-- version is `latest_version + 1`, allocated by an upsert on this row) and the
-- copy of the latest version's session and media type that ListArtifacts filters on.
CREATE TABLE IF NOT EXISTS memory.artifacts (
    tenant         text        NOT NULL,
    id             text        NOT NULL,
    latest_version bigint      NOT NULL CHECK (latest_version >= 1),
    session_id     text,
    media_type     text        NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    update_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS artifacts_by_session
    ON memory.artifacts (tenant, session_id, id) WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS artifacts_by_media_type
    ON memory.artifacts (tenant, media_type, id);

-- Every stored version, immutable once written; deleting the head deletes them all.
CREATE TABLE IF NOT EXISTS memory.artifact_versions (
    tenant      text        NOT NULL,
    artifact_id text        NOT NULL,
    version     bigint      NOT NULL CHECK (version >= 1),
    media_type  text        NOT NULL,
    text        text,
    data        bytea,
    metadata    jsonb       NOT NULL DEFAULT '{}',
    session_id  text,
    size_bytes  bigint      NOT NULL CHECK (size_bytes >= 0),
    sha256      text        NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, artifact_id, version),
    -- Exactly one kind of content, as the API's oneof says.
    CHECK ((text IS NULL) <> (data IS NULL)),
    FOREIGN KEY (tenant, artifact_id)
        REFERENCES memory.artifacts (tenant, id) ON DELETE CASCADE
);

-- migrate:down
DROP TABLE IF EXISTS memory.artifact_versions;
DROP TABLE IF EXISTS memory.artifacts;
DROP TABLE IF EXISTS memory.decisions;
