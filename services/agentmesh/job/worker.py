"""``python -m agentmesh.job.worker``: one Dramatiq worker process over Redis.

Runs Dramatiq's own CLI on :mod:`agentmesh.job.actors` (which configures the
broker from ``AGENTMESH_*`` settings), so signals, restarts and thread pools
behave exactly as Dramatiq documents them.
"""

from __future__ import annotations

import os
import sys

from dramatiq.cli import main as dramatiq_main


def main() -> None:
    """Starts the worker; ``AGENTMESH_WORKER_THREADS`` sets threads (default 8)."""
    threads = os.environ.get("AGENTMESH_WORKER_THREADS", "8")
    sys.argv = [
        "dramatiq",
        "agentmesh.job.actors",
        "--processes",
        "1",
        "--threads",
        threads,
    ]
    raise SystemExit(dramatiq_main())


if __name__ == "__main__":
    main()
