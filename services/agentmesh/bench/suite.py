"""What every bench shares: its options, its shape, the machine facts, the docs writer.

A bench is a module exposing ``BENCH: Bench``; ``agentmesh.bench.harness.BENCHES`` lists
them. Each writes ``docs/benchmarks/agentmesh-<name>.json`` and rewrites only its own
section of ``docs/benchmarks.md``, between ``<!-- bench:<name>:start -->`` and
``<!-- bench:<name>:end -->``; a missing section is appended, the rest of the file is
left alone.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentmesh.bench import h2load
from agentmesh.devstack import paths
from agentmesh.devstack._proc import find_executable

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class BenchOptions:
    """Run-wide knobs; `--small` shrinks them for a smoke test."""

    small: bool
    rounds: int
    """Measurements per (scenario, target), interleaved; the median is reported."""
    duration_s: float
    """Target length of one measured h2load run (its `-n` is sized to last this long)."""
    warmup_s: float
    """Length of the unmeasured h2load run before each measured one."""
    max_requests: int
    """Upper bound of `-n` for one run, whatever the rate."""
    work_dir: Path
    """Configs and logs of the processes the bench starts."""
    command: str
    """The command line, recorded with the results."""

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    run: Callable[[BenchOptions], JsonDict]
    """Runs the bench; returns JSON-able results (machine info is added by the caller)."""
    render: Callable[[JsonDict], str]
    """Markdown for the bench's section of docs/benchmarks.md, from its results."""


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _envoy_version() -> str:
    try:
        out = subprocess.run(
            [str(find_executable("envoy")), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    match = re.search(r"version: \S+?/([\d.]+)/", out.stdout)
    return match.group(1) if match else out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> JsonDict:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "load_average_at_start": list(os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "opentelemetry-sdk": _version("opentelemetry-sdk"),
        "opentelemetry-instrumentation-grpc": _version("opentelemetry-instrumentation-grpc"),
        "prometheus-client": _version("prometheus-client"),
        "pyjwt": _version("pyjwt"),
        "envoy": _envoy_version(),
        "h2load": h2load.version(),
    }


def docs_path() -> Path:
    return paths.repo_root() / "docs" / "benchmarks.md"


def json_path(name: str) -> Path:
    return paths.repo_root() / "docs" / "benchmarks" / f"agentmesh-{name}.json"


_DOCS_HEADER = """# Benchmarks

Measured by `make bench` (`python -m agentmesh.bench`). Each section below is rewritten
by its bench between its `bench:<name>` markers; text outside the markers is kept.
Raw results (every run, machine facts, the command) are in `docs/benchmarks/`.
"""


def write_section(doc: Path, name: str, body: str) -> None:
    """Replace (or append) the section between this bench's markers in `doc`."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else _DOCS_HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
