"""A latest-value broadcast: every watcher sees the newest snapshot, never a stale backlog."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Feed(Generic[T]):
    """Holds one value; publishing an equal value is a no-op so watchers only wake on change.

    ListAndWatch messages are full snapshots, so a slow reader may skip intermediate values
    without losing anything.
    """

    def __init__(self, initial: T) -> None:
        self._value = initial
        self._version = 0
        self._changed = asyncio.Condition()
        self._closed = False

    @property
    def value(self) -> T:
        return self._value

    @property
    def version(self) -> int:
        return self._version

    async def publish(self, value: T) -> bool:
        if value == self._value:
            return False
        async with self._changed:
            self._value = value
            self._version += 1
            self._changed.notify_all()
        return True

    async def close(self) -> None:
        async with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_change(self, seen: int, timeout: float) -> bool:
        """Until the version is no longer `seen` or the feed closes (True), or `timeout`
        seconds pass (False): for a stream that also repeats itself on a heartbeat."""
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(self._newer_than(seen))
        except TimeoutError:
            return False
        return True

    def _newer_than(self, seen: int) -> Callable[[], bool]:
        return lambda: self._version != seen or self._closed

    async def watch(self) -> AsyncIterator[T]:
        """Yield the current value at once, then each newer one until the feed closes."""
        seen = self._version
        yield self._value
        while True:
            async with self._changed:
                await self._changed.wait_for(self._newer_than(seen))
                if self._closed:
                    return
                seen = self._version
                value = self._value
            yield value
