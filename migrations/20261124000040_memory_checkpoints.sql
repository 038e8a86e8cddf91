-- migrate:up
-- LangGraph persistence behind MemoryService: checkpoints, their pending writes, and
-- the long-term store. Every row carries the caller's tenant; every key starts with it.
--
-- Identifiers are COLLATE "C": LangGraph orders checkpoints by comparing their ids as
-- strings and replays writes sorted by (task_path, task_id, idx) the way Python sorts
-- strings (by code point). A linguistic collation would order them differently.

-- One row per checkpoint. The checkpoint itself is opaque (LangGraph's serializer
-- wrote it; `type` is the serializer's tag); only its metadata is read, by filters.
CREATE TABLE IF NOT EXISTS memory.checkpoints (
    tenant               text COLLATE "C" NOT NULL,
    thread_id            text COLLATE "C" NOT NULL,
    checkpoint_ns        text COLLATE "C" NOT NULL DEFAULT '',
    checkpoint_id        text COLLATE "C" NOT NULL,
    parent_checkpoint_id text COLLATE "C",
    type                 text        NOT NULL,
    checkpoint           bytea       NOT NULL,
    metadata             jsonb       NOT NULL DEFAULT '{}',
    -- DeleteCheckpointsForRuns finds checkpoints by the run that wrote them.
    run_id               text GENERATED ALWAYS AS (metadata ->> 'run_id') STORED,
    create_time          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, thread_id, checkpoint_ns, checkpoint_id)
);
CREATE INDEX IF NOT EXISTS checkpoints_run_id
    ON memory.checkpoints (tenant, run_id) WHERE run_id IS NOT NULL;
-- Listing every thread of a tenant (no thread given) newest first.
CREATE INDEX IF NOT EXISTS checkpoints_tenant_checkpoint_id
    ON memory.checkpoints (tenant, checkpoint_id DESC);

-- Intermediate writes of tasks, linked to a checkpoint. No foreign key on purpose:
-- LangGraph may store a checkpoint's writes before the checkpoint itself (durability
-- "async"/"exit" submit both concurrently), so a write may briefly precede its row.
CREATE TABLE IF NOT EXISTS memory.checkpoint_writes (
    tenant        text COLLATE "C" NOT NULL,
    thread_id     text COLLATE "C" NOT NULL,
    checkpoint_ns text COLLATE "C" NOT NULL DEFAULT '',
    checkpoint_id text COLLATE "C" NOT NULL,
    task_id       text COLLATE "C" NOT NULL,
    idx           integer     NOT NULL,
    channel       text        NOT NULL,
    type          text        NOT NULL,
    value         bytea       NOT NULL,
    task_path     text COLLATE "C" NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);

-- The LangGraph store: JSON documents under a namespace path, shared across threads.
CREATE TABLE IF NOT EXISTS memory.store_items (
    tenant      text COLLATE "C"   NOT NULL,
    namespace   text[] COLLATE "C" NOT NULL,
    key         text COLLATE "C"   NOT NULL,
    value       jsonb        NOT NULL,
    -- Embedding of the indexed text; NULL when the item is not indexed.
    embedding   vector(384),
    create_time timestamptz  NOT NULL DEFAULT now(),
    update_time timestamptz  NOT NULL DEFAULT now(),
    -- Time to live as given, so a read can push expire_time forward again.
    ttl         interval,
    expire_time timestamptz,
    PRIMARY KEY (tenant, namespace, key),
    CHECK (cardinality(namespace) >= 1),
    CHECK ((ttl IS NULL) = (expire_time IS NULL))
);
-- Expired items are invisible at once and swept lazily by later writes.
CREATE INDEX IF NOT EXISTS store_items_expire_time
    ON memory.store_items (tenant, expire_time) WHERE expire_time IS NOT NULL;

-- migrate:down
DROP TABLE IF EXISTS memory.store_items;
DROP TABLE IF EXISTS memory.checkpoint_writes;
DROP TABLE IF EXISTS memory.checkpoints;
