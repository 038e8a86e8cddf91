"""Stopping a background task within a bound.

A task cancelled once may swallow the cancellation (a library that catches
``CancelledError`` inside a call and carries on, as client libraries have done on
reconnect paths) and run on; awaiting it then hangs the process's shutdown for ever.
:func:`stop_task` cancels again at every slice until the task ends, and gives up after
``timeout_s`` with an error in the log instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import structlog

_log = structlog.get_logger("agentmesh.core.tasks")

SLICE_S: Final = 0.5
"""How long each cancellation is given before the next one."""


async def stop_task(task: asyncio.Task[Any] | None, *, what: str, timeout_s: float = 10.0) -> bool:
    """Cancels ``task`` until it ends, at most ``timeout_s``; whether it ended. Its
    result or exception is dropped (a stopping loop's last error is not news)."""
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            _log.error("background task did not stop", what=what, timeout_s=timeout_s)
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(SLICE_S, left))
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
    return True
