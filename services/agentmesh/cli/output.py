"""What the commands print, in three forms.

- ``--json``: one JSON object per line, in protobuf's JSON mapping (camelCase fields,
  enum names, RFC 3339 times): what a script reads.
- a terminal: Rich tables and colours (Rich leaves colour out when ``NO_COLOR`` is set).
- anything else (a pipe, a file): plain lines, tab-separated columns under a header
  line, no colours and no bars.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence

from google.protobuf import json_format
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

STATE_STYLES = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "CANCELLING": "yellow",
    "INPUT_REQUIRED": "magenta",
    "RUNNING": "cyan",
    "PENDING": "blue",
}
"""Colour of a job state in a terminal."""


def to_json(message: Message) -> str:
    """``message`` as one line of JSON, in protobuf's JSON mapping."""
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))


def value_json(message: Message) -> str:
    """A Struct/Value (or any message) as compact JSON, for a field in human output."""
    return json.dumps(json_format.MessageToDict(message), ensure_ascii=False)


class Output:
    """Where and how a command prints; one per invocation."""

    def __init__(self, *, json_lines: bool) -> None:
        self.json_lines = json_lines
        # soft_wrap: a long value stays on one line rather than being cut at 80 columns.
        self.console = Console(highlight=False, soft_wrap=True)
        self.errors = Console(stderr=True, highlight=False, soft_wrap=True)

    @property
    def rich(self) -> bool:
        """True when stdout is a terminal (or Rich is told it is) and not in JSON mode."""
        return not self.json_lines and self.console.is_terminal

    def line(self, text: str = "", style: str | None = None) -> None:
        """One line of human output."""
        if self.rich:
            self.console.print(text, style=style, markup=False)
        else:
            print(text, flush=True)

    def write(self, text: str, style: str | None = None) -> None:
        """Text with no line end (a streamed answer, token by token), shown at once."""
        if self.rich:
            self.console.print(text, style=style, markup=False, end="")
            self.console.file.flush()
        else:
            print(text, end="", flush=True)

    def note(self, text: str) -> None:
        """A remark for the person, on stderr (never mixed into the data on stdout)."""
        if self.errors.is_terminal:
            self.errors.print(text, style="dim", markup=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def message(self, message: Message) -> None:
        """One message as one JSON line (``--json``)."""
        print(to_json(message), flush=True)

    def table(
        self,
        columns: Sequence[str],
        rows: Iterable[Sequence[str]],
        styles: dict[int, dict[str, str]] | None = None,
    ) -> None:
        """Rows under a header; ``styles`` colours column ``i`` by value in a terminal."""
        if not self.rich:
            print("\t".join(columns))
            for row in rows:
                print("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))
            sys.stdout.flush()
            return
        table = Table(box=box.SIMPLE_HEAD, header_style="bold")
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            # Text cells: a value with brackets is data, never Rich markup.
            cells = [Text(cell) for cell in row]
            for index, by_value in (styles or {}).items():
                style = by_value.get(row[index])
                if style:
                    cells[index].stylize(style)
            table.add_row(*cells)
        self.console.print(table)

    def fields(self, pairs: Iterable[tuple[str, str]]) -> None:
        """``key: value`` lines, keys aligned; empty values are left out."""
        kept = [(key, value) for key, value in pairs if value]
        width = max((len(key) for key, _ in kept), default=0) + 1
        for key, value in kept:
            label = f"{key}:".ljust(width)
            if self.rich:
                self.console.print(Text(label, style="bold"), Text(value))
            else:
                print(f"{label} {value}")
        sys.stdout.flush()
