"""The limits of one working memory (``AGENTMESH_MEMORY_WORKING_MAX_KEYS``,
``..._MAX_BYTES``).

The size of a working memory counts each client key's length plus its value's JSON, in
bytes. Two checks use these limits: ``check_limits``, before anything is stored, refuses
a request no working memory could take (INVALID_ARGUMENT); the update script
(``stores/working.py``) refuses, atomically, a merge that would take the stored working
memory over a limit (``WorkingMemoryLimitError``, RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from agentmesh.core.errors import ERROR_DOMAIN, DomainError
from agentmesh.core.validation import Violations

_LIMITS: Final = {
    "keys": ("keys", "working_memory_keys", "WorkingMemoryKeysPerSession"),
    "bytes": ("bytes", "working_memory_bytes", "WorkingMemoryBytesPerSession"),
}
"""Per dimension: the unit in messages, the quota metric and the quota id."""


class WorkingMemoryLimitError(DomainError):
    """An update would take a working memory over one of its limits.

    RESOURCE_EXHAUSTED, not INVALID_ARGUMENT: the same request fits a working memory
    that holds less, so it is the stored state that is out of room (AIP-193's quota
    case), and ``QuotaFailure`` says which limit and how far the merge would go.
    No ``RetryInfo``, unlike the core's ``ResourceExhausted``: nothing frees room on
    its own short of the whole working memory expiring, so retrying the same request
    does not help (AIP-194: RESOURCE_EXHAUSTED is not retried by default); the caller
    has to remove keys (``remove_keys``) or write less.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, name: str, dimension: str, projected: int, limit: int) -> None:
        unit, metric, quota_id = _LIMITS[dimension]
        self.violation = error_details_pb2.QuotaFailure.Violation(
            subject=name,
            description=f"{projected} {unit} after the update; at most {limit} per working memory",
            api_service=ERROR_DOMAIN,
            quota_metric=f"{ERROR_DOMAIN}/{metric}",
            quota_id=quota_id,
            quota_dimensions={"working_memory": name},
            quota_value=limit,
        )
        super().__init__(
            f"{name} would hold {projected} {unit}, over its limit of {limit}; nothing was"
            " changed: remove keys (remove_keys) or write less",
            reason="WORKING_MEMORY_LIMIT_EXCEEDED",
            metadata={
                "resource_name": name,
                "limit_name": dimension,
                "limit": str(limit),
                "projected": str(projected),
            },
        )

    def details(self) -> Sequence[Message]:
        return (error_details_pb2.QuotaFailure(violations=[self.violation]),)


def check_limits(
    pairs: Sequence[str],
    remove_keys: Sequence[str],
    violations: Violations,
    *,
    max_keys: int,
    max_bytes: int,
    field: str = "working_memory.values",
) -> None:
    """INVALID_ARGUMENT for a request that no working memory could take: what it sets
    (flat key/JSON ``pairs``) and does not remove again is over a limit by itself,
    whatever is stored."""
    removed = set(remove_keys)
    kept = [
        (key, text) for key, text in zip(pairs[::2], pairs[1::2], strict=True) if key not in removed
    ]
    if len(kept) > max_keys:
        violations.add(field, f"{len(kept)} keys; a working memory holds at most {max_keys}")
    size = sum(len(key.encode()) + len(text.encode()) for key, text in kept)
    if size > max_bytes:
        violations.add(
            field,
            f"{size} bytes of keys and JSON values; a working memory holds at most {max_bytes}",
        )
