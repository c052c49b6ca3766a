"""When qaic-util runs, and what its last answer may still be used for.

qaic-util is the only source of firmware Status and SKU, and each run costs a process start
(issue 11: the node pays for every idle run). So it runs:
- at start, before the first snapshot (a Pro card is never offered as a guessed Standard);
- at once (after a short coalescing pause) on a udev accel event or when a SoC (re)appears;
- every QAIC_HEALTH_POLL_SECONDS while it is missing or failing, or its last answer had a SoC
  that is not Ready (it is what says when that SoC is back);
- every QAIC_HEALTH_POLL_IDLE_SECONDS (default 4x) while every SoC was Ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from ..config.settings import Settings
from ..core.aio import wait_event
from ..qaic.discovery import discover
from ..qaic.fingerprint import RescanGate
from ..qaic.health import Finding, Signal
from ..qaic.inventory import Inventory, NodeState, SocState
from ..qaic.model import QaicUtilEntry
from ..qaic.qaic_util import QaicUtilError, QaicUtilFinder, QaicUtilUnusable, query_qaic_util

log = logging.getLogger(__name__)

EARLY_POLL_COALESCE_SECONDS = 0.25  # an early poll (udev event, new SoC) waits for its burst


class QaicUtilPolling:
    def __init__(self, settings: Settings, on_unreadable: Callable[[Signal], None]) -> None:
        self.settings = settings
        self._on_unreadable = on_unreadable
        self.finder = QaicUtilFinder(settings.qaic_util_path)
        self.path: str | None = None  # a usable qaic-util; found by poll()
        self._entries: list[QaicUtilEntry] | None = None
        self.now = asyncio.Event()  # run before the next interval (udev, new SoCs)
        self._seq = self._applied = 0
        self._asked: set[str] = set()  # SoCs qaic-util was run for since they (re)appeared

    def current(self) -> list[QaicUtilEntry] | None:
        """qaic-util's answer, minus what it said before a SoC (re)appeared: a Status taken
        while a SoC was unbound or mid-reset says nothing about it now."""
        if self._entries is None:
            return None
        return [e for e in self._entries if e.pci_address in self._asked]

    def awaited(self, state: NodeState, previous: NodeState | None) -> NodeState:
        """A SoC that (re)appeared since qaic-util last ran waits for it (an early poll): a new
        one is not listed yet (so a Pro card is never offered as a guessed Std), one that was
        listed stays Unhealthy until qaic-util has seen it come back."""
        self._asked &= {s.pci_address for s in state.discovery.socs}
        if self.path is None:
            return state
        present = {s.pci_address for s in state.discovery.socs}
        waiting = present - self._asked
        if not waiting:
            return state
        self.now.set()
        listed = previous.by_pci() if previous else {}
        socs: list[SocState] = []
        for s in state.socs:
            pci = s.soc.pci_address
            if pci not in waiting:
                socs.append(s)
            elif pci in listed:
                pending = Finding(Signal.QAIC_UTIL, "re-appeared; awaiting a qaic-util Status")
                socs.append(replace(s, findings=(*s.findings, pending)))
        return replace(state, socs=tuple(socs))

    async def poll(self, timeout: float | None = None) -> bool:
        """Run qaic-util for fresh Status and SKUs; while there is no usable one, look for it
        again (the finder says once what its absence costs, not every poll). True when what
        `current()` gives or the SoCs it was asked about changed, so a refresh is due (an idle
        node's unchanged answer every few minutes costs no full scan)."""
        before = (self.current(), set(self._asked))
        timeout = timeout or self.settings.qaic_util_timeout_seconds
        self._seq += 1
        seq = self._seq
        asked = {s.pci_address for s in discover(self.settings.sysfs_root).socs}
        entries: list[QaicUtilEntry] | None = None
        error: str | None = None
        if self.path is not None:
            try:
                entries = await query_qaic_util(self.path, timeout)
            except QaicUtilUnusable as e:
                log.warning(
                    "qaic-util cannot run any more",
                    extra={"event": "qaic_util_failed", "error": f"{self.path}: {e}"},
                )
                self.path = None  # look again below: another candidate may work
            except QaicUtilError as e:
                error = str(e)
        if self.path is None:
            probe = await self.finder.find(timeout)
            if probe.path is None:
                self._entries = None
                return (self.current(), self._asked) != before
            self.path, entries, error = probe.path, probe.entries, probe.error
        if error is not None:
            # Unreadable is not unhealthy: keep SKUs, drop Status evidence until it reads again.
            entries = None
            self._on_unreadable(Signal.QAIC_UTIL)
            log.warning("qaic-util failed", extra={"event": "qaic_util_failed", "error": error})
        self._asked |= asked
        if seq > self._applied:  # runs overlap (PreStart): the newest started one wins
            self._applied = seq
            self._entries = entries
        return error is not None or (self.current(), self._asked) != before

    def period(self, state: NodeState | None) -> float:
        """The wait before the next periodic run (module doc)."""
        entries = self.current()
        present = {s.soc.pci_address for s in state.socs} if state else set()
        if (
            self.path is None
            or entries is None
            or not present
            or not present <= {e.pci_address for e in entries if e.ready}
        ):
            return self.settings.health_poll_seconds
        return self.settings.health_poll_idle_period

    async def loop(self, state: Callable[[], NodeState | None], dirty: asyncio.Event) -> None:
        while True:
            await wait_event(self.now, self.period(state()))
            if self.now.is_set():
                await asyncio.sleep(EARLY_POLL_COALESCE_SECONDS)
            self.now.clear()
            if await self.poll():
                dirty.set()


def paced_scan(
    inventory: Inventory,
    qaic_util: QaicUtilPolling,
    rescan: RescanGate,
    previous: NodeState | None,
) -> NodeState:
    """One full scan as both modes take it: with qaic-util's last usable answer, SoCs that
    (re)appeared held back until qaic-util has run for them, and the rescan gate's
    fingerprint taken just before (so a change during the scan shows at the next tick)."""
    socs = [s.soc for s in previous.socs] if previous is not None else []
    before = rescan.scanning(socs)
    state = qaic_util.awaited(inventory.scan(qaic_util.current()), previous)
    rescan.scanned(before, same_socs=socs == [s.soc for s in state.socs])
    return state

