"""Settings of the Memory service: ``AGENTMESH_MEMORY_*`` variables.

Loaded by the core loader (:func:`agentmesh.core.settings.load_settings`) in the
service's entry point and passed to ``build_memory``; the settings every process shares
stay in :class:`agentmesh.core.settings.Settings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from agentmesh.core.settings import ENV_PREFIX, Check, ConfigError, load_settings
from agentmesh.memory.domain.quotas import KINDS, Quota

PREFIX: Final = ENV_PREFIX + "MEMORY_"
"""Every Memory setting's variable starts with this: ``embedder`` ⇄
``AGENTMESH_MEMORY_EMBEDDER``."""

EMBEDDERS: Final = ("hash", "minilm", "openai")
"""The embedders this build knows by name."""
MAX_SESSION_PURGE_AFTER_S: Final = 10 * 365 * 86_400
"""Longest purge window of deleted sessions; keeps ``now() + window`` a sane timestamp."""
MAX_JANITOR_INTERVAL_S: Final = 86_400
"""Longest pause between janitor passes: a day (a longer one is as good as disabled)."""
MAX_JANITOR_BATCH_SIZE: Final = 100_000
"""Largest janitor batch: bounds how long one delete transaction holds its locks."""


@dataclass(frozen=True)
class MemorySettings:
    """Everything the Memory service (and its janitor) reads from its environment."""

    embedder: str = "hash"
    """Embedder of memories: ``hash`` (deterministic, no model; dev and tests),
    ``minilm`` (local all-MiniLM-L6-v2, the ``minilm`` extra) or ``openai`` (an
    OpenAI-compatible ``/v1/embeddings`` endpoint)."""

    embedder_concurrency: int = 2
    """Embedder calls one process runs at once (the others wait): the local embedders
    are CPU work, a remote one spends a provider's quota."""

    embed_batch_max_texts: int = 64
    """Texts of concurrent calls sent to the embedder in one call at most; calls that
    arrive while every embedder slot is busy leave together (``embedders``)."""

    embed_batch_wait_ms: float = 0.0
    """How long a call may wait for others to join its batch while a slot is free;
    0: it leaves at once (batches still form while every slot is busy)."""

    tenant_concurrency: int = 16
    """Embedding and search calls (creates and searches of memories and store items) one
    tenant may have in flight on one replica; more are RESOURCE_EXHAUSTED with retry
    advice, so one tenant's burst cannot starve the others."""

    embedding_dim: int = 384
    """Dimension of stored vectors; must match the embedder and the vector column."""

    embedder_url: str | None = None
    """Base URL of the OpenAI-compatible embeddings API, e.g. ``https://api.openai.com/v1``."""

    embedder_model: str = "text-embedding-3-small"
    """Model name sent to the OpenAI-compatible embeddings API."""

    embedder_api_key: str | None = None
    """Bearer key for the OpenAI-compatible embeddings API."""

    hnsw_m: int = 16
    """pgvector HNSW ``m`` (graph degree) of the memories index."""

    hnsw_ef_construction: int = 64
    """pgvector HNSW ``ef_construction`` of the memories index."""

    hnsw_ef_search: int = 100
    """pgvector ``hnsw.ef_search`` for searches; higher is slower and more exact."""

    merge_similarity: float = 0.95
    """Cosine similarity above which a new memory updates a near-duplicate instead."""

    checkpoint_keep_latest: int = 50
    """Checkpoints kept per thread and namespace (older ones are pruned); 0 keeps all."""

    artifact_max_bytes: int = 2 * 1024 * 1024
    """Largest artifact version content, in bytes."""

    message_max_bytes: int = 256 * 1024
    """Largest message, in bytes: its parts and metadata as JSON."""

    checkpoint_max_bytes: int = 2 * 1024 * 1024
    """Largest serialized checkpoint state, in bytes (a long conversation's state is
    large; at most ``AGENTMESH_PAGE_MAX_BYTES``, so one always fits a response)."""

    checkpoint_write_max_bytes: int = 1024 * 1024
    """Largest serialized value of one pending checkpoint write, in bytes."""

    store_value_max_bytes: int = 1024 * 1024
    """Largest store item value, in bytes of JSON."""

    quota_refresh_s: float = 30.0
    """How often a replica measures a tenant's stored usage again for the storage
    quotas below (between two measurements it adds what it admitted): the quotas are
    exact at each measurement and may be overshot by what the replicas admit in one
    interval. 0 measures before every write."""

    quota_sessions_rows: int = 100_000
    """Sessions one tenant may store (deleted ones count until purged); 0: no limit.
    Each ``quota_*`` past its limit is RESOURCE_EXHAUSTED with ``QuotaFailure``."""

    quota_sessions_bytes: int = 0
    """Bytes of session labels and metadata one tenant may store; 0: no limit."""

    quota_messages_rows: int = 10_000_000
    """Messages one tenant may store; 0: no limit."""

    quota_messages_bytes: int = 10 * 1024 * 1024 * 1024
    """Bytes of messages (stored, after compression) one tenant may store; 0: no limit."""

    quota_memories_rows: int = 1_000_000
    """Long-term memories one tenant may store; 0: no limit."""

    quota_memories_bytes: int = 4 * 1024 * 1024 * 1024
    """Bytes of memories (text, metadata, vectors) one tenant may store; 0: no limit."""

    quota_store_items_rows: int = 1_000_000
    """LangGraph store items one tenant may store; 0: no limit."""

    quota_store_items_bytes: int = 4 * 1024 * 1024 * 1024
    """Bytes of store items (values, vectors) one tenant may store; 0: no limit."""

    quota_checkpoints_rows: int = 0
    """Checkpoints one tenant may store (retention bounds them per thread); 0: no limit."""

    quota_checkpoints_bytes: int = 10 * 1024 * 1024 * 1024
    """Bytes of checkpoints and pending writes one tenant may store; 0: no limit."""

    quota_artifacts_rows: int = 100_000
    """Artifact versions one tenant may store; 0: no limit."""

    quota_artifacts_bytes: int = 10 * 1024 * 1024 * 1024
    """Bytes of artifact content one tenant may store; 0: no limit."""

    working_ttl_s: int = 86_400
    """Default time to live of a session's working memory."""

    working_max_keys: int = 1000
    """Most keys one session's working memory may hold."""

    working_max_bytes: int = 1024 * 1024
    """Largest total size of one session's working memory: the sum, over its keys, of
    the key's length and its value's length as JSON, in bytes."""

    request_id_ttl_s: int = 86_400
    """How long idempotency keys (``request_id``) are remembered."""

    session_purge_after_s: int = 7 * 86_400
    """How long a deleted session is kept (soft delete, AIP-164) before the janitor
    purges it; UndeleteSession restores it until then. 0 deletes at once (no undelete)."""

    janitor_interval_s: float = 60.0
    """Seconds between two passes of the Memory janitor (purges expired memories, request
    ids and store items, and deleted sessions past their purge time); 0 disables it."""

    janitor_batch_size: int = 1000
    """Rows one janitor statement deletes at most, each batch its own transaction
    (deleted sessions go at most 100 at a time: each takes its history with it)."""

    indexer_interval_s: float = 1.0
    """Seconds the indexer waits between two looks for memories an import wrote and the
    HNSW index does not hold yet (``memory/indexer.py``; an import on this replica wakes
    it at once); 0 disables it (searches still find such memories, exactly, but never
    through the index)."""

    indexer_batch_size: int = 100
    """Memories the indexer adds to the HNSW index per statement (each costs
    PostgreSQL 1-2 ms of CPU): bounds how long one indexing transaction runs."""

    indexer_concurrency: int = 2
    """Indexing statements one replica runs at once (replicas index side by side)."""

    import_max_unindexed: int = 250_000
    """Most imported memories of one tenant that may wait for the index: an import
    beyond it is RESOURCE_EXHAUSTED with a retry delay, so a load cannot outrun the
    indexer without bound (a search reads the waiting ones exactly)."""

    def quotas(self) -> dict[str, Quota]:
        """The storage quota of each kind (``domain.quotas.KINDS``)."""
        return {
            kind: Quota(
                rows=getattr(self, f"quota_{kind}_rows"), bytes=getattr(self, f"quota_{kind}_bytes")
            )
            for kind in KINDS
        }

    def check_fits_pages(self, page_max_bytes: int) -> None:
        """Every per-item limit must fit one page (``AGENTMESH_PAGE_MAX_BYTES``): a page
        always carries at least one item, and must fit the gRPC message limit; raises
        ConfigError naming the settings that do not."""
        too_large = [
            f"{PREFIX}{name.upper()}={value}"
            for name, value in (
                ("message_max_bytes", self.message_max_bytes),
                ("checkpoint_max_bytes", self.checkpoint_max_bytes),
                ("checkpoint_write_max_bytes", self.checkpoint_write_max_bytes),
                ("store_value_max_bytes", self.store_value_max_bytes),
            )
            if value > page_max_bytes
        ]
        if too_large:
            raise ConfigError(
                f"{', '.join(too_large)}: larger than AGENTMESH_PAGE_MAX_BYTES="
                f"{page_max_bytes}; one item must fit one response page"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MemorySettings:
        """Loads ``AGENTMESH_MEMORY_*`` from ``environ`` (default: ``os.environ``); raises
        ``ConfigError`` naming every malformed or out-of-range variable."""
        return load_settings(cls, environ, prefix=PREFIX)

    def checks(self) -> list[Check]:
        """Range checks of the Memory settings."""
        return [
            (
                "embedder",
                self.embedder in EMBEDDERS,
                f"expected one of {EMBEDDERS}",
            ),
            ("embedding_dim", 1 <= self.embedding_dim <= 16_000, "expected 1-16000"),
            ("embedder_concurrency", 1 <= self.embedder_concurrency <= 64, "expected 1-64"),
            ("embed_batch_max_texts", 1 <= self.embed_batch_max_texts <= 2048, "expected 1-2048"),
            ("embed_batch_wait_ms", 0 <= self.embed_batch_wait_ms <= 100, "expected 0-100"),
            ("tenant_concurrency", 1 <= self.tenant_concurrency <= 10_000, "expected 1-10000"),
            ("hnsw_m", 2 <= self.hnsw_m <= 100, "expected 2-100"),
            (
                "hnsw_ef_construction",
                self.hnsw_ef_construction >= 2 * self.hnsw_m,
                "expected >= 2 x AGENTMESH_MEMORY_HNSW_M",
            ),
            ("hnsw_ef_search", 1 <= self.hnsw_ef_search <= 1000, "expected 1-1000"),
            (
                "merge_similarity",
                0.0 < self.merge_similarity <= 1.0,
                "expected in (0, 1]",
            ),
            ("checkpoint_keep_latest", self.checkpoint_keep_latest >= 0, ">= 0"),
            ("artifact_max_bytes", self.artifact_max_bytes > 0, "expected > 0"),
            ("message_max_bytes", self.message_max_bytes > 0, "expected > 0"),
            ("checkpoint_max_bytes", self.checkpoint_max_bytes > 0, "expected > 0"),
            ("checkpoint_write_max_bytes", self.checkpoint_write_max_bytes > 0, "expected > 0"),
            ("store_value_max_bytes", self.store_value_max_bytes > 0, "expected > 0"),
            ("working_ttl_s", self.working_ttl_s > 0, "expected > 0"),
            ("quota_refresh_s", 0 <= self.quota_refresh_s <= 3600, "expected 0-3600"),
            *(
                (f"quota_{kind}_{unit}", getattr(self, f"quota_{kind}_{unit}") >= 0, ">= 0")
                for kind in KINDS
                for unit in ("rows", "bytes")
            ),
            ("working_max_keys", self.working_max_keys > 0, "expected > 0"),
            ("working_max_bytes", self.working_max_bytes > 0, "expected > 0"),
            ("request_id_ttl_s", self.request_id_ttl_s > 0, "expected > 0"),
            (
                "session_purge_after_s",
                0 <= self.session_purge_after_s <= MAX_SESSION_PURGE_AFTER_S,
                f"expected 0-{MAX_SESSION_PURGE_AFTER_S} (10 years)",
            ),
            (
                "janitor_interval_s",
                0 <= self.janitor_interval_s <= MAX_JANITOR_INTERVAL_S,
                f"expected 0-{MAX_JANITOR_INTERVAL_S} (0 disables the janitor)",
            ),
            (
                "janitor_batch_size",
                1 <= self.janitor_batch_size <= MAX_JANITOR_BATCH_SIZE,
                f"expected 1-{MAX_JANITOR_BATCH_SIZE}",
            ),
            (
                "indexer_interval_s",
                0 <= self.indexer_interval_s <= MAX_JANITOR_INTERVAL_S,
                f"expected 0-{MAX_JANITOR_INTERVAL_S} (0 disables the indexer)",
            ),
            ("indexer_batch_size", 1 <= self.indexer_batch_size <= 10_000, "expected 1-10000"),
            ("indexer_concurrency", 1 <= self.indexer_concurrency <= 16, "expected 1-16"),
            (
                "import_max_unindexed",
                1 <= self.import_max_unindexed <= 10_000_000,
                "expected 1-10000000",
            ),
        ]
