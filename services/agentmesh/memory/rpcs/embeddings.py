"""MemoryService RPCs: embeddings on request (EmbedTexts).

Other services compare texts in the vector space of memory search (the Conductor
routes a message to the agent whose card is closest): they ask for vectors of the
embedder this service is configured with instead of running one of their own, so
both always agree on the model and the dimension. Nothing is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from agentmesh.core.contract import ServicerContext
from agentmesh.core.offload import convert_sized
from agentmesh.core.validation import Violations
from agentmesh.memory.embedders import embed_checked
from agentmesh.memory.rpc import RpcGroup, expensive
from agentmesh.memory.settings import MemorySettings
from agentmesh.v1 import memory_pb2

MAX_TEXTS: Final = 64
"""Texts one EmbedTexts call embeds at most."""
MAX_TEXT_CHARS: Final = 4096
"""Longest text, in characters."""
MAX_TOTAL_CHARS: Final = 65_536
"""Longest sum of a call's texts, in characters."""


def validate_texts(texts: Sequence[str]) -> list[str]:
    """The texts to embed, or INVALID_ARGUMENT naming every bad one."""
    violations = Violations()
    if not texts:
        violations.add("texts", "required: 1 to 64 texts")
    elif len(texts) > MAX_TEXTS:
        violations.add("texts", f"at most {MAX_TEXTS} texts, got {len(texts)}")
    else:
        for i, text in enumerate(texts):
            violations.text(text, f"texts[{i}]", required=False, max_chars=MAX_TEXT_CHARS)
        total = sum(len(text) for text in texts)
        if not violations and total > MAX_TOTAL_CHARS:
            violations.add("texts", f"{total} characters in all; at most {MAX_TOTAL_CHARS}")
    violations.raise_if_any()
    return list(texts)


def embedder_name(settings: MemorySettings) -> str:
    """How the configured embedder is told to callers: its name, and the model of a
    remote one (``openai:text-embedding-3-small``)."""
    if settings.embedder == "openai":
        return f"openai:{settings.embedder_model}"
    return settings.embedder


class EmbeddingRpcs(RpcGroup):
    """Vectors of texts from the service's embedder."""

    @expensive
    async def EmbedTexts(
        self, request: memory_pb2.EmbedTextsRequest, context: ServicerContext
    ) -> memory_pb2.EmbedTextsResponse:
        texts = validate_texts(request.texts)
        dimension = self.deps.settings.embedding_dim
        vectors = await embed_checked(self.deps.embedder, texts, dimension)

        def build() -> memory_pb2.EmbedTextsResponse:
            return memory_pb2.EmbedTextsResponse(
                embeddings=[memory_pb2.Vector(values=vector) for vector in vectors],
                embedder=embedder_name(self.deps.settings),
                dimension=dimension,
            )

        # About 4 bytes a component on the wire; dozens of 384-dim vectors stay inline.
        return await convert_sized(build, 4 * dimension * len(vectors))
