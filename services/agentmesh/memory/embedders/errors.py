# The names mirror the gRPC codes they stand for, like agentmesh.core.errors.
# ruff: noqa: N818
"""Errors of embedding providers: never the client's fault, so never INVALID_ARGUMENT.

A provider that is down or slow is UNAVAILABLE (the client may retry with backoff);
one that answers nonsense (wrong dimension, malformed body) or refuses our own
credentials/model is INTERNAL with a message an operator can act on, because no
retry by the client will fix a misconfiguration. Quota (HTTP 429) is
``ResourceExhausted`` from the core, with the provider's retry advice.
"""

from __future__ import annotations

import grpc

from agentmesh.core.errors import DomainError


class EmbedderUnavailable(DomainError):
    """The embedding provider cannot answer now (5xx, connection refused, timeout)."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="EMBEDDER_UNAVAILABLE")


class EmbedderMisbehaved(DomainError):
    """The provider answered, but not with what we need: wrong vector dimension,
    malformed body, or a refusal of the server's own request (bad key or model)."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="EMBEDDER_MISBEHAVED")
