"""The decision audit trail over real gRPC: append, get, list with filters and pages."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2

from agentmesh.v1 import common_pb2, memory_pb2

# `component.conftest`, not `conftest`: the name mypy resolves too (mypy_path has tests/).
from component.conftest import Metadata
from component.memory_helpers import Stub, field_violations, rpc_error, uid

pytestmark = pytest.mark.component


def _decision(agent: str, **fields: Any) -> memory_pb2.Decision:
    return memory_pb2.Decision(
        agent=agent, chosen_action=fields.pop("chosen", "agents/x"), **fields
    )


async def _create(stub: Stub, md: Metadata, decision: memory_pb2.Decision) -> memory_pb2.Decision:
    return await stub.CreateDecision(
        memory_pb2.CreateDecisionRequest(decision=decision), metadata=md
    )


async def _count(db: asyncpg.Pool, agent: str) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM memory.decisions WHERE agent = $1", agent)
    return count


async def _list_all(stub: Stub, md: Metadata, filter_: str, size: int) -> list[str]:
    """Walks every page; returns the decision names in order."""
    names: list[str] = []
    token = ""
    for _ in range(100):
        page = await stub.ListDecisions(
            memory_pb2.ListDecisionsRequest(page_size=size, page_token=token, filter=filter_),
            metadata=md,
        )
        assert len(page.decisions) <= size
        names.extend(d.name for d in page.decisions)
        token = page.next_page_token
        if not token:
            return names
    raise AssertionError("pagination did not end")


async def test_create_and_get_round_trip_every_field(memory: Stub, tenant_a: Metadata) -> None:
    agent = f"agents/a-{uid(10)}"
    metadata = struct_pb2.Struct()
    metadata.update({"route": "fast", "depth": 2})
    sent = memory_pb2.Decision(
        agent=agent,
        session="sessions/never-created",  # the trail does not require the session
        job="jobs/j-1",
        input_summary="refund for order 42",
        reasoning="billing handles refunds",
        candidates=[
            common_pb2.ScoredCandidate(name="agents/billing", score=0.9, reason="refund"),
            common_pb2.ScoredCandidate(name="agents/support", score=0.2),
        ],
        chosen_action="agents/billing",
        tools=["lookup_order", "refund"],
        outcome="success",
        latency=duration_pb2.Duration(seconds=1, nanos=250_000_000),
        usage=common_pb2.TokenUsage(input_tokens=120, output_tokens=30),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        metadata=metadata,
    )
    created = await _create(memory, tenant_a, sent)

    assert created.name.startswith("decisions/")
    assert created.create_time.seconds > 0
    assert created.usage.total_tokens == 150  # filled in by the server
    expected = memory_pb2.Decision()
    expected.CopyFrom(sent)
    expected.name = created.name
    expected.create_time.CopyFrom(created.create_time)
    expected.usage.total_tokens = 150
    assert created == expected

    got = await memory.GetDecision(
        memory_pb2.GetDecisionRequest(name=created.name), metadata=tenant_a
    )
    assert got == created


async def test_minimal_decision_and_conductor_agent(memory: Stub, tenant_a: Metadata) -> None:
    created = await _create(memory, tenant_a, _decision("conductor", chosen="agents/billing"))
    assert created.agent == "conductor"
    assert not created.HasField("latency")
    assert not created.HasField("usage")
    assert created.session == created.job == ""


async def test_empty_trace_id_defaults_to_the_callers_trace(
    memory: Stub, tenant_a: Metadata
) -> None:
    trace_id = uuid.uuid4().hex
    traced = (*tenant_a, ("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01"))
    created = await _create(memory, traced, _decision(f"agents/t-{uid(10)}"))
    assert created.trace_id == trace_id


async def test_request_id_makes_create_idempotent(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool
) -> None:
    agent = f"agents/i-{uid(10)}"
    request = memory_pb2.CreateDecisionRequest(
        decision=_decision(agent), request_id=str(uuid.uuid4())
    )
    first = await memory.CreateDecision(request, metadata=tenant_a)
    again = await memory.CreateDecision(request, metadata=tenant_a)
    assert again == first
    racing = await asyncio.gather(
        *(memory.CreateDecision(request, metadata=tenant_a) for _ in range(5))
    )
    assert all(r == first for r in racing)
    assert await _count(db, agent) == 1
    # The same key on another decision: refused, not answered with the first one.
    other = memory_pb2.CreateDecisionRequest(
        decision=_decision(agent, outcome="different"), request_id=request.request_id
    )
    assert set(await field_violations(memory.CreateDecision(other, metadata=tenant_a))) == {
        "request_id"
    }
    assert await _count(db, agent) == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"agent": ""}, "decision.agent"),
        ({"agent": "billing"}, "decision.agent"),
        ({"agent": "agents/Bad_Id"}, "decision.agent"),
        ({"chosen_action": ""}, "decision.chosen_action"),
        ({"session": "session/s"}, "decision.session"),
        ({"session": "sessions/"}, "decision.session"),
        ({"job": "jobs/J!"}, "decision.job"),
        ({"input_summary": "x" * 4097}, "decision.input_summary"),
        ({"reasoning": "é" * 8193}, "decision.reasoning"),  # 16 KiB + 2 bytes of UTF-8
        ({"reasoning": "nul\x00byte"}, "decision.reasoning"),
        ({"trace_id": "not-a-trace"}, "decision.trace_id"),
        ({"trace_id": "0" * 32}, "decision.trace_id"),
        ({"latency": duration_pb2.Duration(seconds=-1)}, "decision.latency"),
        ({"usage": common_pb2.TokenUsage(input_tokens=-1)}, "decision.usage"),
        (
            {"candidates": [common_pb2.ScoredCandidate(name="a", score=1.5)]},
            "decision.candidates[0].score",
        ),
        (
            {"candidates": [common_pb2.ScoredCandidate(name="a", score=float("nan"))]},
            "decision.candidates[0].score",
        ),
        ({"tools": ["ok", "x" * 2000]}, "decision.tools[1]"),
    ],
)
async def test_bad_decisions_are_invalid_argument_and_write_nothing(
    memory: Stub, tenant_a: Metadata, db: asyncpg.Pool, fields: dict[str, Any], field: str
) -> None:
    agent = f"agents/bad-{uid(10)}"
    values: dict[str, Any] = {"agent": agent, "chosen_action": "agents/x", **fields}
    decision = memory_pb2.Decision(**values)
    violations = await field_violations(
        memory.CreateDecision(
            memory_pb2.CreateDecisionRequest(decision=decision, request_id=str(uuid.uuid4())),
            metadata=tenant_a,
        )
    )
    assert field in violations, violations
    assert await _count(db, agent) == 0


@pytest.mark.parametrize(
    "metadata",
    [{"blob": "x" * (16 * 1024)}, {"bad": float("nan")}, {"nul": "a\x00b"}],
    ids=["oversize", "nan", "nul"],
)
async def test_bad_metadata_is_invalid_argument(
    memory: Stub, tenant_a: Metadata, metadata: dict[str, Any]
) -> None:
    struct = struct_pb2.Struct()
    struct.update(metadata)
    violations = await field_violations(
        _create(memory, tenant_a, _decision(f"agents/m-{uid(10)}", metadata=struct))
    )
    assert "decision.metadata" in violations


async def test_get_unknown_or_malformed(memory: Stub, tenant_a: Metadata) -> None:
    error = await rpc_error(
        memory.GetDecision(memory_pb2.GetDecisionRequest(name="decisions/nope"), metadata=tenant_a)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    for name in ("", "decisions/", "sessions/x", "decisions/UPPER"):
        violations = await field_violations(
            memory.GetDecision(memory_pb2.GetDecisionRequest(name=name), metadata=tenant_a)
        )
        assert "name" in violations


async def test_list_is_newest_first_across_pages_with_every_filter(
    memory: Stub, tenant_a: Metadata
) -> None:
    agent, other = f"agents/l-{uid(10)}", f"agents/o-{uid(10)}"
    session, job = f"sessions/s-{uid(10)}", f"jobs/j-{uid(10)}"
    created = []
    for index in range(7):
        created.append(
            await _create(
                memory,
                tenant_a,
                _decision(
                    agent if index != 3 else other,
                    session=session if index % 2 == 0 else "",
                    job=job if index >= 4 else "",
                ),
            )
        )
    newest_first = [d.name for d in reversed(created)]

    by_agent = await _list_all(memory, tenant_a, f'agent = "{agent}"', size=2)
    assert by_agent == [n for n in newest_first if n != created[3].name]
    by_session = await _list_all(memory, tenant_a, f'session = "{session}"', size=3)
    assert by_session == [d.name for d in reversed(created) if d.session == session]
    by_job = await _list_all(memory, tenant_a, f'job = "{job}"', size=1)
    assert by_job == [d.name for d in reversed(created[4:])]
    both = await _list_all(memory, tenant_a, f'session = "{session}" AND job = "{job}"', size=50)
    assert both == [created[6].name, created[4].name]

    # A time range on top of the reference filters.
    since = created[2].create_time.ToJsonString()
    until = created[5].create_time.ToJsonString()
    windowed = await _list_all(
        memory,
        tenant_a,
        f'session = "{session}" AND create_time >= "{since}" AND create_time < "{until}"',
        size=1,
    )
    assert windowed == [created[4].name, created[2].name]

    # Unfiltered, the whole trail is newest first with no duplicates.
    everything = await _list_all(memory, tenant_a, "", size=500)
    assert len(everything) == len(set(everything))
    positions = [everything.index(name) for name in newest_first]
    assert positions == sorted(positions)


async def test_page_tokens_are_bound_to_their_filter(memory: Stub, tenant_a: Metadata) -> None:
    agent = f"agents/p-{uid(10)}"
    for _ in range(3):
        await _create(memory, tenant_a, _decision(agent))
    page = await memory.ListDecisions(
        memory_pb2.ListDecisionsRequest(page_size=1, filter=f'agent = "{agent}"'),
        metadata=tenant_a,
    )
    assert page.next_page_token

    reused = memory_pb2.ListDecisionsRequest(
        page_size=1, page_token=page.next_page_token, filter='agent = "conductor"'
    )
    assert "page_token" in await field_violations(memory.ListDecisions(reused, metadata=tenant_a))

    # A token with the right shape for this filter but a made-up position.
    forged_payload = json.loads(
        base64.urlsafe_b64decode(page.next_page_token + "=" * (-len(page.next_page_token) % 4))
    )
    forged_payload["p"] = {"t": "yesterday", "id": "'; DROP TABLE x"}
    forged_token = base64.urlsafe_b64encode(json.dumps(forged_payload).encode()).decode()
    for token in ("garbage!!", "e30", forged_token):
        forged = memory_pb2.ListDecisionsRequest(page_token=token, filter=f'agent = "{agent}"')
        assert "page_token" in await field_violations(
            memory.ListDecisions(forged, metadata=tenant_a)
        )


@pytest.mark.parametrize(
    "filter_",
    [
        'agent = "billing"',
        'agent != "agents/x"',
        'session = "s1"',
        'job = "sessions/s"',
        'create_time >= "yesterday"',
        'create_time >= "2026-01-01T00:00:00"',  # no zone
        'outcome = "success"',
        "agent =",
        'agent = "agents/x" OR job = "jobs/j"',
    ],
)
async def test_bad_filters_are_invalid_argument(
    memory: Stub, tenant_a: Metadata, filter_: str
) -> None:
    request = memory_pb2.ListDecisionsRequest(filter=filter_)
    assert "filter" in await field_violations(memory.ListDecisions(request, metadata=tenant_a))


async def test_negative_page_size_is_invalid_argument(memory: Stub, tenant_a: Metadata) -> None:
    request = memory_pb2.ListDecisionsRequest(page_size=-1)
    assert "page_size" in await field_violations(memory.ListDecisions(request, metadata=tenant_a))


async def test_other_tenants_never_see_decisions(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    agent = f"agents/iso-{uid(10)}"
    created = await _create(memory, tenant_a, _decision(agent))

    error = await rpc_error(
        memory.GetDecision(memory_pb2.GetDecisionRequest(name=created.name), metadata=tenant_b)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await _list_all(memory, tenant_b, f'agent = "{agent}"', size=10) == []
    assert created.name not in await _list_all(memory, tenant_b, "", size=1000)
    assert await _list_all(memory, tenant_a, f'agent = "{agent}"', size=10) == [created.name]


async def test_a_client_chosen_decision_id_names_the_record(
    memory: Stub, tenant_a: Metadata, tenant_b: Metadata
) -> None:
    """The caller names the record before writing it; the id is the tenant's: taken is
    ALREADY_EXISTS (a retry with the same request_id answers the first record),
    another tenant may use it, and a malformed one is a field violation."""
    agent, decision_id = f"agents/named-{uid(10)}", f"d-{uid(10)}"

    async def create(md: Metadata, request_id: str = "", **fields: Any) -> memory_pb2.Decision:
        return await memory.CreateDecision(
            memory_pb2.CreateDecisionRequest(
                decision=_decision(agent, **fields),
                decision_id=decision_id,
                request_id=request_id,
            ),
            metadata=md,
        )

    first = await create(tenant_a, request_id=f"r-{decision_id}", outcome="routed")
    assert first.name == f"decisions/{decision_id}"
    got = await memory.GetDecision(
        memory_pb2.GetDecisionRequest(name=first.name), metadata=tenant_a
    )
    assert got.outcome == "routed"
    again = await create(tenant_a, request_id=f"r-{decision_id}", outcome="routed")
    assert again == first
    taken = await rpc_error(create(tenant_a, outcome="other"))
    assert taken.code() == grpc.StatusCode.ALREADY_EXISTS
    theirs = await create(tenant_b, outcome="theirs")
    assert theirs.name == first.name
    assert (
        await memory.GetDecision(memory_pb2.GetDecisionRequest(name=first.name), metadata=tenant_a)
    ).outcome == "routed"
    bad = await field_violations(
        memory.CreateDecision(
            memory_pb2.CreateDecisionRequest(decision=_decision(agent), decision_id="Not_An_Id"),
            metadata=tenant_a,
        )
    )
    assert "decision_id" in bad
