-- migrate:up
-- Soft delete of sessions (AIP-164): DeleteSession sets `delete_time` and
-- `purge_time` (delete_time + AGENTMESH_MEMORY_SESSION_PURGE_AFTER_S) and keeps the
-- row, its messages and its threads' checkpoints; UndeleteSession clears both before
-- the purge time; the Memory janitor purges rows whose purge time has passed. Both
-- are NULL while the session is live.
ALTER TABLE memory.sessions
    ADD COLUMN IF NOT EXISTS delete_time timestamptz,
    ADD COLUMN IF NOT EXISTS purge_time timestamptz;
ALTER TABLE memory.sessions
    ADD CONSTRAINT sessions_deleted_until_purged
    CHECK ((delete_time IS NULL) = (purge_time IS NULL) AND purge_time >= delete_time);
-- The janitor's batches: deleted sessions in purge order (a small index: only the
-- deleted rows are in it).
CREATE INDEX IF NOT EXISTS sessions_purge_time
    ON memory.sessions (purge_time) WHERE purge_time IS NOT NULL;
-- "Is this thread's session deleted?", asked by the checkpoint RPCs for every thread
-- they read or write: a probe into the deleted rows only.
CREATE INDEX IF NOT EXISTS sessions_deleted
    ON memory.sessions (tenant, id) WHERE delete_time IS NOT NULL;

-- migrate:down
-- Code before this migration knows no deleted sessions and would serve them as live:
-- purge them now, as the janitor would at their purge time, with the checkpoints of
-- their threads (`<id>` or `<id>:...`). Their messages go with them (ON DELETE
-- CASCADE); their working memory (Redis) expires on its own TTL, and a session
-- created later with the same id ignores it (it is stamped with the old create time).
DELETE FROM memory.checkpoint_writes AS w USING memory.sessions AS s
    WHERE s.delete_time IS NOT NULL AND w.tenant = s.tenant
      AND (w.thread_id = s.id COLLATE "C" OR w.thread_id LIKE s.id || ':%' COLLATE "C");
DELETE FROM memory.checkpoints AS c USING memory.sessions AS s
    WHERE s.delete_time IS NOT NULL AND c.tenant = s.tenant
      AND (c.thread_id = s.id COLLATE "C" OR c.thread_id LIKE s.id || ':%' COLLATE "C");
DELETE FROM memory.sessions WHERE delete_time IS NOT NULL;
DROP INDEX IF EXISTS memory.sessions_deleted;
DROP INDEX IF EXISTS memory.sessions_purge_time;
ALTER TABLE memory.sessions DROP CONSTRAINT IF EXISTS sessions_deleted_until_purged;
ALTER TABLE memory.sessions
    DROP COLUMN IF EXISTS purge_time,
    DROP COLUMN IF EXISTS delete_time;
