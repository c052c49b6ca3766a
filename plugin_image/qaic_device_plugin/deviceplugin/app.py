"""Wires qaic discovery and health to the generic kubelet machinery, in one event loop.

Every trigger (inotify on /dev/accel, a periodic rescan, a qaic-util poll, a kubelet call
that wants fresh health) only marks the state dirty; one refresher re-reads everything and
publishes, so bursts of events coalesce and no two scans race.

Optional parts are imported only when their setting turns them on (issue 11: every node pays
for what the process imports): prometheus_client with QAIC_METRICS_PORT, the CDI and NFD
writers with QAIC_CDI_ENABLED / QAIC_NFD_FEATURES_DIR, pyudev with QAIC_UDEV_ENABLED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..config.settings import Settings
from ..core.fswatch import watch_directory
from ..core.supervise import until_stop_or_death
from ..kubelet.checkpoint import CHECKPOINT_FILE, IssuedAllocations
from ..kubelet.manager import PluginManager
from ..observability.sink import MetricsSink, metrics_for
from ..qaic.fingerprint import RescanGate
from ..qaic.inventory import Inventory, NodeState, SocState, log_health_changes
from ..qaic.model import Soc
from ..qaic.resources import resource_name
from ..qaic.statefile import StateFile, default_state_file
from ..qaic.udev import UdevEvent, open_udev_watch
from ..scan.qaic_util_poll import QaicUtilPolling, paced_scan
from .backend import QaicResource
from .held_socs import HeldSocs
from .safety_net import SafetyNet

if TYPE_CHECKING:  # imported at run time only when their setting turns them on
    from ..qaic.cdi import CdiSpecFile
    from ..qaic.nfd import NfdFeatureFile

log = logging.getLogger(__name__)

# PreStartContainer runs qaic-util for a fresh Status; kubelet gives the whole call 30 s.
PRESTART_QAIC_UTIL_BUDGET_SECONDS = 10.0


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.inventory = Inventory(
            settings.sysfs_root,
            settings.dev_root,
            settings.sku_overrides,
            ue_cooldown_seconds=settings.ue_cooldown_seconds,
            clock=clock,
        )
        self.metrics: MetricsSink = metrics_for(settings.metrics_port)
        self.saved = StateFile(
            settings.state_file or default_state_file(settings.device_plugin_dir),
            self.inventory,
            clock=clock,
            wall_clock=wall_clock,
        )
        self.held = HeldSocs(
            settings.pod_resources_socket,
            sku_mode=settings.sku_based_resource_enabled,
            shares=settings.allowed_shares,
            on_held=self.metrics.on_held_elsewhere,
        )
        self.manager = PluginManager(
            settings.device_plugin_dir,
            observer=self.metrics,
            resync_seconds=settings.resync_seconds,  # the net under a missing dir watch
            watched_resync_seconds=settings.resync_events_period,
            clock=clock,
        )
        self.nfd: NfdFeatureFile | None = None
        if settings.nfd_features_dir:
            from ..qaic.nfd import NfdFeatureFile

            self.nfd = NfdFeatureFile(settings.nfd_features_dir)
        self.cdi: CdiSpecFile | None = None
        if settings.cdi_enabled:
            from ..qaic.cdi import CdiSpecFile

            self.cdi = CdiSpecFile(settings.cdi_dir)
        self.issued = IssuedAllocations(settings.device_plugin_dir / CHECKPOINT_FILE)
        self._tasks: list[asyncio.Task[None]] = []
        self._cooldown_timer: asyncio.TimerHandle | None = None
        self.resources: dict[str, QaicResource] = {}
        self.state: NodeState | None = None
        self.qaic_util = QaicUtilPolling(settings, self.metrics.signal_unreadable)
        self._dirty = asyncio.Event()
        self._refreshed = asyncio.Condition()
        self._generation = 0
        self.rescan = RescanGate(
            settings.sysfs_root, settings.dev_root, settings.full_rescan_period, clock
        )
        self.safety_net = SafetyNet(
            self.rescan,
            self.held,
            self._socs,
            self._dirty,
            short=settings.resync_seconds,
            with_events=settings.resync_events_period,
        )

    # -- state -------------------------------------------------------------------------------

    def _group(self, state: NodeState) -> dict[str, list[SocState]]:
        groups: dict[str, list[SocState]] = {}
        for s in state.socs:
            sku = s.sku.sku if self.settings.sku_based_resource_enabled else None
            groups.setdefault(resource_name(sku), []).append(s)
        return groups

    def _new_resource(self, name: str) -> QaicResource:
        return QaicResource(
            name,
            shares=self.settings.allowed_shares,
            multi_soc_policy=self.settings.multi_soc_policy,
            prestart_check=self.settings.prestart_check,
            recheck=lambda: self.fresh_state(qaic_util=self.settings.prestart_check),
            on_cross_card=self.metrics.on_cross_card,
            on_allocate=self.metrics.on_allocate,
            cdi=self.cdi is not None,
            issued=self.issued,
        )

    def _socs(self) -> list[Soc]:
        return [s.soc for s in self.state.socs] if self.state is not None else []

    async def refresh(self) -> NodeState:
        state = paced_scan(self.inventory, self.qaic_util, self.rescan, self.state)
        state = self.held.apply(state)
        self.saved.save()  # before kubelet sees what the file must carry over a restart
        log_health_changes(self.state, state)
        for u in state.unreadable:
            log.warning(
                "health signal unreadable",
                extra={"event": "signal_unreadable", "signal": u.signal, "detail": u.detail},
            )
        groups = self._group(state)
        if self.cdi is not None:  # before any snapshot names a SoC that Allocate may return
            self.cdi.update(state)
        for name in groups:
            if name not in self.resources:
                self.resources[name] = self._new_resource(name)
        for name, res in self.resources.items():
            await res.update(groups.get(name, []))
        # A resource is served while it has SoCs; one whose last SoC left is dropped
        # (kubelet marks it unhealthy and removes it after its grace period).
        for name in [n for n in self.resources if n not in groups]:
            await self.resources.pop(name).close()
        await self.manager.set_backends({n: self.resources[n] for n in groups})
        self._wake_at_cooldown_end()
        self.metrics.observe_state(self.state, state, groups)
        if self.nfd is not None:
            self.nfd.update(state, self.settings.dev_root)
        self.state = state
        self.safety_net.state_changed()
        async with self._refreshed:
            self._generation += 1
            self._refreshed.notify_all()
        return state

    async def fresh_state(self, *, qaic_util: bool = True) -> dict[str, SocState]:
        """The SoCs as of now (PreStartContainer): a refresh that started after the call,
        with `qaic_util` after a fresh qaic-util Status (bounded well under kubelet's 30 s)."""
        if qaic_util:
            await self.qaic_util.poll(
                min(self.settings.qaic_util_timeout_seconds, PRESTART_QAIC_UTIL_BUDGET_SECONDS)
            )
        async with self._refreshed:
            target = self._generation + 1 + (1 if self._dirty.is_set() else 0)
            self._dirty.set()
            await self._refreshed.wait_for(lambda: self._generation >= target)
        assert self.state is not None
        return self.state.by_pci()

    # -- loops -------------------------------------------------------------------------------

    async def _refresher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.refresh()

    async def _watch_dev(self) -> None:
        async for _ in watch_directory(self.settings.dev_root / "accel"):
            self._dirty.set()

    def _wake_at_cooldown_end(self) -> None:
        """A SoC in RAS cool-down recovers when it ends, not at the next periodic resync."""
        if self._cooldown_timer is not None:
            self._cooldown_timer.cancel()
            self._cooldown_timer = None
        expiry = self.inventory.ras.next_expiry()
        if expiry is not None:
            delay = max(0.0, expiry - self.clock()) + 0.001
            self._cooldown_timer = asyncio.get_running_loop().call_later(delay, self._dirty.set)

    def _on_udev(self, event: UdevEvent | None) -> None:
        self._dirty.set()
        if event is None or event.subsystem == "accel":
            self.qaic_util.now.set()  # a reset or sub-system restart: Status may have changed

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        loops = {
            "refresher": self._refresher(),
            "dev-watch": self._watch_dev(),
            "resync": self.safety_net.run(),
            "qaic-util-poll": self.qaic_util.loop(lambda: self.state, self._dirty),
        }
        if not self.settings.udev_enabled:
            log.info("udev events off (QAIC_UDEV_ENABLED=false)", extra={"event": "udev_off"})
        elif (udev := open_udev_watch(self.settings.udev_source, self._on_udev)) is not None:
            loops["udev"] = udev.run()
            self.safety_net.uevents = True
        return loops

    # -- lifecycle ---------------------------------------------------------------------------

    def liveness(self) -> str | None:
        """Why the plugin is not alive (for /healthz), or None when every loop runs."""
        dead = [t.get_name() for t in self._tasks if t.done()]
        if dead:
            return "loops stopped: " + ", ".join(dead)
        if not self.manager.alive:
            return "plugin manager not serving (watch or registration loop stopped)"
        return None

    def readiness(self) -> str | None:
        """Why the plugin is not ready (for /readyz), or None when every resource it
        advertises is registered with the current kubelet."""
        if self.state is None:
            return "starting: devices not scanned yet"
        return self.manager.readiness()

    async def run(self, stop: asyncio.Event) -> int:
        """Serve until `stop` is set (exit 0) or a loop dies (exit 1: let the DaemonSet
        restart us rather than advertise devices nobody watches)."""
        s = self.settings
        log.info(
            "starting",
            extra={
                "event": "start",
                "sku_mode": s.sku_based_resource_enabled,
                "shares": s.allowed_shares,
                "sysfs_root": str(s.sysfs_root),
                "dev_root": str(s.dev_root),
                "plugin_dir": str(s.device_plugin_dir),
                "qaic_util": s.qaic_util_path or "search",
            },
        )
        await self.manager.start()
        # Every long-lived task is supervised: one that ends ends the process (exit 1).
        tasks: list[asyncio.Task[None]] = []
        manager_died = asyncio.create_task(self.manager.died(), name="plugin-manager")
        try:
            if s.metrics_port:  # optional: a port we cannot bind is retried, never fatal
                from ..observability.http import serve_http_forever
                from ..observability.metrics import Metrics

                assert isinstance(self.metrics, Metrics)  # metrics_for(port) made one
                http = serve_http_forever(
                    s.metrics_address,
                    s.metrics_port,
                    self.metrics.registry,
                    lambda: self.liveness() is None,
                    reason=lambda: self.liveness() or "",
                    unready=self.readiness,
                )
                tasks.append(asyncio.create_task(http, name="metrics-http"))
            self._tasks = tasks
            self.saved.restore()
            await self.held.poll()  # before the first snapshot offers a held SoC as free
            await self.qaic_util.poll()
            await self.refresh()
            tasks += [asyncio.create_task(c, name=n) for n, c in self.loops().items()]
            return await until_stop_or_death(stop, manager_died, tasks)
        finally:
            manager_died.cancel()
            if self._cooldown_timer is not None:
                self._cooldown_timer.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.manager.close()
            for res in self.resources.values():
                await res.close()
            log.info("stopped", extra={"event": "stop"})
