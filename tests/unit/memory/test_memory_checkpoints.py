"""LangGraph checkpoints, the rules that need no database: which pending writes of a
call are stored and how many tuples a page carries."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agentmesh.memory.domain.checkpoints import dedupe_writes
from agentmesh.v1 import memory_pb2

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Write:
    task_id: str
    idx: int
    channel: str = "c"


def test_a_regular_write_keeps_its_first_value() -> None:
    first, retried = Write("t", 0, "first"), Write("t", 0, "retried")
    assert dedupe_writes([first, retried]) == [first]


def test_a_special_write_keeps_its_last_value() -> None:
    error, again = Write("t", -1, "error"), Write("t", -1, "again")
    assert dedupe_writes([error, again]) == [again]


def test_writes_of_other_tasks_or_indexes_all_stay_in_first_seen_order() -> None:
    writes = [Write("a", 1), Write("b", 0), Write("a", 0), Write("a", -2), Write("b", 0, "x")]
    assert dedupe_writes(writes) == [Write("a", 1), Write("b", 0), Write("a", 0), Write("a", -2)]
    # A special write replaced later keeps its first place.
    mixed = [Write("a", -1, "old"), Write("b", 0), Write("a", -1, "new")]
    assert dedupe_writes(mixed) == [Write("a", -1, "new"), Write("b", 0)]


def test_pending_write_protos_dedupe_too() -> None:
    writes = [
        memory_pb2.PendingWrite(task_id="t", idx=0, channel="one"),
        memory_pb2.PendingWrite(task_id="t", idx=0, channel="two"),
    ]
    assert [w.channel for w in dedupe_writes(writes)] == ["one"]
    assert dedupe_writes([]) == []
