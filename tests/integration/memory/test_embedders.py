"""The embedders against real counterparts: the OpenAI-compatible client against a
local HTTP server speaking the ``/embeddings`` wire protocol (the client code runs
unchanged: real sockets, real HTTP), and ``build_embedder``'s start-up checks."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import grpc
import pytest

from agentmesh.core.errors import ResourceExhausted
from agentmesh.core.settings import ConfigError
from agentmesh.memory.embedders import (
    BatchingEmbedder,
    EmbedderMisbehaved,
    EmbedderUnavailable,
    HashEmbedder,
    OpenAIEmbedder,
    build_embedder,
    embed_checked,
)
from agentmesh.memory.embedders.openai_compat import retry_after_s
from agentmesh.memory.settings import MemorySettings

DIM = 8


@dataclass
class Reply:
    """What the fake provider answers to one request."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Seen:
    """One request as the fake provider received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


def embeddings_reply(inputs: list[str], dim: int = DIM, *, reverse: bool = True) -> Reply:
    """A well-formed answer, items deliberately out of order (clients must sort by index)."""
    data = [
        {"object": "embedding", "index": i, "embedding": [float(i + 1)] * dim}
        for i in range(len(inputs))
    ]
    if reverse:
        data.reverse()
    payload = {"object": "list", "data": data, "model": "m", "usage": {"prompt_tokens": 1}}
    return Reply(body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})


class FakeProvider:
    """A tiny HTTP/1.1 server on 127.0.0.1 answering each request with ``script``."""

    def __init__(self, script: Callable[[Seen], Reply]) -> None:
        self.script = script
        self.seen: list[Seen] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (line.split(":", 1) for line in head[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            seen = Seen(method, path, headers, json.loads(body or b"{}"))
            self.seen.append(seen)
            reply = self.script(seen)
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            lines = [
                f"HTTP/1.1 {reply.status} X",
                f"Content-Length: {len(reply.body)}",
                "Connection: close",
            ]
            lines += [f"{k}: {v}" for k, v in reply.headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + reply.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    fake = FakeProvider(lambda seen: embeddings_reply(seen.body["input"]))
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def client(provider: FakeProvider, **options: Any) -> OpenAIEmbedder:
    return OpenAIEmbedder(
        provider.url, model="text-embedding-3-small", dimension=DIM, api_key="sk-test", **options
    )


async def test_embeds_a_batch_in_one_request_in_input_order(provider: FakeProvider) -> None:
    embedder = client(provider)
    try:
        vectors = await embedder.embed(["a", "b", "c"])
    finally:
        await embedder.aclose()
    (request,) = provider.seen
    assert (request.method, request.path) == ("POST", "/v1/embeddings")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.body == {
        "model": "text-embedding-3-small",
        "input": ["a", "b", "c"],
        "encoding_format": "float",
        "dimensions": DIM,
    }
    # Sorted back by index (the server sent them reversed), and unit length.
    expected = 1 / math.sqrt(DIM)
    assert [v[0] for v in vectors] == pytest.approx([expected] * 3)
    assert all(len(v) == DIM for v in vectors)
    assert all(math.isclose(sum(x * x for x in v), 1.0) for v in vectors)


async def test_items_are_matched_to_inputs_by_index(provider: FakeProvider) -> None:
    def distinct(seen: Seen) -> Reply:
        data = [
            {"index": i, "embedding": [1.0 if j == i else 0.0 for j in range(DIM)]}
            for i in range(len(seen.body["input"]))
        ]
        return Reply(body=json.dumps({"data": data[::-1]}).encode())

    provider.script = distinct
    embedder = client(provider)
    try:
        vectors = await embedder.embed(["zero", "one", "two"])
    finally:
        await embedder.aclose()
    assert [v.index(1.0) for v in vectors] == [0, 1, 2]


async def test_429_is_resource_exhausted_with_the_providers_retry_after(
    provider: FakeProvider,
) -> None:
    provider.script = lambda seen: Reply(429, b'{"error": {}}', {"Retry-After": "7"})
    embedder = client(provider)
    try:
        with pytest.raises(ResourceExhausted) as caught:
            await embedder.embed(["x"])
    finally:
        await embedder.aclose()
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_after_s == 7.0
    assert caught.value.reason == "EMBEDDER_QUOTA_EXCEEDED"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("2.5") == 2.5
    assert retry_after_s(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30
    assert retry_after_s(None) == 1.0
    assert retry_after_s("soon") == 1.0
    assert retry_after_s("-4") == 0.0


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_is_unavailable(provider: FakeProvider, status: int) -> None:
    provider.script = lambda seen: Reply(status, b"upstream exploded")
    embedder = client(provider)
    try:
        with pytest.raises(EmbedderUnavailable) as caught:
            await embedder.embed(["x"])
    finally:
        await embedder.aclose()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert str(status) in caught.value.message


async def test_a_refused_key_is_internal_and_does_not_echo_the_body(
    provider: FakeProvider,
) -> None:
    provider.script = lambda seen: Reply(401, b'{"error": "Incorrect API key sk-te***"}')
    embedder = client(provider)
    try:
        with pytest.raises(EmbedderMisbehaved) as caught:
            await embedder.embed(["x"])
    finally:
        await embedder.aclose()
    assert caught.value.code == grpc.StatusCode.INTERNAL
    assert "401" in caught.value.message
    assert "sk-" not in caught.value.message


async def test_timeouts_and_refused_connections_are_unavailable(provider: FakeProvider) -> None:
    def late(seen: Seen) -> Reply:
        reply = embeddings_reply(seen.body["input"])
        reply.delay_s = 2.0
        return reply

    provider.script = late
    slow = client(provider, timeout_s=0.3)
    try:
        with pytest.raises(EmbedderUnavailable, match="timed out"):
            await slow.embed(["x"])
    finally:
        await slow.aclose()

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    nowhere = OpenAIEmbedder(f"http://127.0.0.1:{closed_port}/v1", model="m", dimension=DIM)
    try:
        with pytest.raises(EmbedderUnavailable, match="unreachable"):
            await nowhere.embed(["x"])
    finally:
        await nowhere.aclose()


async def test_malformed_or_wrong_sized_answers_are_the_providers_fault(
    provider: FakeProvider,
) -> None:
    embedder = client(provider)
    try:
        provider.script = lambda seen: Reply(body=b"<html>not json</html>")
        with pytest.raises(EmbedderMisbehaved, match="malformed"):
            await embedder.embed(["x"])
        provider.script = lambda seen: embeddings_reply(["only one"])
        with pytest.raises(EmbedderMisbehaved, match="1 vectors for 2 inputs"):
            await embedder.embed(["x", "y"])
        provider.script = lambda seen: embeddings_reply(seen.body["input"], dim=DIM + 4)
        with pytest.raises(EmbedderMisbehaved, match=f"{DIM + 4}-dim") as caught:
            await embed_checked(embedder, ["x"], DIM)
        assert caught.value.code == grpc.StatusCode.INTERNAL
    finally:
        await embedder.aclose()


def settings(**env: str) -> MemorySettings:
    return MemorySettings.from_env({f"AGENTMESH_MEMORY_{k.upper()}": v for k, v in env.items()})


async def test_build_embedder_picks_and_checks_the_configured_one(provider: FakeProvider) -> None:
    built = build_embedder(settings(), timeout_s=10.0)
    assert isinstance(built, BatchingEmbedder)
    assert isinstance(built.inner, HashEmbedder)
    with pytest.raises(ConfigError, match="AGENTMESH_MEMORY_EMBEDDER_URL"):
        build_embedder(settings(embedder="openai"), timeout_s=10.0)
    chosen = build_embedder(
        settings(
            embedder="openai",
            embedder_url=provider.url,
            embedder_model="nomic-embed",
            embedding_dim=str(DIM),
        ),
        timeout_s=10.0,
    )
    assert isinstance(chosen, BatchingEmbedder)
    assert isinstance(chosen.inner, OpenAIEmbedder)
    try:
        vectors = await embed_checked(chosen, ["hello"], DIM)
    finally:
        await chosen.aclose()
    assert len(vectors[0]) == DIM
    assert provider.seen[0].body["model"] == "nomic-embed"
    assert "authorization" not in provider.seen[0].headers  # no key configured, none sent
