"""The artifacts tool of model-backed agents: save a named text artifact, read one back,
list them, in the caller's tenant, through the Memory service's artifact RPCs (with the
caller's credential, as recall's search).

Every argument the model gives is checked with the core validator before anything is
sent: the action one of save/read/list, the name an artifact id (1-63 characters of
``a-z0-9-``, starting with a letter), the content present, without NUL, at most
:data:`MAX_CONTENT_BYTES`. A bad argument, or Memory refusing the call (no such
artifact, the content over Memory's own size limit, the tenant's quota), becomes the
tool's answer, starting with ``error:``, so the model can correct itself and the run
goes on. Memory out of reach fails the run (UNAVAILABLE), as for recall.
"""

from __future__ import annotations

from typing import Final, Literal

import grpc
from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from agentmesh.agent.resources import AgentResources
from agentmesh.core.errors import FailedPrecondition, Unavailable
from agentmesh.core.names import ARTIFACTS, validate_id
from agentmesh.core.validation import Violations
from agentmesh.langgraph._client import MemoryClient
from agentmesh.v1 import memory_pb2

MAX_NAME_CHARS: Final = 63
"""Longest artifact id (AIP-122, as Memory takes it)."""
MAX_CONTENT_BYTES: Final = 256 * 1024
"""Largest content a model may save, in UTF-8 bytes (Memory's own limit,
``AGENTMESH_MEMORY_ARTIFACT_MAX_BYTES``, may be lower and is enforced there too)."""
MAX_READ_CHARS: Final = 32_000
"""Longest content read back into the conversation; a longer one is cut, and said so."""
LIST_PAGE_SIZE: Final = 50
"""Artifacts listed at most."""
MAX_ERROR_CHARS: Final = 300
"""Longest error from Memory passed to the model."""
MEDIA_TYPE: Final = "text/plain"
"""Media type of what the tool saves."""
TOOL_NAME: Final = "artifacts"

_TOLD_TO_THE_MODEL: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
"""Memory's refusals that the model can act on (another name, shorter content)."""
_OUT_OF_REACH: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

Action = Literal["save", "read", "list"]


class ArtifactsArgs(BaseModel):
    """The tool's arguments, as the model sees them."""

    action: Action = Field(
        description="save: store content under a name (a new version if it exists);"
        " read: get an artifact's latest content; list: the artifacts that exist."
    )
    name: str = Field(
        default="",
        description="The artifact's id, for save and read: 1-63 characters of a-z, 0-9"
        " and '-', starting with a letter, e.g. trip-plan.",
    )
    content: str = Field(default="", description="The text to save (save only).")


def check_arguments(action: str, name: str, content: str) -> list[tuple[str, str]]:
    """The problems of the model's arguments, each ``(argument, why)``; none: valid."""
    violations = Violations()
    if action not in ("save", "read", "list"):
        violations.add("action", "one of save, read, list")
    if action in ("save", "read"):
        violations.text(name, "name", required=True, max_chars=MAX_NAME_CHARS)
        if not violations:
            violations.check(lambda: validate_id(name, field="name"))
    if action == "save":
        if not content:
            violations.add("content", "required: the text to save")
        violations.text_bytes(content, "content", max_bytes=MAX_CONTENT_BYTES)
    return violations.items


async def _save(memory: MemoryClient, name: str, content: str) -> str:
    saved = await memory.call(
        memory.stub.PutArtifact,
        memory_pb2.PutArtifactRequest(
            artifact=memory_pb2.Artifact(
                name=ARTIFACTS.format(name), media_type=MEDIA_TYPE, text=content
            )
        ),
    )
    return f"saved {saved.name} version {saved.version} ({saved.size_bytes} bytes)"


async def _read(memory: MemoryClient, name: str) -> str:
    found = await memory.call(
        memory.stub.GetArtifact, memory_pb2.GetArtifactRequest(name=ARTIFACTS.format(name))
    )
    head = f"{found.name} version {found.version} ({found.media_type}, {found.size_bytes} bytes)"
    if found.WhichOneof("content") != "text":
        return f"{head}: binary content, not shown"
    if len(found.text) > MAX_READ_CHARS:
        return f"{head}, first {MAX_READ_CHARS} characters:\n{found.text[:MAX_READ_CHARS]}"
    return f"{head}:\n{found.text}"


async def _list(memory: MemoryClient) -> str:
    page = await memory.call(
        memory.stub.ListArtifacts, memory_pb2.ListArtifactsRequest(page_size=LIST_PAGE_SIZE)
    )
    if not page.artifacts:
        return "no artifacts"
    lines = [
        f"- {a.name} version {a.version} ({a.media_type}, {a.size_bytes} bytes)"
        for a in page.artifacts
    ]
    if page.next_page_token:
        lines.append(f"(the first {LIST_PAGE_SIZE} only)")
    return "\n".join(lines)


def artifacts_tool(resources: AgentResources) -> BaseTool:
    """The tool, for model-backed agents; see the module docstring."""

    async def artifacts(action: str, name: str = "", content: str = "") -> str:
        problems = check_arguments(action, name, content)
        if problems:
            return "error: " + "; ".join(f"{field}: {why}" for field, why in problems)
        memory = resources.memory
        if memory is None:
            raise FailedPrecondition(
                "NO_MEMORY",
                "the artifacts tool needs the Memory service: set AGENTMESH_MEMORY_ADDR",
            )
        try:
            if action == "save":
                return await _save(memory, name, content)
            if action == "read":
                return await _read(memory, name)
            return await _list(memory)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in _TOLD_TO_THE_MODEL:
                return f"error: {_clip(exc.details() or exc.code().name)}"
            if exc.code() in _OUT_OF_REACH:
                raise Unavailable(
                    "the Memory service did not answer the artifacts tool",
                    reason="MEMORY_UNAVAILABLE",
                ) from exc
            raise

    return StructuredTool.from_function(
        coroutine=artifacts,
        name=TOOL_NAME,
        description=(
            "Saves a named text artifact (a note, a plan, a draft) for the user, reads one"
            " back, or lists them. Artifacts last beyond this conversation."
        ),
        args_schema=ArtifactsArgs,
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
