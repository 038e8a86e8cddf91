"""The harness behind `python -m agentmesh.bench`: parse its flags, run the selected
benches, write their JSON and their sections of docs/benchmarks.md.

A module of its own, so a bench's own entry point (`python -m agentmesh.bench.memory`)
can call it with its configured bench without importing a `__main__`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from agentmesh.bench import agent, conductor, core, job, layers, memory
from agentmesh.bench.suite import (
    Bench,
    BenchOptions,
    JsonDict,
    docs_path,
    json_path,
    machine_info,
    write_section,
)

#: Every bench, in the order they run. A new bench is a module with a BENCH, added here.
BENCHES: Final[tuple[Bench, ...]] = (
    core.BENCH,
    layers.BENCH,
    memory.BENCH,
    agent.BENCH,
    job.BENCH,
    conductor.BENCH,
)


def _parse(argv: list[str] | None, benches: Sequence[Bench]) -> argparse.Namespace:
    names = [b.name for b in benches]
    parser = argparse.ArgumentParser(
        prog="python -m agentmesh.bench",
        description="Benchmarks of agentmesh against physical baselines (h2load).",
    )
    parser.add_argument("--small", action="store_true", help="short runs: a smoke test")
    parser.add_argument(
        "--only",
        default=",".join(names),
        help=f"comma-separated benches to run, of: {', '.join(names)} (default: all)",
    )
    parser.add_argument(
        "--out-json",
        type=Path,
        default=None,
        help="write all results to this one file instead of docs/benchmarks/agentmesh-<name>.json",
    )
    parser.add_argument(
        "--no-write-docs", action="store_true", help="do not rewrite docs/benchmarks.md"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rewrite docs/benchmarks.md from the saved JSON results",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds per measurement")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measured run")
    parser.add_argument("--max-requests", type=int, default=500_000, help="bound of -n per run")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="keep configs and logs here (default: temp)"
    )
    args = parser.parse_args(argv)
    args.selected = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.selected if s not in names]
    if unknown or not args.selected:
        parser.error(f"unknown bench(es) {unknown}; choose from {names}")
    return args


def main(argv: list[str] | None = None, benches: Sequence[Bench] = BENCHES) -> int:
    """Runs the benches `argv` selects, of `benches`; 0 if none reported a problem."""
    args = _parse(argv, benches)
    if args.render_only:
        return _render_only(args.selected, benches)
    command = "python -m agentmesh.bench" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)
    )
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="agentmesh-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    opts = BenchOptions(
        small=args.small,
        rounds=args.rounds or (1 if args.small else 3),
        duration_s=args.duration or (1.0 if args.small else 4.0),
        warmup_s=0.5 if args.small else 1.0,
        max_requests=args.max_requests,
        work_dir=work_dir,
        command=command,
    )
    machine = machine_info()
    results: dict[str, JsonDict] = {}
    failed = False
    try:
        for bench in benches:
            if bench.name not in args.selected:
                continue
            opts.log(f"running {bench.name}: {bench.title}")
            result = bench.run(opts)
            result["machine"] = machine
            result["command"] = command
            result["small"] = args.small
            # Other work on the machine skews a run: keep the load it ran under.
            result["load_average_after"] = list(os.getloadavg())
            results[bench.name] = result
            failed = failed or bool(result.get("problems"))
            if args.out_json is None:
                _write_json(json_path(bench.name), result)
            if not args.no_write_docs:
                write_section(docs_path(), bench.name, bench.render(result))
                opts.log(f"{bench.name}: section rewritten in {docs_path()}")
    finally:
        if args.out_json is not None and results:
            _write_json(args.out_json, {"machine": machine, "command": command, **results})
        if args.work_dir is None and not failed:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            opts.log(f"configs and logs kept in {work_dir}")
    for result in results.values():
        for problem in result.get("problems", []):
            opts.log(f"PROBLEM {result['bench']}: {problem}")
    return 1 if failed else 0


def _render_only(selected: list[str], benches: Sequence[Bench]) -> int:
    for bench in benches:
        if bench.name in selected:
            saved = json.loads(json_path(bench.name).read_text())
            write_section(docs_path(), bench.name, bench.render(saved))
            print(f"[bench] {bench.name}: section re-rendered from {json_path(bench.name)}")
    return 0


def _write_json(path: Path, doc: JsonDict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"[bench] wrote {path}", file=sys.stderr)
