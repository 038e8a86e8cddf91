"""LangGraph checkpoints, the rules that need no database: which pending writes of one
call are stored, and how many checkpoint tuples one response page carries."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


def fitting_count(sizes: Iterable[int], max_bytes: int) -> int:
    """How many leading items of ``sizes`` (bytes each) fit in ``max_bytes`` together,
    always at least one when there is one: each checkpoint tuple carries a whole
    serialized state, so a page is cut by size too, and a single state larger than
    the budget is still sent alone. ``sizes`` is read lazily, only as far as needed."""
    total = 0
    count = 0
    for size in sizes:
        total += size
        if count and total > max_bytes:
            return count
        count += 1
    return count


VALUE_TYPES: Final = frozenset({"msgpack", "json", "bytes", "bytearray", "null"})
"""The ``TypedValue.type`` tags the service stores: LangGraph's serializations that
revive no object by themselves. ``pickle`` (and anything unknown) is refused: a
process loading it would run whatever it names."""
