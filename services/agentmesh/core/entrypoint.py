"""The thin ``python -m agentmesh.<service>`` entry point shared by every service.

Loads the shared settings and the service's own, calls the service's builder (its
composition root) with them and serves until SIGTERM. A configuration mistake exits
with status 2 and one clear line instead of a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from agentmesh.core.server import ServiceSpec, serve
from agentmesh.core.settings import ConfigError, Settings

Builder = Callable[..., Awaitable[ServiceSpec]]
"""``build_<service>(settings, *own_settings)``: the service's composition root."""


def run_service(service: str, build: Builder, *load_own: Callable[[], Any]) -> None:
    """Runs ``service`` built by ``build`` until SIGTERM/SIGINT; exits 2 on bad settings.

    ``load_own`` are the loaders of the service's own settings classes (e.g.
    ``MemorySettings.from_env``), called before the loop starts; ``build`` gets the
    shared settings and then what each returned, in that order.
    """
    try:
        settings = Settings.from_env(service=service)
        settings.require_auth()
        own = [load() for load in load_own]
        # uvloop: libuv's event loop, a drop-in for asyncio's that spends less CPU per
        # socket read, write and wake-up, which is most of a short RPC's own cost
        # (ADR 0014; figures in docs/benchmarks.md).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(settings, build, own))
    except ConfigError as exc:
        print(f"agentmesh-{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _serve(settings: Settings, build: Builder, own: list[Any]) -> None:
    spec = await build(settings, *own)
    await serve(settings, spec)
