"""``python -m agentmesh.job.worker``: one Dramatiq worker process over Redis.

Runs Dramatiq's own CLI, so signals, restarts and thread pools behave exactly as
Dramatiq documents them. Its broker argument is :func:`boot`, which Dramatiq calls in
every worker process: it loads the settings, builds the broker with our middleware
and declares the actors on it. Nothing is configured at import time.

Logs are JSON from the first line, in both processes of the tree:

- the **supervisor** (this process: Dramatiq's CLI, which forks the worker process
  and relays its output) configures :mod:`agentmesh.core.logging` before Dramatiq
  starts, and runs the CLI with ``--skip-logging`` so that Dramatiq never installs its
  plain-text ``logging.basicConfig`` format in either process;
- the **worker process** reconfigures logging as soon as it has loaded the broker
  (:class:`~agentmesh.job.worker_middleware.WorkerObservability`, ``after_process_boot``),
  onto the pipe through which Dramatiq relays a worker's output to the supervisor.

The supervisor writes everything to its **stderr**: Dramatiq relays its workers'
output there, and the supervisor's own lines go to the same stream so that one stream
carries the whole tree, in order.
"""

from __future__ import annotations

import sys

from dramatiq.cli import main as dramatiq_main
from dramatiq.cli import make_argument_parser
from dramatiq.middleware import CurrentMessage

from agentmesh.core.logging import configure_logging
from agentmesh.core.settings import ConfigError, Settings
from agentmesh.job.actors import declare_actors
from agentmesh.job.broker import configure_broker
from agentmesh.job.credentials import TenantTokens
from agentmesh.job.settings import JobSettings, WorkerSettings
from agentmesh.job.worker_middleware import WorkerObservability
from agentmesh.job.worker_resources import JobResources

SERVICE = "worker"


def boot() -> None:
    """Dramatiq's broker argument (``agentmesh.job.worker:boot``), called in each worker
    process before it consumes: the broker from the settings, with logs and metrics
    middleware, and every actor declared on it."""
    settings = Settings.from_env(service=SERVICE)
    worker = WorkerSettings.from_env()
    broker = configure_broker(settings)
    broker.add_middleware(WorkerObservability(settings))
    broker.add_middleware(CurrentMessage())
    resources = JobResources(settings, JobSettings.from_env(), worker)
    broker.add_middleware(resources)
    declare_actors(
        broker, resources, time_limit_s=worker.job_timeout_s + worker.shutdown_grace_s + 60
    )


def dramatiq_args(threads: int) -> list[str]:
    """The Dramatiq command line the worker runs (without the program name)."""
    return [
        "agentmesh.job.worker:boot",
        "--processes",
        "1",
        "--threads",
        str(threads),
        # Our JSON logging is configured before Dramatiq starts; without this flag
        # Dramatiq's basicConfig would add its plain-text format in the worker process.
        "--skip-logging",
    ]


def main() -> None:
    """Starts the worker; ``AGENTMESH_WORKER_THREADS`` sets threads (default 8).

    A configuration mistake exits with status 2 and one line on stderr, before any
    process is forked, as the services do.
    """
    try:
        settings = Settings.from_env(service=SERVICE)
        settings.require("redis_url", "database_url", "agent_addr")
        worker = WorkerSettings.from_env()
        JobSettings.from_env()
        TenantTokens(settings, worker)  # can it sign its calls to the Agent service?
    except ConfigError as exc:
        print(f"agentmesh-{SERVICE}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings, stream=sys.stderr)
    argv = dramatiq_args(worker.threads)
    # Dramatiq re-executes sys.argv on SIGHUP (reload): make that this command again,
    # not the plain `dramatiq` script (which would log plain text).
    sys.argv = [sys.executable, "-m", "agentmesh.job.worker"]
    raise SystemExit(dramatiq_main(make_argument_parser().parse_args(argv)))


if __name__ == "__main__":
    main()
