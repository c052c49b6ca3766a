"""qaic_device_plugin.core.aio.wait_event: the waits the long-running loops are built on."""

from __future__ import annotations

import asyncio

import pytest

from qaic_device_plugin.core.aio import wait_event


async def test_wait_event_says_whether_the_event_came() -> None:
    ev = asyncio.Event()
    assert await wait_event(ev, 0.01) is False
    ev.set()
    assert await wait_event(ev, 10) is True


async def test_a_loop_on_wait_event_stops_when_cancelled_as_its_event_is_set() -> None:
    """The race asyncio.wait_for loses on 3.11 (gh-86296): the event is set and the task
    cancelled in the same turn. The loop must end, not carry on waiting."""
    for _ in range(50):
        ev, waiting = asyncio.Event(), asyncio.Event()

        async def loop(ev: asyncio.Event = ev, waiting: asyncio.Event = waiting) -> None:
            while True:
                waiting.set()
                await wait_event(ev, 10)
                ev.clear()

        task = asyncio.create_task(loop())
        await waiting.wait()
        await asyncio.sleep(0)  # the loop is inside wait_event now
        ev.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(2):
                await task
