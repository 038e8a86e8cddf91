-- One PostgreSQL schema per stateful service; each service reads and writes only its
-- own schema, and other services reach that data through its RPCs. The Agent service
-- keeps no state of its own (its LangGraph checkpoints live in Memory), so it has no
-- schema. Tables come in later, numbered migrations; this file is never edited once
-- shipped: corrections go in a new migration.

-- migrate:up
-- pgvector, for Memory's semantic memories. Database-wide (extensions are not
-- per-schema objects); the types live in `public`, which every role can use.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE SCHEMA IF NOT EXISTS memory;
COMMENT ON SCHEMA memory IS 'Memory service: sessions, messages, semantic memories, decisions, artifacts, LangGraph checkpoints';

CREATE SCHEMA IF NOT EXISTS job;
COMMENT ON SCHEMA job IS 'Job service: durable job records, progress and attempts';

CREATE SCHEMA IF NOT EXISTS conductor;
COMMENT ON SCHEMA conductor IS 'Conductor service: conversation routing state';

-- migrate:down
-- RESTRICT (the default): rolling back this migration must follow the rollback of the
-- migrations that created tables in these schemas, never silently drop their data.
DROP SCHEMA IF EXISTS conductor RESTRICT;
DROP SCHEMA IF EXISTS job RESTRICT;
DROP SCHEMA IF EXISTS memory RESTRICT;
DROP EXTENSION IF EXISTS vector RESTRICT;
