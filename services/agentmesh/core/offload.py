"""CPU work sized by the request goes off the event loop when it is large.

Decoding a page of stored JSON or building a large response is CPU work proportional
to the bytes involved. Small amounts stay on the loop (a thread hop costs more than
they do); past :data:`INLINE_MAX_BYTES` the work runs in a worker thread, so one
tenant's large page does not stall every other call of the process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, TypeVar

T = TypeVar("T")

INLINE_MAX_BYTES: Final = 64 * 1024
"""Largest input converted on the event loop (well under a millisecond of work)."""


async def convert_sized(work: Callable[[], T], size_bytes: int) -> T:
    """``work()``, on the loop when ``size_bytes`` is small, else in a worker thread."""
    if size_bytes <= INLINE_MAX_BYTES:
        return work()
    return await asyncio.to_thread(work)
