"""LangGraph checkpoints, the rules that need no database: which pending writes of one
call are stored, and which value types are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol, TypeVar


class KeyedWrite(Protocol):
    """A pending write as far as de-duplication sees it: its task and index."""

    @property
    def task_id(self) -> str: ...

    @property
    def idx(self) -> int: ...


W = TypeVar("W", bound=KeyedWrite)


def dedupe_writes(writes: Sequence[W]) -> list[W]:
    """One write per (task, idx), as the table holds: the first of a regular write
    (``idx >= 0``: a retried task must not replace what the first attempt recorded),
    the last of a special one (errors, interrupts: replaced, as in LangGraph's own
    savers), matching how the upsert treats writes from separate calls. Order is that
    of each key's first appearance."""
    chosen: dict[tuple[str, int], W] = {}
    for write in writes:
        key = (write.task_id, write.idx)
        if write.idx < 0 or key not in chosen:
            chosen[key] = write
    return list(chosen.values())


VALUE_TYPES: Final = frozenset({"msgpack", "json", "bytes", "bytearray", "null"})
"""The ``TypedValue.type`` tags the service stores: LangGraph's serializations that
revive no object by themselves. ``pickle`` (and anything unknown) is refused: a
process loading it would run whatever it names."""
