"""How an append numbers its messages: after last_sequence, without gaps, once per id."""

from __future__ import annotations

import itertools

import pytest

from agentmesh.memory.domain.messages import Allocation, Slot, allocate

pytestmark = pytest.mark.unit


def allocate_with_counter(last: int, ids: list[str], stored: set[str]) -> Allocation:
    counter = itertools.count(1)
    return allocate(last, ids, stored, new_id=lambda: f"new{next(counter)}")


def test_new_messages_take_the_numbers_after_the_last_one() -> None:
    allocation = allocate_with_counter(7, ["a", "b", "c"], set())
    assert allocation.slots == [Slot("a", 8), Slot("b", 9), Slot("c", 10)]
    assert (allocation.last_sequence, allocation.added) == (10, 3)


def test_messages_without_an_id_get_fresh_ones() -> None:
    allocation = allocate_with_counter(0, ["", "a", ""], set())
    assert allocation.slots == [Slot("new1", 1), Slot("a", 2), Slot("new2", 3)]


def test_a_stored_id_takes_no_number_and_leaves_no_gap() -> None:
    allocation = allocate_with_counter(4, ["old", "a", "older", "b"], {"old", "older"})
    assert allocation.slots == [Slot("old", None), Slot("a", 5), Slot("older", None), Slot("b", 6)]
    assert (allocation.last_sequence, allocation.added) == (6, 2)


def test_an_id_twice_in_one_batch_is_stored_once_at_its_first_place() -> None:
    allocation = allocate_with_counter(0, ["a", "b", "a", "a"], set())
    assert allocation.slots == [Slot("a", 1), Slot("b", 2), Slot("a", None), Slot("a", None)]
    assert allocation.added == 2


def test_a_retry_of_a_whole_batch_adds_nothing() -> None:
    allocation = allocate_with_counter(9, ["a", "b"], {"a", "b"})
    assert allocation.slots == [Slot("a", None), Slot("b", None)]
    assert (allocation.last_sequence, allocation.added) == (9, 0)
