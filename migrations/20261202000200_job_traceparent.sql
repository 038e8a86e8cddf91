-- migrate:up
-- The W3C trace context of the call that created (or last resumed or retried) a job:
-- each message for the job carries it, so the worker's attempt and the agent run it
-- drives join the caller's trace, even when the sweeper sends the message later.
ALTER TABLE job.jobs ADD COLUMN IF NOT EXISTS traceparent text NOT NULL DEFAULT '';

-- migrate:down
ALTER TABLE job.jobs DROP COLUMN IF EXISTS traceparent;
