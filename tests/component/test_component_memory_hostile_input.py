"""Every client mistake is INVALID_ARGUMENT naming the field, never INTERNAL or UNKNOWN.

Table-driven over the classes of hostile input: bytes that are not a valid request
(corrupt wire format, strings that are not UTF-8 such as lone surrogates) sent to every
unary MemoryService method; timestamps and durations outside their types' range;
NaN and infinity; JSON text with lone surrogate escapes, NUL or hostile nesting in
every JSON-text field; filter timestamps outside the calendar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from agentmesh.core.server import RunningServer
from agentmesh.v1 import common_pb2, memory_pb2
from component.conftest import Metadata
from component.memory_helpers import Stub, field_violations

SERVICE = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"]
UNARY = [m for m in SERVICE.methods if not m.client_streaming and not m.server_streaming]
MARKER = "Zq7Zq7Zq7"


def _first_string_path(descriptor: Descriptor, depth: int = 0) -> list[FieldDescriptor] | None:
    """A path of fields from ``descriptor`` to a singular string field, if any."""
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING and not _repeated(field):
            return [field]
    if depth < 2:
        for field in descriptor.fields:
            nested = field.message_type
            if nested is not None and not _repeated(field):
                if nested.full_name.startswith("google.protobuf"):
                    continue
                rest = _first_string_path(nested, depth + 1)
                if rest is not None:
                    return [field, *rest]
    return None


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _request_with_bad_utf8(method: MethodDescriptor) -> bytes | None:
    """The method's request with one string field holding an encoded lone surrogate."""
    path = _first_string_path(method.input_type)
    if path is None:
        return None
    request: Message = GetMessageClass(method.input_type)()
    target = request
    for field in path[:-1]:
        target = getattr(target, field.name)
    setattr(target, path[-1].name, MARKER)
    raw = request.SerializeToString()
    assert raw.count(MARKER.encode()) == 1
    return raw.replace(MARKER.encode(), b"\xed\xa0\x80" + b"x" * (len(MARKER) - 3))


async def _raw_call(port: int, method: MethodDescriptor, body: bytes, md: Metadata) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            f"/{SERVICE.full_name}/{method.name}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        await call(body, metadata=md, timeout=10)


@pytest.mark.parametrize("method", UNARY, ids=[m.name for m in UNARY])
async def test_bytes_that_are_no_request_are_invalid_argument(
    memory_server: RunningServer, tenant_a: Metadata, method: MethodDescriptor
) -> None:
    corrupt = b"\xff\xff\xff\xff"  # a field with an invalid wire type
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _raw_call(memory_server.port, method, corrupt, tenant_a)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "request:" in (raised.value.details() or "")


@pytest.mark.parametrize(
    "method",
    [m for m in UNARY if _first_string_path(m.input_type) is not None],
    ids=lambda m: m.name,
)
async def test_strings_that_are_not_utf8_are_invalid_argument(
    memory_server: RunningServer, tenant_a: Metadata, method: MethodDescriptor
) -> None:
    body = _request_with_bad_utf8(method)
    assert body is not None
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _raw_call(memory_server.port, method, body, tenant_a)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    assert "UTF-8" in (raised.value.details() or "")


async def test_a_bad_request_from_an_unknown_caller_is_unauthenticated(
    memory_server: RunningServer,
) -> None:
    """Authentication comes first: an anonymous caller learns nothing from decoding."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _raw_call(memory_server.port, UNARY[0], b"\xff\xff\xff\xff", ())
    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------- values out of range

HUGE_TIME = timestamp_pb2.Timestamp(seconds=2**40)
ANCIENT_TIME = timestamp_pb2.Timestamp(seconds=-(2**40))
NEGATIVE_NANOS_TIME = timestamp_pb2.Timestamp(seconds=1, nanos=-5)
TIMES = [HUGE_TIME, ANCIENT_TIME, NEGATIVE_NANOS_TIME]
HUGE_DURATION = duration_pb2.Duration(seconds=2**62)
MIXED_SIGN_DURATION = duration_pb2.Duration(seconds=1, nanos=-5)
DURATIONS = [HUGE_DURATION, MIXED_SIGN_DURATION]


def _nan_struct() -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update({"x": math.nan})
    return value


def _typed_json() -> memory_pb2.TypedValue:
    return memory_pb2.TypedValue(type="json", data=b"{}")


Case = tuple[str, Callable[[str], Message], str]
"""(method, request built from the session name, the field named in the violation)"""

CASES: list[Case] = [
    *(
        (
            "ListMessages",
            lambda s, t=t: memory_pb2.ListMessagesRequest(parent=s, start_time=t),
            "start_time",
        )
        for t in TIMES
    ),
    *(
        (
            "ListMessages",
            lambda s, t=t: memory_pb2.ListMessagesRequest(parent=s, end_time=t),
            "end_time",
        )
        for t in TIMES
    ),
    *(
        (
            "CreateMemory",
            lambda s, t=t: memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(namespace="h/i", content="x y", expire_time=t)
            ),
            "memory.expire_time",
        )
        for t in TIMES
    ),
    (
        "CreateMemory",
        lambda s: memory_pb2.CreateMemoryRequest(
            memory=memory_pb2.Memory(namespace="h/i", content="x y", metadata=_nan_struct())
        ),
        "memory.metadata",
    ),
    *(
        (
            "CreateMemory",
            lambda s, v=v: memory_pb2.CreateMemoryRequest(
                memory=memory_pb2.Memory(namespace="h/i", content="x y", embedding=[v] * 384)
            ),
            "memory.embedding",
        )
        for v in (math.nan, math.inf)
    ),
    (
        "CreateSession",
        lambda s: memory_pb2.CreateSessionRequest(
            session=memory_pb2.Session(metadata=_nan_struct())
        ),
        "session.metadata",
    ),
    (
        "SearchMemories",
        lambda s: memory_pb2.SearchMemoriesRequest(text="hi", min_score=math.nan),
        "min_score",
    ),
    *(
        (
            "CreateDecision",
            lambda s, d=d: memory_pb2.CreateDecisionRequest(
                decision=memory_pb2.Decision(agent="agents/a", chosen_action="x", latency=d)
            ),
            "decision.latency",
        )
        for d in DURATIONS
    ),
    *(
        (
            "CreateDecision",
            lambda s, v=v: memory_pb2.CreateDecisionRequest(
                decision=memory_pb2.Decision(
                    agent="agents/a",
                    chosen_action="x",
                    candidates=[common_pb2.ScoredCandidate(name="a", score=v)],
                )
            ),
            "decision.candidates[0].score",
        )
        for v in (math.nan, math.inf)
    ),
    *(
        (
            "UpdateWorkingMemory",
            lambda s, d=d: memory_pb2.UpdateWorkingMemoryRequest(
                working_memory=memory_pb2.WorkingMemory(name=s + "/workingMemory"), ttl=d
            ),
            "ttl",
        )
        for d in DURATIONS
    ),
    *(
        (
            "PutStoreItem",
            lambda s, d=d: memory_pb2.PutStoreItemRequest(
                item=memory_pb2.StoreItem(namespace=["h"], key="k", value_json="{}"), ttl=d
            ),
            "ttl",
        )
        for d in DURATIONS
    ),
    *(
        (
            "ListSessions",
            lambda s, f=f: memory_pb2.ListSessionsRequest(filter=f),
            "filter",
        )
        for f in (
            'create_time >= "99999-01-01T00:00:00Z"',
            'create_time >= "0000-01-01T00:00:00Z"',
        )
    ),
]

HOSTILE_JSON = [
    '{"a": "\\ud800"}',  # a lone high surrogate
    '{"a": "x\\udfffy"}',  # a lone low surrogate
    '{"\\ud800": 1}',  # in a key
    '{"a": "\\u0000"}',  # NUL
    '{"a": ' + "[" * 100 + "]" * 100 + "}",  # deeper than allowed
    '{"a": ' + "[" * 5000 + "]" * 5000 + "}",  # deeper than the parser's recursion
    '{"a": NaN}',
]

JSON_FIELDS: list[tuple[str, Callable[[str], Message], str]] = [
    (
        "PutStoreItem",
        lambda j: memory_pb2.PutStoreItemRequest(
            item=memory_pb2.StoreItem(namespace=["h"], key="k", value_json=j)
        ),
        "item.value_json",
    ),
    (
        "SearchStoreItems",
        lambda j: memory_pb2.SearchStoreItemsRequest(filter_json=j),
        "filter_json",
    ),
    (
        "PutCheckpoint",
        lambda j: memory_pb2.PutCheckpointRequest(
            checkpoint=memory_pb2.Checkpoint(
                thread_id="t", checkpoint_id="c", checkpoint=_typed_json(), metadata_json=j
            )
        ),
        "checkpoint.metadata_json",
    ),
    (
        "ListCheckpoints",
        lambda j: memory_pb2.ListCheckpointsRequest(metadata_filter_json=j),
        "metadata_filter_json",
    ),
]


@pytest.fixture
async def session_name(memory: Stub, tenant_a: Metadata) -> str:
    created = await memory.CreateSession(
        memory_pb2.CreateSessionRequest(session=memory_pb2.Session()), metadata=tenant_a
    )
    return str(created.name)


@pytest.mark.parametrize(
    ("method", "build", "field"), CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)]
)
async def test_values_out_of_range_are_invalid_argument_on_their_field(
    memory: Stub,
    tenant_a: Metadata,
    session_name: str,
    method: str,
    build: Callable[[str], Message],
    field: str,
) -> None:
    call: Callable[..., Any] = getattr(memory, method)
    violations = await field_violations(call(build(session_name), metadata=tenant_a))
    assert field in violations, violations


@pytest.mark.parametrize(("method", "build", "field"), JSON_FIELDS, ids=[f[0] for f in JSON_FIELDS])
@pytest.mark.parametrize("text", HOSTILE_JSON, ids=lambda t: t[:16])
async def test_hostile_json_text_is_invalid_argument_on_its_field(
    memory: Stub,
    tenant_a: Metadata,
    method: str,
    build: Callable[[str], Message],
    field: str,
    text: str,
) -> None:
    call: Callable[..., Any] = getattr(memory, method)
    violations = await field_violations(call(build(text), metadata=tenant_a))
    assert field in violations, violations


async def test_a_surrogate_pair_is_text_and_is_stored(memory: Stub, tenant_a: Metadata) -> None:
    """The check refuses only what is not Unicode: an escaped pair is one character."""
    value = '{"smile": "\\ud83d\\ude00"}'
    stored = await memory.PutStoreItem(
        memory_pb2.PutStoreItemRequest(
            item=memory_pb2.StoreItem(namespace=["pairs"], key="k", value_json=value)
        ),
        metadata=tenant_a,
    )
    assert json.loads(stored.value_json) == {"smile": "\U0001f600"}
