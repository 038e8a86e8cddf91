"""The message sequence of a session: how an append numbers its messages.

A session's messages are numbered 1, 2, 3, ... in the order they were appended, without
gaps. An append takes the numbers after the session's ``last_sequence``, in the order of
its messages, except for a message whose ``message_id`` is already stored (a retry): it
is answered with the stored message and takes no number; the same id twice in one batch
is stored once, at its first place. Messages without an id get a fresh one.

``allocate`` is that rule over what the store reads under the session's row lock
(``stores/messages.py``), which is what makes it hold under concurrent appends.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Slot:
    """What one message of an append becomes."""

    message_id: str
    """Its id: the client's, or a fresh one."""
    sequence: int | None
    """Its new sequence number; None when the message is not stored again (its id is
    stored already, or came earlier in the batch) and is answered with that one."""


@dataclass(frozen=True, slots=True)
class Allocation:
    """The sequence numbers of one append."""

    slots: list[Slot]
    """One per message of the batch, in order."""
    last_sequence: int
    """The session's ``last_sequence`` after the append."""
    added: int
    """How many messages the append stores."""


def allocate(
    last_sequence: int,
    message_ids: Sequence[str],
    stored_ids: Collection[str],
    *,
    new_id: Callable[[], str],
) -> Allocation:
    """Numbers a batch of messages (their ids, "" when the client gave none) that
    follows ``last_sequence``, given the ids among them that are already stored."""
    seen = set(stored_ids)
    sequence = last_sequence
    slots: list[Slot] = []
    for message_id in message_ids:
        if message_id in seen:
            slots.append(Slot(message_id, None))
            continue
        sequence += 1
        slots.append(Slot(message_id or new_id(), sequence))
        if message_id:
            seen.add(message_id)
    return Allocation(slots, sequence, sequence - last_sequence)
