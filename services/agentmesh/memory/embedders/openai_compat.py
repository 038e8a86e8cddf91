"""An OpenAI-compatible embeddings client: ``POST {base}/embeddings``.

Speaks the wire protocol that OpenAI, Azure-style gateways, vLLM, Ollama and
LiteLLM share: ``{"model", "input": [...], "encoding_format": "float",
"dimensions"}`` in, ``{"data": [{"index", "embedding"}]}`` out. Failures become
domain errors (see ``errors``): 429 → RESOURCE_EXHAUSTED with the provider's
``Retry-After``; 5xx, connection errors and timeouts → UNAVAILABLE; anything
else unexpected → INTERNAL naming what to fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx

from agentmesh.core.errors import ResourceExhausted
from agentmesh.memory.embedders.errors import EmbedderMisbehaved, EmbedderUnavailable

DEFAULT_RETRY_AFTER_S: Final = 1.0
"""Retry advice when a 429 carries no usable ``Retry-After``."""

MAX_INPUTS_PER_REQUEST: Final = 2048
"""OpenAI's limit of inputs in one embeddings request; larger batches are split."""


class OpenAIEmbedder:
    """Embeds through an OpenAI-compatible ``/embeddings`` endpoint."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        dimension: int,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        send_dimensions: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
            transport=transport,
        )
        self._model = model
        self._dimension = dimension
        # text-embedding-3-* return 1536/3072 floats unless asked for fewer; the
        # vector column is fixed, so we ask for exactly its size.
        self._send_dimensions = send_dimensions

    @property
    def dimension(self) -> int:
        return self._dimension

    async def aclose(self) -> None:
        """Closes the connection pool (call on shutdown)."""
        await self._client.aclose()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), MAX_INPUTS_PER_REQUEST):
            vectors.extend(await self._embed_chunk(texts[start : start + MAX_INPUTS_PER_REQUEST]))
        return vectors

    async def _embed_chunk(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        body: dict[str, Any] = {
            "model": self._model,
            "input": list(texts),
            "encoding_format": "float",
        }
        if self._send_dimensions:
            body["dimensions"] = self._dimension
        try:
            response = await self._client.post("embeddings", json=body)
        except httpx.TimeoutException:
            raise EmbedderUnavailable("embedding provider timed out") from None
        except httpx.TransportError as exc:
            raise EmbedderUnavailable(
                f"embedding provider unreachable: {type(exc).__name__}"
            ) from None
        _raise_for_status(response)
        return self._parse(response, len(texts))

    def _parse(self, response: httpx.Response, expected: int) -> list[list[float]]:
        try:
            items = response.json()["data"]
            ordered = sorted(items, key=lambda item: int(item["index"]))
            vectors = [[float(x) for x in item["embedding"]] for item in ordered]
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbedderMisbehaved(
                f"embedding provider sent a malformed response ({type(exc).__name__})"
            ) from None
        if len(vectors) != expected:
            raise EmbedderMisbehaved(
                f"embedding provider returned {len(vectors)} vectors for {expected} inputs"
            )
        return [_normalised(vector) for vector in vectors]


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    if status == 429:
        raise ResourceExhausted(
            "embedding provider quota exceeded; retry later",
            retry_after_s=retry_after_s(response.headers.get("retry-after")),
            reason="EMBEDDER_QUOTA_EXCEEDED",
        )
    if status >= 500:
        raise EmbedderUnavailable(f"embedding provider failed with HTTP {status}")
    # 400/401/403/404: our key, model or request shape is wrong. The body is not
    # echoed: providers quote parts of the key in it.
    raise EmbedderMisbehaved(
        f"embedding provider refused the request with HTTP {status}; check "
        "AGENTMESH_MEMORY_EMBEDDER_URL, _MODEL and _API_KEY"
    )


def retry_after_s(header: str | None, *, now: datetime | None = None) -> float:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not header:
        return DEFAULT_RETRY_AFTER_S
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_S
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return DEFAULT_RETRY_AFTER_S
    return max(seconds, 0.0)


def _normalised(vector: list[float]) -> list[float]:
    # The Embedder contract promises unit vectors; most providers already send them.
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0 or not math.isfinite(norm):
        return vector  # left for the dimension/finiteness check to report
    return [x / norm for x in vector]
