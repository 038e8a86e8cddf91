"""StrictSerializer: a stored checkpoint value never makes its reader import or call
what it names. Each hostile payload is a real one: LangGraph's permissive default
serializer runs it (the control), ours refuses it and runs nothing."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ormsgpack
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.serde.jsonplus import (
    EXT_CONSTRUCTOR_KW_ARGS,
    EXT_CONSTRUCTOR_POS_ARGS,
    EXT_CONSTRUCTOR_SINGLE_ARG,
    EXT_DELTA_SNAPSHOT,
    EXT_METHOD_SINGLE_ARG,
    EXT_PYDANTIC_V2,
    JsonPlusSerializer,
)
from langgraph.types import Send

from agentmesh.langgraph.serde import VALUE_TYPES, StrictSerializer, UnsafeCheckpointError
from agentmesh.memory.domain.checkpoints import VALUE_TYPES as SERVICE_VALUE_TYPES

pytestmark = pytest.mark.unit


def _ext(code: int, *fields: Any) -> ormsgpack.Ext:
    return ormsgpack.Ext(code, ormsgpack.packb(fields))


def _pack(value: Any) -> bytes:
    return ormsgpack.packb(value)


@dataclasses.dataclass
class Plan:
    """A graph author's own state type."""

    steps: list[str]


def _hostile_payloads(marker: Path) -> dict[str, bytes]:
    """msgpack values that, revived by a permissive serializer, create ``marker``."""
    touch = f"open({str(marker)!r}, 'w').close()"
    shell = f"touch {marker}"
    call_exec = _ext(EXT_CONSTRUCTOR_SINGLE_ARG, "builtins", "exec", touch)
    return {
        "top-level exec": _pack(call_exec),
        "os.system, positional": _pack(
            {"channel_values": {"x": _ext(EXT_CONSTRUCTOR_POS_ARGS, "os", "system", [shell])}}
        ),
        "subprocess, keywords": _pack(
            [_ext(EXT_CONSTRUCTOR_KW_ARGS, "subprocess", "run", {"args": ["touch", str(marker)]})]
        ),
        "pydantic-shaped": _pack(_ext(EXT_PYDANTIC_V2, "builtins", "exec", touch, None)),
        "method call": _pack(_ext(EXT_METHOD_SINGLE_ARG, "builtins", "exec", touch, "__call__")),
        "inside a safe type": _pack(
            _ext(EXT_CONSTRUCTOR_POS_ARGS, "collections", "deque", [[call_exec]])
        ),
        "inside a delta snapshot": _pack(
            ormsgpack.Ext(EXT_DELTA_SNAPSHOT, _pack({"a": call_exec}))
        ),
    }


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "ran"


def test_the_hostile_payloads_run_code_under_langgraphs_permissive_default(marker: Path) -> None:
    permissive = JsonPlusSerializer(allowed_msgpack_modules=True)
    for name in ("top-level exec", "os.system, positional"):
        permissive.loads_typed(("msgpack", _hostile_payloads(marker)[name]))
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize("name", list(_hostile_payloads(Path("/nonexistent"))))
def test_hostile_payloads_are_refused_and_run_nothing(marker: Path, name: str) -> None:
    data = _hostile_payloads(marker)[name]
    with pytest.raises(UnsafeCheckpointError, match="outside the allow-list"):
        StrictSerializer().loads_typed(("msgpack", data))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("pickle", b"\x80\x04\x95"),  # never unpickled, whatever it holds
        ("json", b'{"lc": 1, "type": "constructor", "id": ["os", "system"], "kwargs": {}}'),
        ("yaml", b"x"),
        ("msgpack", b"\xc1"),  # not msgpack
        ("msgpack", _pack(ormsgpack.Ext(42, b"\x90"))),  # an unknown extension
        ("msgpack", _pack(ormsgpack.Ext(EXT_CONSTRUCTOR_POS_ARGS, b"\x93\x01\x02\x03"))),
    ],
)
def test_other_serializations_and_malformed_values_are_refused(type_: str, data: bytes) -> None:
    with pytest.raises(UnsafeCheckpointError):
        StrictSerializer().loads_typed((type_, data))


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"raw",
        {"when": datetime(2026, 12, 2, tzinfo=UTC), "id": uuid.uuid4(), "tags": {"a", "b"}},
        {"messages": [HumanMessage("hi"), AIMessage("hello")]},
        [Send("node", {"x": 1})],
    ],
)
def test_langgraphs_safe_types_round_trip(value: Any) -> None:
    serde = StrictSerializer()
    assert serde.loads_typed(serde.dumps_typed(value)) == value


def test_an_authors_type_is_refused_until_allowed_on_store_and_on_load() -> None:
    plan = {"plan": Plan(["search", "answer"])}
    with pytest.raises(UnsafeCheckpointError, match=f"{__name__}.Plan"):
        StrictSerializer().dumps_typed(plan)
    allowed = StrictSerializer(allowed_types=[(__name__, "Plan")])
    stored = allowed.dumps_typed(plan)
    assert allowed.loads_typed(stored) == plan
    with pytest.raises(UnsafeCheckpointError, match="allowed_types"):
        StrictSerializer().loads_typed(stored)
    # LangGraph's per-graph allow-list (derived from a state schema) extends ours.
    extended = StrictSerializer().with_msgpack_allowlist([(__name__, "Plan")])
    assert extended.loads_typed(stored) == plan


def test_the_client_loads_only_what_the_service_stores() -> None:
    assert VALUE_TYPES <= SERVICE_VALUE_TYPES
    assert "pickle" not in SERVICE_VALUE_TYPES
