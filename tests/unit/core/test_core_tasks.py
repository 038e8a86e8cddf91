"""Background tasks stop within a bound, even one that swallows a cancellation."""

from __future__ import annotations

import asyncio

from agentmesh.core.tasks import stop_task


async def test_a_task_that_stops_on_cancel_stops_at_once() -> None:
    task = asyncio.create_task(asyncio.sleep(60))
    await asyncio.sleep(0)
    assert await stop_task(task, what="sleeper", timeout_s=5.0)
    assert task.cancelled()


async def test_a_task_that_swallows_a_cancellation_is_cancelled_again() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed < 2:  # as a library's reconnect path might
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop_task(task, what="stubborn", timeout_s=5.0)
    assert swallowed == 2
    assert task.done()


async def test_a_task_that_never_stops_is_given_up_after_the_bound() -> None:
    released = asyncio.Event()

    async def immortal() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    assert not await stop_task(task, what="immortal", timeout_s=0.3)
    assert not task.done()
    released.set()  # the test's own cleanup: it ends on its next pass
    await asyncio.wait({task}, timeout=5.0)
    assert task.done()


async def test_a_finished_or_missing_task_is_fine() -> None:
    assert await stop_task(None, what="none")

    async def fails() -> None:
        raise RuntimeError("last error")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert await stop_task(task, what="failed")
