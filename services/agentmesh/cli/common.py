"""Helpers every command group shares: the invocation's mesh, names, times, content."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, cast

import typer
from google.protobuf import timestamp_pb2

from agentmesh.cli.mesh import Invocation, Mesh
from agentmesh.cli.output import value_json
from agentmesh.v1 import common_pb2

JsonFlag = Annotated[
    bool,
    typer.Option(
        "--json",
        help="One JSON object per line (protobuf's JSON mapping); same as the global --json.",
    ),
]
"""``--json`` on a command, so it works after the command as well as before it."""


def mesh_of(ctx: typer.Context, json_lines: bool = False) -> Mesh:
    """The invocation's mesh, set up by the root command's options."""
    mesh = cast(Invocation, ctx.find_root().obj).mesh
    if mesh is None:  # the root callback always runs first
        raise RuntimeError("the root command's options were not processed")
    if json_lines:
        mesh.output.json_lines = True
    return mesh


def resource_name(collection: str, value: str) -> str:
    """``value`` as a resource name: ``echo`` → ``agents/echo``; a full name is kept."""
    return value if value.startswith(f"{collection}/") else f"{collection}/{value}"


def when(timestamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp as RFC 3339 (UTC, seconds); empty when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return ""
    return timestamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def part_text(part: common_pb2.Part) -> str:
    """One content part as a person reads it."""
    kind = part.WhichOneof("kind")
    if kind == "text":
        return part.text
    if kind == "data":
        return value_json(part.data)
    if kind == "uri":
        return part.uri
    if kind == "blob":
        return f"<{len(part.blob)} bytes {part.media_type or 'binary'}>"
    return ""


def enum_label(full_name: str, prefix: str) -> str:
    """``JOB_STATE_RUNNING`` → ``RUNNING``."""
    return full_name.removeprefix(prefix)
