"""Per-tenant storage quotas of the Memory service: which kinds of stored data are
counted, and the rule that admits a write or refuses it.

Quotas are in rows and bytes per tenant and kind (``AGENTMESH_MEMORY_QUOTA_<KIND>_ROWS``
/ ``_BYTES``, 0 for no limit). Bytes are what the data takes in storage (PostgreSQL's
``pg_column_size``: after compression), measured per tenant; a write is admitted when
the usage plus what it adds stays within the quota. A refused write is
RESOURCE_EXHAUSTED with ``QuotaFailure`` naming the quota, its limit and the usage; no
``RetryInfo``: room comes back only when the tenant deletes data (or it expires), so
retrying the same write does not help (AIP-194).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from agentmesh.core.errors import ERROR_DOMAIN, DomainError

KINDS: Final = ("sessions", "messages", "memories", "store_items", "checkpoints", "artifacts")
"""The kinds of stored data with quotas of their own."""
_QUOTA_IDS: Final = {
    "sessions": "Sessions",
    "messages": "Messages",
    "memories": "Memories",
    "store_items": "StoreItems",
    "checkpoints": "Checkpoints",
    "artifacts": "Artifacts",
}


@dataclass(frozen=True, slots=True)
class Usage:
    """What a tenant stores of one kind: rows and bytes."""

    rows: int
    bytes: int

    def plus(self, rows: int, size: int) -> Usage:
        return Usage(self.rows + rows, self.bytes + size)


@dataclass(frozen=True, slots=True)
class Quota:
    """The limits of one kind; 0 means no limit."""

    rows: int
    bytes: int

    @property
    def unlimited(self) -> bool:
        return self.rows == 0 and self.bytes == 0


class QuotaExceededError(DomainError):
    """A write would take a tenant's stored data of one kind over its quota."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, kind: str, unit: str, usage: int, adding: int, limit: int) -> None:
        quota_id = f"{_QUOTA_IDS[kind]}{'Rows' if unit == 'rows' else 'Bytes'}PerTenant"
        self.violation = error_details_pb2.QuotaFailure.Violation(
            subject=f"{kind}:{unit}",
            description=(
                f"this tenant stores {usage} {unit} of {kind}; this write adds {adding},"
                f" over the quota of {limit}"
            ),
            api_service=ERROR_DOMAIN,
            quota_metric=f"{ERROR_DOMAIN}/memory_{kind}_{unit}",
            quota_id=quota_id,
            quota_dimensions={"kind": kind},
            quota_value=limit,
        )
        super().__init__(
            f"storage quota exceeded: {kind} would hold {usage + adding} {unit}, over this"
            f" tenant's quota of {limit}; nothing was written: delete {kind} to make room",
            reason="TENANT_QUOTA_EXCEEDED",
            metadata={"kind": kind, "unit": unit, "limit": str(limit), "usage": str(usage)},
        )

    def details(self) -> Sequence[Message]:
        return (error_details_pb2.QuotaFailure(violations=[self.violation]),)


def admit(kind: str, usage: Usage, quota: Quota, *, rows: int, size: int) -> None:
    """Raises :class:`QuotaExceededError` when adding ``rows`` and ``size`` bytes to
    ``usage`` goes over ``quota``. A write that adds nothing of a unit is not refused
    for that unit, so a tenant at its quota can still update and delete."""
    if quota.rows and rows and usage.rows + rows > quota.rows:
        raise QuotaExceededError(kind, "rows", usage.rows, rows, quota.rows)
    if quota.bytes and size and usage.bytes + size > quota.bytes:
        raise QuotaExceededError(kind, "bytes", usage.bytes, size, quota.bytes)
