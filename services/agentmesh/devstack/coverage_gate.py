"""The coverage gate of `make test`: line and branch coverage of services/, each held
above its own floor (docs/adr/0031-coverage.md).

coverage.py's `fail_under` compares one figure, which mixes statements and branches when
`branch = true`; the rule is about lines (never below 85 %), and branches get a floor of
their own so that neither can slide behind the other. The gate reads the totals of the
JSON report `coverage json` wrote after combining every process's data.

`python -m agentmesh.devstack.coverage_gate REPORT --min-lines N --min-branches M`:
prints the figures; exit 0 when both are at or above their floors, 1 when one is below,
2 when the report cannot be read or a line floor under 85 % is asked for.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

LINE_FLOOR_MIN: Final = 85.0  # no line floor below this is accepted


@dataclass(frozen=True)
class Totals:
    """The combined counts of a coverage report."""

    statements: int
    covered_lines: int
    branches: int
    covered_branches: int

    @property
    def lines_percent(self) -> float:
        return _percent(self.covered_lines, self.statements)

    @property
    def branches_percent(self) -> float:
        return _percent(self.covered_branches, self.branches)


def _percent(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 100.0  # nothing to cover: all of it is


def read_totals(report: Path) -> Totals:
    """The `totals` of a `coverage json` report; ValueError when it has none."""
    try:
        totals = json.loads(report.read_text())["totals"]
        return Totals(
            statements=int(totals["num_statements"]),
            covered_lines=int(totals["covered_lines"]),
            branches=int(totals.get("num_branches", 0)),
            covered_branches=int(totals.get("covered_branches", 0)),
        )
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{report}: not a coverage JSON report ({exc!r})") from exc


def shortfalls(totals: Totals, *, min_lines: float, min_branches: float) -> list[str]:
    """One line per figure below its floor; empty when the gate passes."""
    found = []
    if totals.lines_percent < min_lines:
        found.append(f"line coverage {totals.lines_percent:.2f} % is below {min_lines:g} %")
    if totals.branches_percent < min_branches:
        found.append(f"branch coverage {totals.branches_percent:.2f} % is below {min_branches:g} %")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coverage_gate", description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="the JSON report of `coverage json`")
    parser.add_argument("--min-lines", type=float, required=True, help="floor of line %%")
    parser.add_argument("--min-branches", type=float, required=True, help="floor of branch %%")
    args = parser.parse_args(argv)
    if args.min_lines < LINE_FLOOR_MIN:
        print(f"coverage gate: a line floor under {LINE_FLOOR_MIN:g} % is refused", file=sys.stderr)
        return 2
    try:
        totals = read_totals(args.report)
    except ValueError as exc:
        print(f"coverage gate: {exc}", file=sys.stderr)
        return 2
    print(
        f"coverage of services/: lines {totals.lines_percent:.2f} % "
        f"({totals.covered_lines}/{totals.statements}, floor {args.min_lines:g} %), "
        f"branches {totals.branches_percent:.2f} % "
        f"({totals.covered_branches}/{totals.branches}, floor {args.min_branches:g} %)"
    )
    failures = shortfalls(totals, min_lines=args.min_lines, min_branches=args.min_branches)
    for failure in failures:
        print(f"coverage gate: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
