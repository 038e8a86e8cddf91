"""Busy sessions across two Conductor replicas on one database, with real Memory, a real
Agent process serving the slow test agent (its second step waits for a file),
PostgreSQL and Redis:

- ENQUEUE: messages sent while a turn runs wait as queued turns (their streams say so
  first) and run after it, in arrival order, whichever replica took them; REJECT is
  refused while turns run or wait.
- INTERRUPT: a message sent to the other replica stops the running turn (its stream
  ends with ABORTED ``TURN_INTERRUPTED``, its row is STOPPED, the Agent records its run
  cancelled) and runs at once.
- A queued message whose time comes while the session is paused on an interrupt ends
  with FAILED_PRECONDITION ``TURN_PAUSED``; one whose replica died (its place lapsed)
  blocks nothing and ends UNAVAILABLE, so a retry of it replays that end.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2

from agentmesh.core.idempotency import fingerprint
from agentmesh.core.server import RunningServer
from agentmesh.v1 import conductor_pb2, memory_pb2
from component.agent_helpers import agent_process
from component.conductor_helpers import ConductorStub, kinds, serve_conductor, text
from component.conftest import Backends, Metadata, credentials
from component.memory_helpers import Stub, eventually, expect_error, free_port, uid, unique

SLOW = "agents/slow-test"


@dataclass(frozen=True)
class Mesh:
    """Two Conductor replicas on one database and the slow agent's release file."""

    a: ConductorStub
    b: ConductorStub
    release: Path


@pytest.fixture(scope="module")
async def mesh(backends: Backends, memory_server: RunningServer) -> AsyncIterator[Mesh]:
    work = Path(tempfile.mkdtemp(prefix="agentmesh-busy-"))
    port = free_port()
    async with (
        agent_process(
            memory_server.port,
            work,
            "agent-busy",
            port=port,
            AGENTMESH_AGENT_GRAPHS="agentmesh_test_agents:slow_agent",
            AGENTMESH_TEST_COUNTER_FILE=str(work / "counter"),
            AGENTMESH_TEST_RELEASE_FILE=str(work / "release"),
        ),
        serve_conductor(
            backends, memory_server.port, port, AGENTMESH_CONDUCTOR_WATCH_POLL_S="0.5"
        ) as a,
        serve_conductor(
            backends, memory_server.port, port, AGENTMESH_CONDUCTOR_WATCH_POLL_S="0.5"
        ) as b,
    ):
        yield Mesh(a, b, work / "release")


def _tenant() -> Metadata:
    return credentials(f"busy-{uid()}")


class _Stream:
    """One Converse call read in the background; ``first`` is its first event."""

    def __init__(self, stub: ConductorStub, tenant: Metadata, **fields: Any) -> None:
        self.call = stub.Converse(conductor_pb2.ConverseRequest(**fields), metadata=tenant)
        self.first: asyncio.Future[conductor_pb2.ConverseEvent] = asyncio.Future()
        self.seen: list[conductor_pb2.ConverseEvent] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> list[conductor_pb2.ConverseEvent]:
        async for event in self.call:
            if not self.seen:
                self.first.set_result(event)
            self.seen.append(event)
        return self.seen

    async def agent_started(self) -> None:
        """Waits until the stream relayed an event of the agent's run."""

        async def relayed() -> bool:
            return "agent_event" in {e.WhichOneof("event") for e in self.seen}

        await eventually(relayed, "an event of the agent's run", 60.0)

    async def events(self) -> list[conductor_pb2.ConverseEvent]:
        async with asyncio.timeout(90):
            return await self.task


async def _first(stream: _Stream) -> conductor_pb2.ConverseEvent:
    async with asyncio.timeout(60):
        return await stream.first


async def test_enqueued_messages_run_after_the_running_turn_in_order_on_either_replica(
    mesh: Mesh, memory: Stub
) -> None:
    mesh.release.unlink(missing_ok=True)
    tenant = _tenant()
    session = f"sessions/{unique()}"
    running = _Stream(
        mesh.a, tenant, session=session, create_session=True, agent=SLOW, parts=text("long")
    )
    assert (await _first(running)).WhichOneof("event") == "routing"
    # Queued on the other replica, then on this one: each stream says so first.
    second = _Stream(
        mesh.b,
        tenant,
        session=session,
        agent="agents/echo",
        parts=text("second"),
        busy_policy=conductor_pb2.BUSY_POLICY_ENQUEUE,
    )
    queued = await _first(second)
    assert queued.WhichOneof("event") == "queued"
    assert queued.queued.ahead == 1
    third = _Stream(
        mesh.a,
        tenant,
        session=session,
        agent="agents/echo",
        parts=text("third"),
        busy_policy=conductor_pb2.BUSY_POLICY_ENQUEUE,
    )
    assert (await _first(third)).queued.ahead == 2
    # REJECT (the default) is refused while turns run or wait.
    rejected = mesh.b.Converse(
        conductor_pb2.ConverseRequest(session=session, agent="agents/echo", parts=text("no")),
        metadata=tenant,
    )
    await expect_error(rejected.read(), grpc.StatusCode.ABORTED)

    mesh.release.touch()
    first_events = await running.events()
    second_events = await second.events()
    third_events = await third.events()
    assert kinds(first_events)[-1] == "final"
    for events, said in ((second_events, "second"), (third_events, "third")):
        assert kinds(events)[:2] == ["queued", "routing"]
        assert kinds(events)[-1] == "final"
        assert [p.text for p in events[-1].final.parts] == [said]
        assert len({e.turn_id for e in events}) == 1
    # In order: each queued turn's routing comes after the previous turn's end.
    assert second_events[1].sequence > first_events[-1].sequence
    assert third_events[1].sequence > second_events[-1].sequence
    stored = await memory.ListMessages(
        memory_pb2.ListMessagesRequest(parent=session), metadata=tenant
    )
    assert [m.parts[0].text for m in stored.messages] == [
        "long",
        "both steps done",
        "second",
        "second",
        "third",
        "third",
    ]


async def test_an_interrupt_on_the_other_replica_stops_the_running_turn_and_runs_at_once(
    mesh: Mesh, memory: Stub, backends: Backends
) -> None:
    mesh.release.unlink(missing_ok=True)
    tenant = _tenant()
    session = f"sessions/{unique()}"
    running = _Stream(
        mesh.a, tenant, session=session, create_session=True, agent=SLOW, parts=text("long")
    )
    assert (await _first(running)).WhichOneof("event") == "routing"
    await running.agent_started()  # the slow agent's run is under way
    interrupting = _Stream(
        mesh.b,
        tenant,
        session=session,
        agent="agents/echo",
        parts=text("now"),
        busy_policy=conductor_pb2.BUSY_POLICY_INTERRUPT,
    )
    new_events = await interrupting.events()
    assert kinds(new_events)[0] == "routing"
    assert kinds(new_events)[-1] == "final"
    assert [p.text for p in new_events[-1].final.parts] == ["now"]

    stopped_events = await running.events()
    last = stopped_events[-1]
    assert last.WhichOneof("event") == "error"
    assert last.error.code == code_pb2.ABORTED
    reasons = []
    for detail in last.error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    assert reasons == ["TURN_INTERRUPTED"]
    assert last.sequence < new_events[0].sequence
    # The turn's row is closed STOPPED, and its agent run was cancelled.
    conn = await asyncpg.connect(backends.conductor_url)
    try:
        state = await conn.fetchval(
            "SELECT state FROM conductor.turns WHERE session = $1 AND id = $2",
            session.removeprefix("sessions/"),
            last.turn_id,
        )
    finally:
        await conn.close()
    assert state == 6  # STOPPED

    async def run_cancelled() -> bool:
        response = await memory.ListDecisions(
            memory_pb2.ListDecisionsRequest(filter=f'session = "{session}"', page_size=100),
            metadata=tenant,
        )
        return any(
            d.chosen_action == SLOW and d.outcome == "error: cancelled" for d in response.decisions
        )

    await eventually(run_cancelled, "the slow agent's run recorded cancelled", 60.0)
    # The session goes on: the next message runs.
    after = _Stream(mesh.a, tenant, session=session, agent="agents/echo", parts=text("after"))
    assert kinds(await after.events())[-1] == "final"


async def test_a_queued_message_that_finds_the_session_paused_ends_with_turn_paused(
    mesh: Mesh,
) -> None:
    mesh.release.unlink(missing_ok=True)
    tenant = _tenant()
    session = f"sessions/{unique()}"
    running = _Stream(
        mesh.a, tenant, session=session, create_session=True, agent=SLOW, parts=text("long")
    )
    assert (await _first(running)).WhichOneof("event") == "routing"
    action = struct_pb2.Struct()
    action.update({"action": "refund order 1234"})
    pausing = _Stream(
        mesh.b,
        tenant,
        session=session,
        agent="agents/approval",
        parts=text("please refund order 1234"),
        input=action,
        busy_policy=conductor_pb2.BUSY_POLICY_ENQUEUE,
    )
    assert (await _first(pausing)).WhichOneof("event") == "queued"
    behind = _Stream(
        mesh.a,
        tenant,
        session=session,
        agent="agents/echo",
        parts=text("hello?"),
        busy_policy=conductor_pb2.BUSY_POLICY_ENQUEUE,
    )
    assert (await _first(behind)).WhichOneof("event") == "queued"
    mesh.release.touch()
    assert kinds(await running.events())[-1] == "final"
    assert kinds(await pausing.events())[-1] == "interrupt"
    refused = await behind.events()
    assert kinds(refused) == ["queued", "error"]
    assert refused[-1].error.code == code_pb2.FAILED_PRECONDITION
    reasons = []
    for detail in refused[-1].error.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    assert reasons == ["TURN_PAUSED"]


async def test_a_queued_turn_whose_replica_died_ends_unavailable_and_blocks_nothing(
    mesh: Mesh, backends: Backends
) -> None:
    name = f"busy-{uid()}"
    tenant = credentials(name)
    session = f"sessions/{unique()}"
    session_id = session.removeprefix("sessions/")
    await _Stream(
        mesh.a, tenant, session=session, create_session=True, agent="agents/echo", parts=text("1")
    ).events()
    # A turn queued by a replica that died: its place lapsed, nobody keeps it.
    request = conductor_pb2.ConverseRequest(
        session=session,
        agent="agents/echo",
        parts=text("lost"),
        busy_policy=conductor_pb2.BUSY_POLICY_ENQUEUE,
        request_id=f"req-{uid()}",
    )
    conn = await asyncpg.connect(backends.conductor_url)
    try:
        await conn.execute(
            "INSERT INTO conductor.turns (tenant, session, id, request_id, fingerprint, agent,"
            " thread_id, state, queue_position, queue_expire_time)"
            " VALUES ($1, $2, 'tlost', $3, $4, 'echo', 'conv.lost', 5, 1,"
            " now() - interval '1 second')",
            name,
            session_id,
            request.request_id,
            fingerprint(request),
        )
        # The next message runs at once; the lapsed turn is ended.
        after = await _Stream(
            mesh.b, tenant, session=session, agent="agents/echo", parts=text("2")
        ).events()
        assert kinds(after)[-1] == "final"
        state = await conn.fetchval(
            "SELECT state FROM conductor.turns WHERE tenant = $1 AND session = $2 AND id = 'tlost'",
            name,
            session_id,
        )
    finally:
        await conn.close()
    assert state == 4  # FAILED
    # A retry of the lost turn's request replays its end instead of waiting.
    retry = mesh.a.Converse(request, metadata=tenant)
    async with asyncio.timeout(60):
        replay = [event async for event in retry]
    assert kinds(replay) == ["error"]
    assert replay[0].error.code == code_pb2.UNAVAILABLE
    assert replay[0].turn_id == "tlost"
