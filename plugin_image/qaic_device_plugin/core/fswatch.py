"""Directory change events from inotify (asyncinotify), tolerant of the directory coming and going.

Used for kubelet's plugin dir (kubelet.sock re-created, our sockets deleted) and for /dev/accel
(device nodes removed and re-created around SoC resets). Events are hints to re-check state,
never the state itself: callers always re-read what they care about.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from asyncinotify import Inotify, Mask, Watch

log = logging.getLogger(__name__)

_DIR_MASK = (
    Mask.CREATE
    | Mask.DELETE
    | Mask.MOVED_TO
    | Mask.MOVED_FROM
    | Mask.ATTRIB
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)
_PARENT_MASK = Mask.CREATE | Mask.MOVED_TO | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR


class Change(enum.Enum):
    CREATED = "created"
    DELETED = "deleted"
    CHANGED = "changed"  # attributes (e.g. permissions) of an entry
    RESCAN = "rescan"  # the directory appeared/vanished or events were lost: re-read everything


@dataclass(frozen=True, slots=True)
class DirEvent:
    change: Change
    name: str | None = None


class WatchStatus:
    """Whether the watch on the directory itself is in place: a caller's safety-net poll can
    slow down while it is (events then do the work) and must speed up as soon as it is not:
    `lost` is set while it is not, `placed` while it is."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.placed = asyncio.Event()

    @property
    def live(self) -> bool:
        return self.placed.is_set()

    def set(self, live: bool) -> None:
        now, other = (self.placed, self.lost) if live else (self.lost, self.placed)
        other.clear()
        now.set()


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


_BACKOFF = (0.1, 30.0)  # seconds: first retry of a watch that cannot be added, and the cap


class _Retry:
    """Backs off a watch that cannot be added (inotify watches exhausted, permissions), and
    says so once per path and outage: retrying at once would starve the event loop."""

    def __init__(self, backoff: tuple[float, float]) -> None:
        self._backoff = backoff
        self._delay = backoff[0]
        self._failing: set[Path] = set()

    async def failed(self, path: Path, error: OSError) -> None:
        if path not in self._failing:
            self._failing.add(path)
            hint = (
                "; inotify watches exhausted: raise the sysctl fs.inotify.max_user_watches"
                if error.errno == errno.ENOSPC
                else ""
            )
            log.warning(
                f"cannot watch directory; relying on periodic rescans, retrying with backoff{hint}",
                extra={
                    "event": "watch_failed",
                    "path": str(path),
                    "error": error.strerror or str(error),
                    "retry_max_s": self._backoff[1],
                },
            )
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, self._backoff[1])

    def added(self, path: Path) -> None:
        self._delay = self._backoff[0]
        if path in self._failing:
            self._failing.discard(path)
            log.info("watching directory again", extra={"event": "watch_added", "path": str(path)})


async def watch_directory(
    path: Path, *, backoff: tuple[float, float] = _BACKOFF, status: WatchStatus | None = None
) -> AsyncIterator[DirEvent]:
    """Yield events for entries of `path`; while it does not exist, wait for it to appear.

    A watch that cannot be added is retried with exponential backoff (capped), yielding
    RESCAN after each attempt, so callers fall back to re-reading state on their own.
    `status.live` says whether the watch on `path` is in place.
    """
    retry = _Retry(backoff)
    status = status if status is not None else WatchStatus()
    with Inotify() as inotify:
        while True:
            status.set(False)
            if path.is_dir():
                try:
                    watch = inotify.add_watch(path, _DIR_MASK)
                except OSError as e:
                    if path.is_dir():  # not a race with its removal
                        await retry.failed(path, e)
                    yield DirEvent(Change.RESCAN)
                    continue
                retry.added(path)
                status.set(True)
                try:
                    async for ev in _events(inotify, watch):
                        yield ev
                finally:
                    status.set(False)
                yield DirEvent(Change.RESCAN)  # the directory went away
            else:
                await _await_creation(inotify, path, retry)
                yield DirEvent(Change.RESCAN)


async def _events(inotify: Inotify, watch: Watch) -> AsyncIterator[DirEvent]:
    try:
        async for event in inotify:
            if event.mask & Mask.Q_OVERFLOW:
                yield DirEvent(Change.RESCAN)
                continue
            if event.watch is not watch:
                continue
            if event.mask & (Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED):
                return
            name = event.name.name if event.name is not None else None
            if event.mask & (Mask.CREATE | Mask.MOVED_TO):
                yield DirEvent(Change.CREATED, name)
            elif event.mask & (Mask.DELETE | Mask.MOVED_FROM):
                yield DirEvent(Change.DELETED, name)
            elif event.mask & Mask.ATTRIB:
                yield DirEvent(Change.CHANGED, name)
    finally:
        with contextlib.suppress(OSError, ValueError):  # already gone with the directory
            inotify.rm_watch(watch)


async def _await_creation(inotify: Inotify, path: Path, retry: _Retry) -> None:
    """Wait until `path` exists, following its creation one component at a time."""
    while not path.is_dir():
        parent = _nearest_existing(path.parent)
        try:
            watch = inotify.add_watch(parent, _PARENT_MASK)
        except OSError as e:  # unreadable parent or no watches left: nothing to await
            await retry.failed(parent, e)
            continue
        retry.added(parent)
        try:
            if _nearest_existing(path.parent) != parent or path.is_dir():
                continue  # changed between the check and the watch
            async for event in inotify:
                if event.watch is watch:
                    break
        finally:
            with contextlib.suppress(OSError, ValueError):
                inotify.rm_watch(watch)
