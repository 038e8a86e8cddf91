"""Near-duplicate merge planning: where each write of a batch ends up, and what a
group of merged writes leaves behind. The store hands over only candidates at or
above the merge similarity (pgvector filters them); these are the rules after that."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agentmesh.memory.domain.merging import NewMemory, merged_fields, plan_merges

pytestmark = pytest.mark.unit


def item(content: str, **changes: object) -> NewMemory:
    values: dict[str, object] = {
        "namespace": "users/u1",
        "kind": 1,
        "content": content,
        "metadata": {},
        "embedding": [1.0, 0.0],
        "session": None,
        "expire_time": None,
        "request_id": "",
    }
    values.update(changes)
    return NewMemory(**values)  # type: ignore[arg-type]


def test_without_a_near_duplicate_every_item_is_a_new_memory() -> None:
    targets, target_of = plan_merges(3, existing={}, earlier={})
    assert [t.existing_id for t in targets] == [None, None, None]
    assert [t.items for t in targets] == [[0], [1], [2]]
    assert target_of == [0, 1, 2]


def test_a_near_duplicate_in_the_store_takes_the_item() -> None:
    targets, target_of = plan_merges(2, existing={1: ("m1", 0.97)}, earlier={})
    assert targets[target_of[1]].existing_id == "m1"
    assert targets[target_of[1]].items == [1]
    assert targets[target_of[0]].existing_id is None


def test_two_items_near_the_same_stored_memory_share_one_target() -> None:
    targets, target_of = plan_merges(2, existing={0: ("m1", 0.96), 1: ("m1", 0.99)}, earlier={})
    assert target_of == [0, 0]
    assert targets == [targets[0]]
    assert targets[0].items == [0, 1]


def test_near_duplicates_within_a_batch_merge_into_the_earlier_one() -> None:
    targets, target_of = plan_merges(3, existing={}, earlier={2: [(0, 0.98)]})
    assert target_of[2] == target_of[0]
    assert targets[target_of[0]].existing_id is None
    assert targets[target_of[0]].items == [0, 2]
    assert targets[target_of[1]].items == [1]


def test_an_item_follows_its_predecessor_into_a_stored_memory() -> None:
    # Item 1 matches item 0, which merged into "m1": item 1 goes there too.
    targets, target_of = plan_merges(2, existing={0: ("m1", 0.99)}, earlier={1: [(0, 0.97)]})
    assert [targets[t].existing_id for t in target_of] == ["m1", "m1"]


def test_the_most_similar_predecessor_wins() -> None:
    # Item 2 is closer to stored "m2" (0.99) than to item 0 (0.96), and item 3 closer
    # to item 1 (0.98) than to item 0 (0.97).
    targets, target_of = plan_merges(
        4,
        existing={2: ("m2", 0.99)},
        earlier={2: [(0, 0.96)], 3: [(0, 0.97), (1, 0.98)]},
    )
    assert targets[target_of[2]].existing_id == "m2"
    assert target_of[3] == target_of[1] != target_of[0]


def test_a_candidate_at_exactly_the_threshold_merges() -> None:
    # The store's candidates are those with similarity >= the threshold: one at
    # exactly the threshold merges like any other.
    threshold = 0.95
    targets, target_of = plan_merges(
        2, existing={0: ("m1", threshold)}, earlier={1: [(0, threshold)]}
    )
    assert [targets[t].existing_id for t in target_of] == ["m1", "m1"]


def test_on_a_tie_the_stored_memory_and_then_the_first_predecessor_win() -> None:
    # Only a strictly more similar predecessor replaces the one found before it.
    targets, target_of = plan_merges(
        3, existing={2: ("m1", 0.97)}, earlier={2: [(0, 0.97), (1, 0.97)]}
    )
    assert targets[target_of[2]].existing_id == "m1"
    _, target_of = plan_merges(3, existing={}, earlier={2: [(0, 0.97), (1, 0.97)]})
    assert target_of[2] == target_of[0] != target_of[1]


def test_a_stored_memory_whose_item_merged_elsewhere_keeps_an_empty_target() -> None:
    targets, target_of = plan_merges(2, existing={1: ("m2", 0.96)}, earlier={1: [(0, 0.99)]})
    assert target_of == [0, 0]
    assert [(t.existing_id, t.items) for t in targets] == [(None, [0, 1]), ("m2", [])]


def test_merged_writes_keep_the_latest_values_and_accumulate_metadata() -> None:
    later = datetime(2030, 1, 1, tzinfo=UTC)
    fields = merged_fields(
        [
            item("first", metadata={"a": 1, "b": "x"}, session="s1", embedding=[1.0, 0.0]),
            item("second", metadata={"b": "y"}, embedding=[0.0, 1.0], expire_time=later),
        ]
    )
    assert fields["content"] == "second"
    assert fields["embedding"] == [0.0, 1.0]
    assert json.loads(fields["metadata"]) == {"a": 1, "b": "y"}
    assert fields["metadata"] == '{"a":1,"b":"y"}'
    assert fields["session"] == "s1"  # the latest write that named a session
    assert fields["expire_time"] == later
