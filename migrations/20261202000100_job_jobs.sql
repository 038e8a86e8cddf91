-- migrate:up
-- Job service: durable job records, their change history (for WatchJob's replay) and
-- idempotency keys. Dramatiq only carries work to the workers; these rows are the
-- truth (docs/adr/0024).

-- Idempotency keys of CreateJob (request_id): a retried create replays its first
-- answer instead of creating (and running) a second job.
CREATE TABLE IF NOT EXISTS job.request_ids (
    tenant      text        NOT NULL,
    method      text        NOT NULL,
    request_id  text        NOT NULL,
    claim       uuid        NOT NULL DEFAULT gen_random_uuid(),
    response    bytea,
    fingerprint bytea,                 -- of the request that claimed the key
    expire_time timestamptz NOT NULL,
    PRIMARY KEY (tenant, method, request_id)
);
CREATE INDEX IF NOT EXISTS request_ids_expire_time ON job.request_ids (expire_time);

-- One row per job. `state` holds agentmesh.v1.JobState numbers. Every change is one
-- conditional UPDATE (expected state, attempt and `fence`) that also bumps `sequence`
-- and writes the change to job.events in the same statement.
CREATE TABLE IF NOT EXISTS job.jobs (
    tenant             text             NOT NULL,
    id                 text             NOT NULL,
    agent              text             NOT NULL,  -- the agent id (`agents/{id}` on the wire)
    input              jsonb            NOT NULL DEFAULT '{}',
    parts              jsonb            NOT NULL DEFAULT '[]',  -- Parts in proto JSON
    session            text             NOT NULL DEFAULT '',
    priority           smallint         NOT NULL,
    labels             jsonb            NOT NULL DEFAULT '{}',
    max_attempts       smallint         NOT NULL,
    initial_backoff_ms integer          NOT NULL,
    max_backoff_ms     integer          NOT NULL,
    backoff_multiplier double precision NOT NULL,
    state              smallint         NOT NULL,
    attempt            integer          NOT NULL DEFAULT 1,
    -- The last attempt automatic retries may reach: max_attempts from the first
    -- attempt, and again from each RetryJob.
    attempt_limit      integer          NOT NULL,
    -- Claims so far: a worker's writes carry the fence it claimed with, so a worker
    -- whose lease was taken over can change nothing any more.
    fence              bigint           NOT NULL DEFAULT 0,
    lease_owner        text,
    lease_expire_time  timestamptz,
    dispatch_time      timestamptz,     -- when a message was last sent for it
    cancel_reason      text,
    progress           jsonb,
    result             jsonb,
    error              jsonb,           -- google.rpc.Status in proto JSON
    interrupt          jsonb,           -- agentmesh.v1.Interrupt in proto JSON
    resume             jsonb,           -- the answer to deliver: {interrupt_id, answer}
    thread_id          text             NOT NULL,
    input_tokens       bigint           NOT NULL DEFAULT 0,
    output_tokens      bigint           NOT NULL DEFAULT 0,
    sequence           bigint           NOT NULL DEFAULT 1,
    create_time        timestamptz      NOT NULL DEFAULT now(),
    schedule_time      timestamptz      NOT NULL DEFAULT now(),
    start_time         timestamptz,
    end_time           timestamptz,
    update_time        timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
-- ListJobs, in each order it offers.
CREATE INDEX IF NOT EXISTS jobs_by_create_time ON job.jobs (tenant, create_time DESC, id);
CREATE INDEX IF NOT EXISTS jobs_by_update_time ON job.jobs (tenant, update_time DESC, id);
-- The dispatcher: pending jobs due (or due again: a message that never arrived).
CREATE INDEX IF NOT EXISTS jobs_pending ON job.jobs (schedule_time) WHERE state = 1;
-- The reaper: leases of running and cancelling jobs.
CREATE INDEX IF NOT EXISTS jobs_leased ON job.jobs (lease_expire_time) WHERE state IN (2, 7);
-- A tenant's active jobs (the active-jobs quota).
CREATE INDEX IF NOT EXISTS jobs_active ON job.jobs (tenant) WHERE state IN (1, 2, 3, 7);

-- The changes of each job, as the job was right after each (without its input and
-- parts, which never change). The latest 1,000 of a job are kept.
CREATE TABLE IF NOT EXISTS job.events (
    tenant   text        NOT NULL,
    job_id   text        NOT NULL,
    sequence bigint      NOT NULL,
    time     timestamptz NOT NULL,
    snapshot jsonb       NOT NULL,
    PRIMARY KEY (tenant, job_id, sequence),
    FOREIGN KEY (tenant, job_id) REFERENCES job.jobs (tenant, id) ON DELETE CASCADE
);

-- migrate:down
DROP TABLE IF EXISTS job.events;
DROP TABLE IF EXISTS job.jobs;
DROP TABLE IF EXISTS job.request_ids;
