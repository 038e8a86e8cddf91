"""Pages cut at a byte budget: the pure cut (fit_page, Keyset.page) and the SQL wrapper
that makes PostgreSQL send only the rows that fit."""

from __future__ import annotations

from agentmesh.core.paging import Keyset, fit_page
from agentmesh.core.sql import byte_budgeted


def _size(row: tuple[int, int]) -> int:
    return row[1]


def test_a_page_takes_the_leading_rows_that_fit() -> None:
    rows = [(1, 10), (2, 10), (3, 10)]
    assert fit_page(rows, limit=10, budget=25, size=_size) == rows[:2]
    assert fit_page(rows, limit=10, budget=30, size=_size) == rows  # exactly the budget
    assert fit_page([], limit=10, budget=10, size=_size) == []


def test_a_page_carries_one_row_even_if_it_alone_is_too_large() -> None:
    assert fit_page([(1, 50), (2, 1)], limit=10, budget=10, size=_size) == [(1, 50)]


def test_the_page_size_still_bounds_the_page() -> None:
    rows = [(i, 1) for i in range(5)]
    assert fit_page(rows, limit=3, budget=1000, size=_size) == rows[:3]


def test_sizes_are_read_only_as_far_as_needed() -> None:
    read: list[int] = []

    def size(row: tuple[int, int]) -> int:
        read.append(row[0])
        return row[1]

    assert fit_page([(1, 10), (2, 10), (3, 10), (4, 10)], limit=9, budget=15, size=size) == [
        (1, 10)
    ]
    assert read == [1, 2]  # the second size decided it; the rest was never read


def test_a_page_cut_by_bytes_has_a_token_from_its_last_row() -> None:
    keyset = Keyset(int)
    rows = [(1, 400), (2, 400), (3, 400)]
    page, token = keyset.page(
        rows, 10, {"q": "x"}, key=lambda r: (r[0],), budget=1000, item_bytes=_size
    )
    assert page == rows[:2]
    assert keyset.decode(token, {"q": "x"}) == (2,)


def test_a_page_that_fits_whole_has_no_token() -> None:
    keyset = Keyset(int)
    rows = [(1, 1), (2, 1)]
    page, token = keyset.page(rows, 10, {}, key=lambda r: (r[0],), budget=10, item_bytes=_size)
    assert (list(page), token) == (rows, "")
    # Without a budget: the page size alone, the extra row says there is more.
    page, token = keyset.page(rows, 1, {}, key=lambda r: (r[0],))
    assert list(page) == rows[:1]
    assert keyset.decode(token, {}) == (1,)


def test_the_sql_keeps_the_inner_query_and_filters_on_the_running_sum() -> None:
    inner = "SELECT id, 3 AS page_item_bytes FROM t WHERE tenant = $1 ORDER BY id LIMIT 11"
    sql = byte_budgeted(inner, order="id", budget=2048)
    assert f"FROM ({inner}) AS page" in sql
    assert "WINDOW w AS (ORDER BY id ROWS UNBOUNDED PRECEDING)" in sql
    assert sql.endswith("WHERE page_bytes_before <= 2048 OR page_row = 2 ORDER BY page_row")
