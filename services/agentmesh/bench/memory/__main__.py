"""`python -m agentmesh.bench.memory`: the Memory bench alone, with its own size flags."""

from __future__ import annotations

import argparse
import shlex
import sys

from agentmesh.bench.harness import BENCHES
from agentmesh.bench.harness import main as run_benches
from agentmesh.bench.memory import bench
from agentmesh.bench.memory.options import MemoryConfig


def main(argv: list[str] | None = None) -> int:
    """`python -m agentmesh.bench.memory [--memories N] [--queries Q] [--ef-search 40,100]
    [harness options]`: this bench alone, with its own size flags; every other option
    (`--small`, `--no-write-docs`, `--work-dir`, ...) goes to `python -m agentmesh.bench`."""
    parser = argparse.ArgumentParser(prog="python -m agentmesh.bench.memory", add_help=True)
    parser.add_argument("--memories", type=int, default=None, help="search data size")
    parser.add_argument("--queries", type=int, default=None, help="query vectors")
    parser.add_argument(
        "--import-memories", type=int, default=None, help="bulk import size (default 100,000)"
    )
    parser.add_argument(
        "--parts",
        default="",
        help="comma-separated parts to run (rpc,ingest,search,bulk,embed; default all)",
    )
    parser.add_argument(
        "--ef-search", default="40,100,200", help="comma-separated hnsw.ef_search values"
    )
    args, rest = parser.parse_known_args(argv)
    if args.memories is not None and args.memories < 100:
        parser.error("--memories must be at least 100")
    config = MemoryConfig(
        memories=args.memories,
        queries=args.queries,
        import_memories=args.import_memories,
        parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()),
        ef_search=tuple(int(x) for x in args.ef_search.split(",") if x.strip()),
        invocation="python -m agentmesh.bench.memory"
        + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)),
    )
    # Every bench stays known to the harness (its --only check is unchanged); this one
    # runs with these flags.
    benches = tuple(bench(config) if b.name == "memory" else b for b in BENCHES)
    return run_benches(["--only", "memory", *rest], benches)


if __name__ == "__main__":
    raise SystemExit(main())
