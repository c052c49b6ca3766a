"""asyncio helpers the standard library gets subtly wrong on Python 3.11."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` up to `timeout` seconds; True if it was set.

    Not `asyncio.wait_for(event.wait(), timeout)`: on Python < 3.12 that can swallow a
    cancellation that arrives as the event is set (gh-86296), so a loop built on it may
    never stop. `asyncio.timeout` always lets the cancellation through.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
