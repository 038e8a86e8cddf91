"""AgentmeshSaver's per-run read-through against the real Memory service.

A run's check (``graph.aget_state``) and LangGraph's own read when the run starts ask
for the same checkpoint; inside ``read_through()`` the second costs no round trip.
What crosses the socket is counted by a client interceptor on the real channel.
"""

from __future__ import annotations

import asyncio
import operator
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, TypedDict, cast

import grpc
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import END, START, StateGraph

from agentmesh.core.auth import mint_token
from agentmesh.core.server import RunningServer
from agentmesh.langgraph import AgentmeshSaver

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import SECRET
from component.memory_helpers import uid

# grpc-stubs makes the interceptor base generic; the runtime class is not subscriptable.
if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor


class _CountCalls(_UnaryUnary):
    """Counts the unary calls sent, by method name."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}

    async def intercept_unary_unary(
        self,
        continuation: Callable[[Any, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        self.sent[name] = self.sent.get(name, 0) + 1
        return await continuation(client_call_details, request)


class _State(TypedDict):
    log: Annotated[list[str], operator.add]


def _graph() -> StateGraph[_State, None, _State, _State]:
    def step(state: _State) -> dict[str, list[str]]:
        return {"log": [f"seen {len(state['log'])}"]}

    graph = StateGraph(_State, input_schema=_State, output_schema=_State)
    graph.add_node("step", step)
    graph.add_edge(START, "step")
    graph.add_edge("step", END)
    return graph


@asynccontextmanager
async def _saver(port: int, tenant: str) -> AsyncIterator[tuple[AgentmeshSaver, _CountCalls]]:
    counter = _CountCalls()
    interceptor = cast(grpc.aio.ClientInterceptor, counter)  # an opaque type in grpc-stubs
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", interceptors=[interceptor]
    ) as channel:
        yield AgentmeshSaver(channel, token=mint_token(SECRET, tenant)), counter


async def test_a_checked_run_reads_its_thread_once(memory_server: RunningServer) -> None:
    config: Any = {"configurable": {"thread_id": f"t-{uid()}"}}
    async with _saver(memory_server.port, f"rt-{uid()}") as (saver, counter):
        graph = _graph().compile(checkpointer=saver)
        for turn, expected in enumerate(
            (["hi", "seen 1"], ["hi", "seen 1", "again", "seen 3"]), start=1
        ):
            before = counter.sent.get("GetCheckpoint", 0)
            async with saver.read_through():
                state = await graph.aget_state(config)  # the runner's check
                assert (state.created_at is not None) == (turn == 2)
                result = await graph.ainvoke(_State(log=["hi" if turn == 1 else "again"]), config)
            assert result["log"] == expected
            assert counter.sent["GetCheckpoint"] - before == 1
        # Outside a scope every read goes to the service.
        await graph.aget_state(config)
        await graph.aget_state(config)
        assert counter.sent["GetCheckpoint"] == 4


async def test_a_read_is_served_once_and_forgotten_after_a_write(
    memory_server: RunningServer,
) -> None:
    thread = f"t-{uid()}"
    config: Any = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    async with _saver(memory_server.port, f"rt-{uid()}") as (saver, counter):
        scope = saver.read_through()
        async with scope:
            assert await saver.aget_tuple(config) is None
            assert await saver.aget_tuple(config) is None  # served from the first
            assert counter.sent["GetCheckpoint"] == 1
            assert await saver.aget_tuple(config) is None  # served once only
            assert counter.sent["GetCheckpoint"] == 2
            stored = await saver.aput(config, empty_checkpoint(), {"step": 0}, {})
            found = await saver.aget_tuple(config)  # after a write: from the service
            assert found is not None
            assert (
                found.config["configurable"]["checkpoint_id"]
                == (stored["configurable"]["checkpoint_id"])
            )
            assert counter.sent["GetCheckpoint"] == 3


async def test_another_replicas_write_is_seen_by_the_next_run(
    memory_server: RunningServer,
) -> None:
    """The read-through lives for one scope: a write by another saver (another
    replica) between two runs is what the second run starts from."""
    tenant = f"rt-{uid()}"
    config: Any = {"configurable": {"thread_id": f"t-{uid()}"}}
    async with (
        _saver(memory_server.port, tenant) as (first, _),
        _saver(memory_server.port, tenant) as (second, _),
    ):
        async with first.read_through():
            await _graph().compile(checkpointer=first).ainvoke(_State(log=["a"]), config)
        await _graph().compile(checkpointer=second).ainvoke(_State(log=["b"]), config)
        graph = _graph().compile(checkpointer=first)
        async with first.read_through():
            await graph.aget_state(config)
            result = await graph.ainvoke(_State(log=["c"]), config)
    assert result["log"] == ["a", "seen 1", "b", "seen 3", "c", "seen 5"]


async def test_concurrent_scopes_do_not_share_reads(memory_server: RunningServer) -> None:
    """Two runs of one saver at once (two RPCs served by one replica) each read
    their own thread; neither is answered with the other's checkpoint."""
    async with _saver(memory_server.port, f"rt-{uid()}") as (saver, counter):
        graph = _graph().compile(checkpointer=saver)

        async def run(word: str) -> list[str]:
            config: Any = {"configurable": {"thread_id": f"t-{word}-{uid()}"}}
            await graph.ainvoke(_State(log=[word]), config)
            async with saver.read_through():
                await graph.aget_state(config)
                result = await graph.ainvoke(_State(log=[word]), config)
            return list(result["log"])

        before = counter.sent.get("GetCheckpoint", 0)
        results = await asyncio.gather(*(run(w) for w in ("x", "y", "z")))
    assert results == [[w, "seen 1", w, "seen 3"] for w in ("x", "y", "z")]
    # Per run: one read for the unscoped first turn, one for the checked second turn.
    assert counter.sent["GetCheckpoint"] - before == 6
