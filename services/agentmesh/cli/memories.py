"""``agentmesh memories``: long-term semantic memories (MemoryService)."""

from __future__ import annotations

from typing import Annotated

import typer

from agentmesh.cli.common import JsonFlag, enum_label, mesh_of
from agentmesh.v1 import memory_pb2

app = typer.Typer(help="Long-term memories, searched by meaning.", no_args_is_help=True)


@app.command("search")
def search_memories(
    ctx: typer.Context,
    query: Annotated[
        str, typer.Argument(metavar="QUERY", help="What to look for, in natural language.")
    ],
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace", help="Only under this namespace path, e.g. users/u1 (segment-wise)."
        ),
    ] = "",
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=100, help="How many results, 1-100.")
    ] = 10,
    json_lines: JsonFlag = False,
) -> None:
    """Search memories by meaning, best first (the service embeds the query)."""
    mesh = mesh_of(ctx, json_lines)
    response = mesh.call(
        mesh.memory.SearchMemories,
        memory_pb2.SearchMemoriesRequest(text=query, namespace_prefix=namespace, top_k=limit),
    )
    out = mesh.output
    if out.json_lines:
        for hit in response.results:
            out.message(hit)
    else:
        out.table(
            ("SCORE", "NAME", "NAMESPACE", "KIND", "CONTENT"),
            [
                (
                    f"{hit.score:.3f}",
                    hit.memory.name,
                    hit.memory.namespace,
                    enum_label(memory_pb2.MemoryKind.Name(hit.memory.kind), "MEMORY_KIND_").lower(),
                    hit.memory.content,
                )
                for hit in response.results
            ],
        )
    if response.truncated:
        out.note("agentmesh: more hits were left out (too large); ask for fewer with --limit")
