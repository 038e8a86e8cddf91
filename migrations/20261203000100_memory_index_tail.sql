-- migrate:up
-- Bulk import: memories written by ImportMemories are stored at once, durably, and
-- added to the HNSW index afterwards by the Memory service's indexer (a background
-- task of every replica), so a load runs at COPY speed instead of at the speed of one
-- HNSW insert per row. `indexed` says whether the HNSW index holds the row: the index
-- becomes partial (`WHERE indexed`), and searches and near-duplicate lookups read the
-- unindexed tail exactly, through the partial index below, so nothing written is
-- missing from a search during a load.
ALTER TABLE memory.memories ADD COLUMN IF NOT EXISTS indexed boolean NOT NULL DEFAULT true;
-- The HNSW index rebuilt with the predicate (m / ef_construction: the settings'
-- defaults; memory_index.ensure_hnsw_index rebuilds it CONCURRENTLY when the settings
-- differ). On a large table this blocks writes while it builds (about 40 s per
-- 100,000 memories of 384 dimensions on two cores).
DROP INDEX IF EXISTS memory.memories_embedding_hnsw;
CREATE INDEX IF NOT EXISTS memories_embedding_hnsw
    ON memory.memories USING hnsw ((embedding::halfvec(384)) halfvec_cosine_ops)
    WITH (m = 16, ef_construction = 64) WHERE indexed;
-- The unindexed tail: per tenant and namespace for reads, in creation order for the
-- indexer (both small: a row leaves it once indexed).
CREATE INDEX IF NOT EXISTS memories_unindexed
    ON memory.memories (tenant, namespace text_pattern_ops) WHERE NOT indexed;
CREATE INDEX IF NOT EXISTS memories_unindexed_order
    ON memory.memories (create_time) WHERE NOT indexed;

-- migrate:down
DROP INDEX IF EXISTS memory.memories_embedding_hnsw;
CREATE INDEX IF NOT EXISTS memories_embedding_hnsw
    ON memory.memories USING hnsw ((embedding::halfvec(384)) halfvec_cosine_ops)
    WITH (m = 16, ef_construction = 64);
DROP INDEX IF EXISTS memory.memories_unindexed_order;
DROP INDEX IF EXISTS memory.memories_unindexed;
ALTER TABLE memory.memories DROP COLUMN IF EXISTS indexed;
