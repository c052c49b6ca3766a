"""The reliability suite's helpers: counts (short by default, the issue's full counts with
QAIC_RELIABILITY_FULL=1), the per-test result line, and the plugin process's resources.

Every test records what it tried, how many times and what was lost. The line is printed
(`pytest -s` shows it) and, when QAIC_RELIABILITY_RESULTS names a file, appended to it as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncinotify import Inotify, Mask

from qaic_device_plugin.sim.process import PluginProcess

# Read at import: tests/conftest.py clears QAIC_* from the environment for every test.
FULL = os.environ.get("QAIC_RELIABILITY_FULL", "") == "1"
RESULTS_ENV = "QAIC_RELIABILITY_RESULTS"
RESULTS_PATH = os.environ.get(RESULTS_ENV) or None


def scale(short: int, full: int) -> int:
    """The short count for CI and `make test`, the issue's count for the full run."""
    return full if FULL else short


# -- results --------------------------------------------------------------------------------


@dataclass
class Report:
    """What one test tried; filled in as the test goes, written at teardown (pass or fail)."""

    test: str
    tried: str = ""
    count: int = 0
    lost: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def line(self, outcome: str) -> dict[str, Any]:
        return {
            "test": self.test,
            "mode": "full" if FULL else "short",
            "outcome": outcome,
            "tried": self.tried,
            "count": self.count,
            "lost": self.lost,
            "seconds": round(time.monotonic() - self.started, 2),
            **self.details,
        }


# -- the plugin process's resources ---------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """Threads and file descriptors of one process, with what each descriptor points at."""

    threads: int
    fds: int
    kinds: tuple[tuple[str, int], ...]  # ("socket", 12), ("anon_inode:[eventpoll]", 1), ...

    def kind_counts(self) -> Counter[str]:
        return Counter(dict(self.kinds))


def _kind(target: str) -> str:
    if target.startswith(("socket:", "pipe:")):
        return target.split(":", 1)[0]
    return target if target.startswith("anon_inode:") else "file:" + target


def resources(pid: int) -> Resources:
    kinds: Counter[str] = Counter()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(FileNotFoundError):  # closed between listdir and readlink
            kinds[_kind(os.readlink(os.path.join(fd_dir, fd)))] += 1
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return Resources(threads, sum(kinds.values()), tuple(sorted(kinds.items())))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def until(
    predicate: Callable[[], bool], timeout: float, step: float = 0.02, what: str = "condition"
) -> None:
    """Poll `predicate`; only for states nothing announces (/proc counts, log lines)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(step)


async def settle(
    measure: Callable[[], Resources], target: Resources, timeout: float = 5.0
) -> Resources:
    """Wait (polling /proc) until threads and fds are back at or below `target`, then return
    the last measurement; gRPC closes channels and ends threads asynchronously, so a count
    taken the instant the last call returns can be transiently high."""
    last = measure()

    def ok() -> bool:
        nonlocal last
        last = measure()
        return last.threads <= target.threads and last.fds <= target.fds

    with contextlib.suppress(TimeoutError):
        await until(ok, timeout, step=0.05, what="resources settled")
    return last


async def start_and_await_socket(
    start: Callable[[], Awaitable[PluginProcess]], plugin_dir: Path, socket: str
) -> PluginProcess:
    """Start the plugin and await (inotify) the creation of its socket `socket`; on timeout
    say whether it exited and what it logged."""
    with Inotify() as inotify:
        inotify.add_watch(plugin_dir, Mask.CREATE)
        plugin = await start()
        try:
            async with asyncio.timeout(15):
                async for event in inotify:
                    if event.name is not None and event.name.name == socket:
                        break
        except TimeoutError:
            tail = "\n".join(plugin.log_text().splitlines()[-15:])
            raise AssertionError(
                f"no {socket} within 15 s; exit code {plugin.returncode}; log:\n{tail}"
            ) from None
    return plugin
