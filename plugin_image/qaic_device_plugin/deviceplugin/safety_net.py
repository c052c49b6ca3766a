"""When to re-check the node without an event: the periodic safety rescan's pacing (issue 11).

Each tick takes the sysfs fingerprint (qaic/fingerprint.py) and asks for a full scan only when
it changed; while a SoC is held by a pod under a former name it asks kubelet's PodResources
instead (kubelet has no event for a pod ending). The period is QAIC_RESYNC_SECONDS where the
tick is the only way to see a change, and QAIC_RESYNC_EVENTS_SECONDS while uevents announce
resets and re-probes, so that the tick only catches what was lost: on an idle node these ticks
were most of the event loop's CPU.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from ..core.aio import wait_event
from ..qaic.fingerprint import RescanGate
from ..qaic.model import Soc
from .held_socs import HeldSocs

log = logging.getLogger(__name__)


class SafetyNet:
    def __init__(
        self,
        rescan: RescanGate,
        held: HeldSocs,
        socs: Callable[[], Sequence[Soc]],
        dirty: asyncio.Event,
        *,
        short: float,
        with_events: float,
    ) -> None:
        self._rescan, self._held, self._socs, self._dirty = rescan, held, socs, dirty
        self._short, self._with_events = short, with_events
        self.uevents = False  # set once the udev monitor is open
        self._sooner = asyncio.Event()  # the period shortened: restart the wait
        self._waiting = float("inf")  # the period the loop waits for now

    def period(self) -> float:
        """Short without uevents (a sysfs-only change has no other way in), while a SoC is
        held, or while SoCs that came or went have no fingerprint yet (it comes from the next
        full scan); the events period otherwise."""
        if self.uevents and self._rescan.settled and not self._held.any_held:
            return self._with_events
        return self._short

    def state_changed(self) -> None:
        """After each refresh: a shorter period starts at once, not after the long wait."""
        if self.period() < self._waiting:
            self._sooner.set()

    async def run(self) -> None:
        while True:
            period = self.period()
            if period != self._waiting:
                log.info(
                    "safety rescan period",
                    extra={"event": "resync_period", "seconds": period, "uevents": self.uevents},
                )
            self._waiting = period
            if await wait_event(self._sooner, period):
                self._sooner.clear()
                continue
            if self._held.any_held:
                await self._held.poll()
                self._dirty.set()
            elif self._rescan.due(self._socs()):
                self._dirty.set()
