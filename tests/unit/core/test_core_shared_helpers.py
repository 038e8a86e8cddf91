"""The shared helpers every store and servicer uses: the tenant-first WHERE builder,
the collect-all field violations, the typed keyset page position and the servicer
composition that refuses an RPC defined twice or nowhere."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from agentmesh.core.contract import compose_servicer
from agentmesh.core.errors import InvalidArgument
from agentmesh.core.idempotency import RequestIds
from agentmesh.core.paging import Keyset
from agentmesh.core.sql import Where
from agentmesh.core.validation import (
    Violations,
    check_display_name,
    check_labels,
    validate_request_id,
)
from agentmesh.v1 import memory_pb2, memory_pb2_grpc

pytestmark = pytest.mark.unit

QUERY = {"filter": 'labels.a = "b"'}


# ------------------------------------------------------------------ Where


def test_where_starts_with_the_tenant_and_numbers_parameters_in_order() -> None:
    where = Where("tenant-a")
    where.add("kind = {}", 3)
    where.add("(create_time < {} OR (create_time = {} AND id > {}))", "t", "t2", "id")
    placeholder = where.param("x")
    where.conditions.append(f"namespace LIKE {placeholder}")

    assert where.sql == (
        "tenant = $1 AND kind = $2 AND (create_time < $3 OR (create_time = $4 AND id > $5))"
        " AND namespace LIKE $6"
    )
    assert where.args == ["tenant-a", 3, "t", "t2", "id", "x"]


def test_where_takes_another_tenant_column_and_refuses_no_tenant() -> None:
    assert Where("t", column="s.tenant").sql == "s.tenant = $1"
    with pytest.raises(ValueError, match="tenant"):
        Where("")


# ------------------------------------------------------------------ Violations


def test_violations_collect_every_bad_field_before_raising() -> None:
    violations = Violations()
    violations.add("a", "wrong")
    assert violations.check(lambda: validate_request_id("x" * 129)) is None
    assert violations.check(lambda: validate_request_id("ok")) == "ok"
    violations.text("", "b", required=True, max_chars=5)
    violations.text("toolong", "c", required=False, max_chars=5)
    violations.text("n\x00l", "d", required=False, max_chars=5)
    check_labels({"Bad Key": "v", "k": "UPPER"}, violations, field="labels")
    check_display_name("x" * 257, violations, field="display_name")

    with pytest.raises(InvalidArgument) as raised:
        violations.raise_if_any()

    fields = [field for field, _ in raised.value.violations]
    assert fields == [
        "a",
        "request_id",
        "b",
        "c",
        "d",
        'labels["Bad Key"]',
        'labels["k"]',
        "display_name",
    ]


def test_no_violations_raise_nothing() -> None:
    violations = Violations()
    violations.text("fine", "a", required=True, max_chars=5)
    check_labels({"env": "", "team": "a-b_c"}, violations, field="labels")
    assert not violations
    violations.raise_if_any()


# ------------------------------------------------------------------ Keyset


def test_keyset_round_trips_typed_values_exactly() -> None:
    keyset = Keyset(datetime, str, int)
    when = datetime(2026, 12, 2, 15, 30, 1, 123456, tzinfo=UTC)
    token = keyset.encode((when, "abc", 2**63 - 1), QUERY)
    assert keyset.decode(token, QUERY) == (when, "abc", 2**63 - 1)
    assert keyset.decode("", QUERY) is None


def test_keyset_takes_text_as_long_as_a_checkpoint_namespace() -> None:
    keyset = Keyset(str, str, str)
    token = keyset.encode(("id", "thread", "n" * 4096), QUERY)
    assert keyset.decode(token, QUERY) == ("id", "thread", "n" * 4096)


def test_keyset_page_splits_the_extra_row_off_and_names_the_last_sent() -> None:
    keyset = Keyset(int)
    page, token = keyset.page([1, 2, 3], 2, QUERY, lambda row: (row,))
    assert list(page) == [1, 2]
    assert keyset.decode(token, QUERY) == (2,)
    assert keyset.page([1, 2], 2, QUERY, lambda row: (row,)) == ([1, 2], "")


def _forged(position: Any, keyset_query: dict[str, str] = QUERY) -> str:
    good = Keyset(int).encode((1,), keyset_query)
    payload = json.loads(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
    payload["p"] = position
    raw = json.dumps(payload).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("keyset", "token"),
    [
        (Keyset(int), "not base64 at all!"),
        (Keyset(int), base64.urlsafe_b64encode(b"[1]").decode()),
        (Keyset(int), _forged({"seq": 1})),  # a position of another shape
        (Keyset(int), _forged([1, 2])),  # too many values
        (Keyset(int), _forged(["1"])),  # text for a number
        (Keyset(int), _forged([True])),  # a boolean is not a number here
        (Keyset(int), _forged([2**63])),  # beyond bigint
        (Keyset(str), _forged(["a\x00b"])),  # NUL reaches no text column
        (Keyset(str), _forged(["x" * 4097])),
        (Keyset(datetime), _forged([10**18])),  # beyond any datetime
        (Keyset(datetime), _forged(["2026-01-01"])),
    ],
)
def test_keyset_refuses_forged_tokens_as_invalid_argument(keyset: Keyset, token: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        keyset.decode(token, QUERY)
    assert raised.value.violations[0][0] == "page_token"


def test_keyset_refuses_a_token_of_another_query() -> None:
    token = Keyset(int).encode((5,), QUERY)
    with pytest.raises(InvalidArgument, match="different filter"):
        Keyset(int).decode(token, {"filter": ""})


def test_keyset_types_are_checked_when_declared() -> None:
    with pytest.raises(TypeError):
        Keyset(float)
    with pytest.raises(TypeError):
        Keyset()


# ------------------------------------------------------------------ RequestIds


def test_request_ids_take_only_a_request_ids_table_name() -> None:
    assert RequestIds("job.request_ids", ttl_s=60).table == "job.request_ids"
    for bad in ("memory.sessions", "request_ids", "x; DROP TABLE y.request_ids"):
        with pytest.raises(ValueError, match="request_ids table"):
            RequestIds(bad, ttl_s=60)


# ------------------------------------------------------------------ composition

SERVICE = memory_pb2.DESCRIPTOR.services_by_name["MemoryService"]


class _Sessions:
    async def GetSession(self, request: object, context: object) -> str:  # noqa: N802
        return f"sessions:{request}"

    def helper(self) -> str:  # not an RPC: groups keep their helpers to themselves
        return "sessions"


class _Everything:
    """Defines every RPC but GetSession."""


for _method in SERVICE.methods:
    if _method.name != "GetSession":

        async def _rpc(
            self: object, request: object, context: object, name: str = _method.name
        ) -> str:
            return name

        setattr(_Everything, _method.name, _rpc)


class _AlsoSessions:
    async def GetSession(self, request: object, context: object) -> str:  # noqa: N802
        return "hidden"


async def test_compose_delegates_each_rpc_to_its_group() -> None:
    servicer = compose_servicer(
        memory_pb2_grpc.MemoryServiceServicer, SERVICE, [_Sessions(), _Everything()]
    )
    assert await servicer.GetSession("r", None) == "sessions:r"  # type: ignore[arg-type,misc]
    assert await servicer.ListSessions(None, None) == "ListSessions"  # type: ignore[arg-type,misc]
    assert not hasattr(servicer, "helper")


def test_compose_refuses_an_rpc_defined_twice_or_nowhere() -> None:
    with pytest.raises(
        TypeError, match=r"defined twice: \['GetSession \(_Sessions, _AlsoSessions\)'\]"
    ):
        compose_servicer(
            memory_pb2_grpc.MemoryServiceServicer,
            SERVICE,
            [_Sessions(), _AlsoSessions(), _Everything()],
        )
    with pytest.raises(TypeError, match=r"defined nowhere: \['GetSession'\]"):
        compose_servicer(memory_pb2_grpc.MemoryServiceServicer, SERVICE, [_Everything()])
