-- migrate:up
-- Long-term memories: text, its embedding and where it is filed (namespace path).
-- The vector size is fixed here (384: all-MiniLM-L6-v2 and the hash embedder); the
-- service refuses to start when AGENTMESH_MEMORY_EMBEDDING_DIM says otherwise.
CREATE TABLE IF NOT EXISTS memory.memories (
    tenant      text        NOT NULL,
    id          text        NOT NULL,
    namespace   text        NOT NULL,
    -- agentmesh.v1.MemoryKind numbers (1 semantic, 2 episodic, 3 procedural).
    kind        smallint    NOT NULL CHECK (kind BETWEEN 1 AND 3),
    content     text        NOT NULL,
    metadata    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    embedding   vector(384) NOT NULL,
    -- Session id (not the name) the memory came from; memories outlive sessions.
    session     text,
    expire_time timestamptz,
    merge_count integer     NOT NULL DEFAULT 0,
    version     bigint      NOT NULL DEFAULT 1,
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);

-- ListMemories: newest first with (create_time, id) keyset pagination.
CREATE INDEX IF NOT EXISTS memories_list
    ON memory.memories (tenant, create_time DESC, id DESC);

-- Namespace exact match and prefix (`LIKE 'users/u1/%'`), byte-wise whatever the
-- database collation; also serves the near-duplicate lookup of small namespaces.
CREATE INDEX IF NOT EXISTS memories_namespace
    ON memory.memories (tenant, namespace text_pattern_ops);

-- Semantic search (cosine). m / ef_construction are the defaults of the settings
-- AGENTMESH_MEMORY_HNSW_M / _EF_CONSTRUCTION; memories.ensure_hnsw_index rebuilds
-- the index at start when the settings differ.
CREATE INDEX IF NOT EXISTS memories_embedding_hnsw
    ON memory.memories USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);

-- Purging expired memories without a full scan.
CREATE INDEX IF NOT EXISTS memories_expire_time
    ON memory.memories (expire_time) WHERE expire_time IS NOT NULL;

-- migrate:down
DROP TABLE IF EXISTS memory.memories;
