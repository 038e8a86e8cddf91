"""Resource names (AIP-122): parsing and validation shared by every service.

A name is a fixed collection segment followed by an id, e.g. ``sessions/s-1``.
Parsing a malformed name raises ``InvalidArgument`` naming the request field, so a
client mistake never reaches storage as a bad key.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Final

from agentmesh.core.errors import InvalidArgument

# RFC 1034 label, as AIP-122 recommends for user-chosen ids: a lower-case letter,
# then lower-case letters, digits and hyphens, not ending in a hyphen, ≤ 63 chars.
ID_PATTERN: Final = re.compile(r"^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")
ID_RULE: Final = (
    "must be 1-63 characters of a-z, 0-9 and '-', start with a letter and not end with '-'"
)


@dataclass(frozen=True, slots=True)
class ResourcePattern:
    """A single-level resource name pattern such as ``sessions/{session}``."""

    collection: str
    """The collection segment, e.g. ``sessions``."""
    resource_type: str
    """The type used in ``ResourceInfo``, e.g. ``agentmesh.dev/Session``."""

    def parse(self, name: str, *, field: str = "name") -> str:
        """Returns the id of ``name``; raises InvalidArgument naming ``field`` if malformed."""
        prefix = self.collection + "/"
        if not name:
            raise InvalidArgument(field, f"required: a name of the form {prefix}{{id}}")
        if not name.startswith(prefix):
            raise InvalidArgument(field, f"{name!r} is not of the form {prefix}{{id}}")
        resource_id = name[len(prefix) :]
        validate_id(resource_id, field=field)
        return resource_id

    def format(self, resource_id: str) -> str:
        """Builds the name of ``resource_id``."""
        return f"{self.collection}/{resource_id}"


def validate_id(resource_id: str, *, field: str) -> str:
    """Checks a client-chosen id against ``ID_PATTERN``; returns it unchanged."""
    if not ID_PATTERN.fullmatch(resource_id):
        raise InvalidArgument(field, f"id {resource_id!r} {ID_RULE}")
    return resource_id


def new_id() -> str:
    """A fresh server-generated id that satisfies ``ID_PATTERN`` (a letter, then hex)."""
    return "r" + uuid.uuid4().hex


SESSIONS: Final = ResourcePattern("sessions", "agentmesh.dev/Session")
MEMORIES: Final = ResourcePattern("memories", "agentmesh.dev/Memory")
DECISIONS: Final = ResourcePattern("decisions", "agentmesh.dev/Decision")
ARTIFACTS: Final = ResourcePattern("artifacts", "agentmesh.dev/Artifact")
AGENTS: Final = ResourcePattern("agents", "agentmesh.dev/Agent")
JOBS: Final = ResourcePattern("jobs", "agentmesh.dev/Job")
