-- migrate:up
-- Conductor service: the conversation of each session as the Conductor streamed it.
-- Memory keeps the messages and the decisions; these tables keep what only the
-- Conductor knows: each turn (its idempotency key, agent, thread and outcome), each
-- event streamed with its per-session sequence (WatchConversation replays them), and
-- per session the next sequence, the turn running and the turn paused on an interrupt.

-- One row per session that had a turn. Sequences are allocated here (one UPDATE per
-- event, so they have no gaps); `running_turn` is the claim of the turn in progress
-- (taken over once `running_expire_time` passed: its replica died); `paused_*` is the
-- turn waiting for a resume (the interrupt's id, the agent and the thread to resume).
CREATE TABLE IF NOT EXISTS conductor.conversations (
    tenant              text        NOT NULL,
    session             text        NOT NULL,  -- the session id (`sessions/{id}` on the wire)
    last_sequence       bigint      NOT NULL DEFAULT 0,
    running_turn        text,
    running_expire_time timestamptz,
    paused_turn         text,
    paused_interrupt_id text,
    paused_agent        text,
    paused_thread_id    text,
    update_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, session)
);

-- One row per Converse call that ran (a resume is a turn of its own). `state` holds
-- domain/turns.py TurnState numbers; `request_id` with the request's fingerprint is
-- the idempotency key: a retry finds the turn and replays its events.
CREATE TABLE IF NOT EXISTS conductor.turns (
    tenant      text        NOT NULL,
    session     text        NOT NULL,
    id          text        NOT NULL,
    request_id  text,
    fingerprint bytea       NOT NULL,
    agent       text        NOT NULL,  -- the agent id
    thread_id   text        NOT NULL,
    resumes     text,                  -- the paused turn this one continues
    state       smallint    NOT NULL,
    create_time timestamptz NOT NULL DEFAULT now(),
    end_time    timestamptz,
    PRIMARY KEY (tenant, session, id),
    FOREIGN KEY (tenant, session) REFERENCES conductor.conversations (tenant, session)
        ON DELETE CASCADE
);
-- NULLs are distinct: turns without a request_id never collide.
CREATE UNIQUE INDEX IF NOT EXISTS turns_by_request_id
    ON conductor.turns (tenant, session, request_id);

-- Every event streamed, as the serialized agentmesh.v1.ConverseEvent without its
-- session, sequence and time (those are the columns).
CREATE TABLE IF NOT EXISTS conductor.events (
    tenant   text        NOT NULL,
    session  text        NOT NULL,
    sequence bigint      NOT NULL,
    turn_id  text        NOT NULL,
    time     timestamptz NOT NULL DEFAULT now(),
    event    bytea       NOT NULL,
    PRIMARY KEY (tenant, session, sequence),
    FOREIGN KEY (tenant, session) REFERENCES conductor.conversations (tenant, session)
        ON DELETE CASCADE
);
-- A turn's events (the replay of a retried request_id).
CREATE INDEX IF NOT EXISTS events_by_turn ON conductor.events (tenant, session, turn_id, sequence);

-- migrate:down
DROP TABLE IF EXISTS conductor.events;
DROP TABLE IF EXISTS conductor.turns;
DROP TABLE IF EXISTS conductor.conversations;
