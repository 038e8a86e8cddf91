"""``agentmesh memories``: long-term semantic memories (MemoryService)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Final, cast

import grpc
import typer
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.cli.common import JsonFlag, enum_label, mesh_of
from agentmesh.cli.errors import CliError, code_of
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


IMPORT_SLICE_MAX: Final = 1000
"""Most memories one ImportMemories call takes."""
IMPORT_RETRIES: Final = 30
"""How many times one slice is sent again after RESOURCE_EXHAUSTED (the tenant's
imported memories wait for the index) or UNAVAILABLE, each after the server's delay."""


def read_memories(path: Path, namespace: str) -> Iterator[memory_pb2.Memory]:
    """The memories of a JSON Lines file, one ``Memory`` per line in the API's JSON
    (``{"namespace": "...", "content": "...", "kind": "MEMORY_KIND_SEMANTIC",
    "metadata": {...}, "embedding": [...]}``); ``namespace`` fills it in where a line
    has none. Blank lines are skipped; a bad line is a :class:`CliError` naming it."""
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            memory = memory_pb2.Memory()
            try:
                json_format.Parse(line, memory)
            except json_format.ParseError as exc:
                raise CliError(f"{path}:{number}: not a memory in JSON: {exc}") from None
            if not memory.namespace:
                if not namespace:
                    raise CliError(f"{path}:{number}: no namespace (give --namespace)")
                memory.namespace = namespace
            yield memory


def slices(memories: Iterable[memory_pb2.Memory], size: int) -> Iterator[list[memory_pb2.Memory]]:
    """``memories`` in lists of ``size`` (the last one shorter)."""
    batch: list[memory_pb2.Memory] = []
    for memory in memories:
        batch.append(memory)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def slice_request(batch: list[memory_pb2.Memory]) -> memory_pb2.ImportMemoriesRequest:
    """The call of one slice. Its ``request_id`` is the digest of the slice's bytes, so
    an import run again after a failure (the same file, the same slice size) skips the
    slices that were stored already instead of storing them twice."""
    request = memory_pb2.ImportMemoriesRequest(memories=batch)
    digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
    request.request_id = f"import-{digest[:40]}"
    return request


def _retry_delay_s(error: grpc.RpcError) -> float | None:
    """The server's delay when ``error`` may be retried (RESOURCE_EXHAUSTED with a
    RetryInfo, UNAVAILABLE), else None."""
    code = code_of(error)
    if code not in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        return None
    status = rpc_status.from_call(cast(grpc.Call, error))
    for detail in status.details if status else ():
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return 1.0 if code == grpc.StatusCode.UNAVAILABLE else None


@app.command("import")
def import_memories(
    ctx: typer.Context,
    path: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="JSON Lines: one memory per line, as the API writes it (content, namespace,"
            " kind, metadata, optional embedding).",
        ),
    ],
    namespace: Annotated[
        str, typer.Option("--namespace", help="Namespace of the lines that name none.")
    ] = "",
    slice_size: Annotated[
        int,
        typer.Option(
            "--slice-size", min=1, max=IMPORT_SLICE_MAX, help="Memories per call, 1-1000."
        ),
    ] = 500,
    json_lines: JsonFlag = False,
) -> None:
    """Load a corpus of memories in slices (ImportMemories): each slice is stored at
    once and joins the vector index in the background. Safe to run again after a
    failure: slices stored already are recognised and not stored twice."""
    mesh = mesh_of(ctx, json_lines)
    out = mesh.output
    started = time.monotonic()
    sent = imported = merged = 0
    for batch in slices(read_memories(path, namespace), slice_size):
        request = slice_request(batch)
        for attempt in range(IMPORT_RETRIES + 1):
            try:
                response = mesh.call(mesh.memory.ImportMemories, request)
                break
            except grpc.RpcError as error:
                delay_s = _retry_delay_s(error)
                if delay_s is None or attempt == IMPORT_RETRIES:
                    raise
                time.sleep(min(delay_s, 30.0))
        sent += len(batch)
        imported += response.imported_count
        merged += response.merged_count
        if not out.json_lines:
            out.note(f"agentmesh: {sent} sent, {imported} stored, {merged} merged")
    elapsed_s = time.monotonic() - started
    summary = memory_pb2.ImportMemoriesResponse(imported_count=imported, merged_count=merged)
    if out.json_lines:
        out.message(summary)
    else:
        rate = sent / elapsed_s if elapsed_s > 0 else 0.0
        out.line(
            f"{sent} memories read, {imported} stored, {merged} merged into near-duplicates"
            f" of the same slice, in {elapsed_s:.1f} s ({rate:.0f}/s)"
        )
