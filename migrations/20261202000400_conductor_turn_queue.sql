-- migrate:up
-- Conductor: busy sessions. A message sent with busy policy ENQUEUE while a turn runs
-- is stored as a QUEUED turn (state 5) with its place in the session's queue; the
-- replica that took it starts it when the turns ahead have ended, and keeps its claim
-- on the place fresh while it waits (`queue_expire_time`): a queued turn whose replica
-- died is skipped once its claim lapsed. A turn stopped by a message with busy policy
-- INTERRUPT is STOPPED (state 6).
ALTER TABLE conductor.turns ADD COLUMN IF NOT EXISTS queue_position bigint;
ALTER TABLE conductor.turns ADD COLUMN IF NOT EXISTS queue_expire_time timestamptz;
-- The session's queue: its live queued turns in order.
CREATE INDEX IF NOT EXISTS turns_queued ON conductor.turns (tenant, session, queue_position)
    WHERE state = 5;

-- migrate:down
DROP INDEX IF EXISTS conductor.turns_queued;
ALTER TABLE conductor.turns DROP COLUMN IF EXISTS queue_expire_time;
ALTER TABLE conductor.turns DROP COLUMN IF EXISTS queue_position;
