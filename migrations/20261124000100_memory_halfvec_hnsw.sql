-- migrate:up
-- The HNSW index holds each embedding in half precision (pgvector halfvec): half the
-- index size and memory traffic of full-precision vectors, the same recall@10 within
-- 0.005 at 100k x 384 (docs/benchmarks.md). Rows keep full precision; scores are
-- computed from them. Searches reach this index by ordering by
-- `embedding::halfvec(384) <=> $q::halfvec(384)` (memories.nearest).
-- m / ef_construction are the defaults of AGENTMESH_MEMORY_HNSW_M / _EF_CONSTRUCTION;
-- memories.ensure_hnsw_index rebuilds the index at start when the settings differ.
DROP INDEX IF EXISTS memory.memories_embedding_hnsw;
CREATE INDEX IF NOT EXISTS memories_embedding_hnsw
    ON memory.memories USING hnsw ((embedding::halfvec(384)) halfvec_cosine_ops)
    WITH (m = 16, ef_construction = 64);

-- migrate:down
DROP INDEX IF EXISTS memory.memories_embedding_hnsw;
CREATE INDEX IF NOT EXISTS memories_embedding_hnsw
    ON memory.memories USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);
