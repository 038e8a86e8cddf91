-- migrate:up
-- A random id per incarnation of a session: a session id can be deleted and created
-- again, and its `version` then starts over at 1, so the version alone (the etag so
-- far) let an etag read from the old session match the new one. The etag now carries
-- both. Adding the column gives every existing row its own value (the default is
-- volatile, so PostgreSQL rewrites the table once).
ALTER TABLE memory.sessions
    ADD COLUMN IF NOT EXISTS incarnation uuid NOT NULL DEFAULT gen_random_uuid();
COMMENT ON COLUMN memory.sessions.incarnation IS
    'random per incarnation of the id; the etag is "<version>-<incarnation hex>"';

-- migrate:down
ALTER TABLE memory.sessions DROP COLUMN IF EXISTS incarnation;
