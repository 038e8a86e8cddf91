"""The thin ``python -m agentmesh.<service>`` entry point shared by every service.

Loads settings, calls the service's builder (its composition root) and serves
until SIGTERM. A configuration mistake exits with status 2 and one clear line
instead of a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import uvloop

from agentmesh.core.server import ServiceSpec, serve
from agentmesh.core.settings import ConfigError, Settings

Builder = Callable[[Settings], Awaitable[ServiceSpec]]


def run_service(service: str, build: Builder) -> None:
    """Runs ``service`` built by ``build`` until SIGTERM/SIGINT; exits 2 on bad settings."""
    try:
        settings = Settings.from_env(service=service)
        settings.require_auth()
        # uvloop: libuv's event loop, a drop-in for asyncio's that spends less CPU per
        # socket read, write and wake-up, which is most of a short RPC's own cost
        # (ADR 0014; figures in docs/benchmarks.md).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(settings, build))
    except ConfigError as exc:
        print(f"agentmesh-{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _serve(settings: Settings, build: Builder) -> None:
    spec = await build(settings)
    await serve(settings, spec)
