"""Directory change events from inotify (asyncinotify), tolerant of the directory coming and going.

Used for kubelet's plugin dir (kubelet.sock re-created, our sockets deleted) and for /dev/accel
(device nodes removed and re-created around SoC resets). Events are hints to re-check state,
never the state itself: callers always re-read what they care about.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from asyncinotify import Inotify, Mask

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


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


async def watch_directory(path: Path) -> AsyncIterator[DirEvent]:
    """Yield events for entries of `path`; while it does not exist, wait for it to appear."""
    with Inotify() as inotify:
        while True:
            if path.is_dir():
                async for ev in _watch_existing(inotify, path):
                    yield ev
                yield DirEvent(Change.RESCAN)  # the directory went away
            else:
                await _await_creation(inotify, path)
                yield DirEvent(Change.RESCAN)


async def _watch_existing(inotify: Inotify, path: Path) -> AsyncIterator[DirEvent]:
    try:
        watch = inotify.add_watch(path, _DIR_MASK)
    except OSError as e:  # raced with removal
        log.debug(
            "watch failed", extra={"event": "watch_failed", "path": str(path), "error": str(e)}
        )
        return
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


async def _await_creation(inotify: Inotify, path: Path) -> None:
    """Wait until `path` exists, following its creation one component at a time."""
    while not path.is_dir():
        parent = _nearest_existing(path.parent)
        try:
            watch = inotify.add_watch(parent, _PARENT_MASK)
        except OSError as e:  # unreadable parent: nothing to await, so retry slowly
            log.warning(
                "cannot watch directory",
                extra={"event": "watch_failed", "path": str(parent), "error": str(e)},
            )
            await asyncio.sleep(5)
            continue
        try:
            if _nearest_existing(path.parent) != parent or path.is_dir():
                continue  # changed between the check and the watch
            async for event in inotify:
                if event.watch is watch:
                    break
        finally:
            with contextlib.suppress(OSError, ValueError):
                inotify.rm_watch(watch)
