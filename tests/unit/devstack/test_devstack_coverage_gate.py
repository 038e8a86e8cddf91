"""The coverage gate of `make test`: lines and branches each against their own floor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentmesh.devstack.coverage_gate import Totals, main, read_totals, shortfalls

pytestmark = pytest.mark.unit


def _report(tmp_path: Path, **totals: int) -> Path:
    """A report shaped as `coverage json` writes it (only the fields the gate reads, and
    coverage's own mixed figure, which the gate must not use)."""
    path = tmp_path / "coverage.json"
    path.write_text(json.dumps({"meta": {}, "files": {}, "totals": totals}))
    return path


def test_the_totals_are_read_from_the_json_report(tmp_path: Path) -> None:
    report = _report(
        tmp_path, num_statements=200, covered_lines=180, num_branches=50, covered_branches=30
    )

    totals = read_totals(report)

    assert totals == Totals(statements=200, covered_lines=180, branches=50, covered_branches=30)
    assert totals.lines_percent == 90.0
    assert totals.branches_percent == 60.0


def test_lines_and_branches_are_judged_separately() -> None:
    # 90 % of lines, 60 % of branches: coverage's mixed figure would be 84 %.
    totals = Totals(statements=200, covered_lines=180, branches=50, covered_branches=30)

    assert shortfalls(totals, min_lines=89, min_branches=59) == []
    assert shortfalls(totals, min_lines=91, min_branches=59) == [
        "line coverage 90.00 % is below 91 %"
    ]
    assert shortfalls(totals, min_lines=89, min_branches=61) == [
        "branch coverage 60.00 % is below 61 %"
    ]


def test_a_report_without_branches_counts_them_as_covered() -> None:
    assert (
        Totals(statements=10, covered_lines=9, branches=0, covered_branches=0).branches_percent
        == 100.0
    )


def test_main_passes_at_the_floor_and_fails_below_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _report(
        tmp_path, num_statements=1000, covered_lines=870, num_branches=100, covered_branches=75
    )

    assert main([str(report), "--min-lines", "87", "--min-branches", "75"]) == 0
    out = capsys.readouterr().out
    assert "lines 87.00 % (870/1000, floor 87 %)" in out
    assert "branches 75.00 % (75/100, floor 75 %)" in out

    assert main([str(report), "--min-lines", "88", "--min-branches", "75"]) == 1
    assert "line coverage 87.00 % is below 88 %" in capsys.readouterr().err


def test_a_line_floor_under_85_is_refused(tmp_path: Path) -> None:
    report = _report(
        tmp_path, num_statements=10, covered_lines=10, num_branches=0, covered_branches=0
    )

    assert main([str(report), "--min-lines", "84.9", "--min-branches", "0"]) == 2


def test_a_missing_or_foreign_report_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path / "absent.json"), "--min-lines", "85", "--min-branches", "0"]) == 2
    foreign = tmp_path / "other.json"
    foreign.write_text('{"files": {}}')
    assert main([str(foreign), "--min-lines", "85", "--min-branches", "0"]) == 2
    assert "not a coverage JSON report" in capsys.readouterr().err
