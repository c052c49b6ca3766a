"""Every long-lived task is supervised: the first one to end ends the process.

A plugin whose health loop died would keep advertising devices nobody watches, and one whose
registration loop died would never re-register after a kubelet restart; exiting 1 lets the
DaemonSet restart it instead (README "Every long-lived task is supervised").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)


async def until_stop_or_death(
    stop: asyncio.Event,
    manager_died: asyncio.Task[asyncio.Task[None]],
    tasks: Sequence[asyncio.Task[None]],
) -> int:
    """0 when `stop` is set first; 1 (each dead loop logged as `loop_died`) when a task ended.
    `manager_died` yields the manager's own task that ended."""
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait(
        [stopper, manager_died, *tasks], return_when=asyncio.FIRST_COMPLETED
    )
    stopper.cancel()
    failed = [manager_died.result() if t is manager_died else t for t in done if t is not stopper]
    for t in failed:
        exc = None if t.cancelled() else t.exception()
        log.error(
            "internal loop died; exiting",
            exc_info=exc,
            extra={"event": "loop_died", "loop": t.get_name()},
        )
    return 1 if failed else 0
