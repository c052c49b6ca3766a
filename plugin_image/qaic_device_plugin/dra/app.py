"""DRA mode (QAIC_ALLOCATION_API=dra): one event loop that keeps discovery, the node's
ResourceSlices and the kubelet DRA plugin in step.

Discovery and health are the device-plugin mode's, with the same footprint (issue 11): the
Inventory, qaic-util runs paced by QaicUtilPolling (a SoC that appears is published only once
qaic-util has named its SKU), inotify on /dev/accel, and the fingerprinted safety rescan
(RescanGate). Instead of ListAndWatch, every change is published as ResourceSlices, and claims
are prepared through the generic kubelet/dra machinery.

Prepared claims are kept true to the node: their status (`status.devices`: each device's SoCs,
QIDs, card, NUMA node, health; dra/claim_status.py) is written after prepare and again when a
SoC's health changes, and when the SoCs' device nodes change under a running node (driver
reload, re-probe) their CDI specs are written again, since kubelet sends no prepare for that.

After a move from device-plugin mode (dra/device_plugin_socs.py), SoCs that pods of that
mode still hold, and all SoCs while its device plugin still serves, are left out of the
slices until released: asked before the first slice is written, then polled only while
something is withheld.

With QAIC_METRICS_PORT (as in device-plugin mode) it serves /metrics (the SoC gauges and
health counters, resource label `qaic.qualcomm.com`), /healthz (every loop runs) and /readyz
(registered with kubelet and the server holding the node's ResourceSlices as wanted: 503
while kubelet's start-up wipe has them missing or a write is refused), so the DaemonSet's
probes restart a wedged driver and rollouts wait for the slices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.resource_v1 import Device

from ..config.settings import Settings
from ..core.aio import wait_event
from ..core.fswatch import watch_directory
from ..kubelet.dra.checkpoint import Checkpoint
from ..kubelet.dra.claim_status import ClaimStatusWriter
from ..kubelet.dra.claims import ApiClaimSource
from ..kubelet.dra.health import HealthFeed
from ..kubelet.dra.node import NodeService
from ..kubelet.dra.plugin import DraPlugin
from ..kubelet.dra.slices import SlicePublisher
from ..kubelet.dra.types import PreparedClaim
from ..observability.sink import MetricsSink, metrics_for
from ..qaic.fingerprint import RescanGate
from ..qaic.inventory import Inventory, NodeState, log_health_changes
from ..qaic.model import Soc
from ..scan.qaic_util_poll import QaicUtilPolling, paced_scan
from .backend import DRIVER_NAME, QaicDraDriver
from .claim_status import device_status
from .device_plugin_socs import DevicePluginSocs
from .settings import DraSettings

log = logging.getLogger(__name__)

RETRY_SECONDS = (0.2, 10.0)  # API server unreachable: back off between these


def kube_client(dra: DraSettings) -> AsyncClient:
    config = KubeConfig.from_file(dra.kubeconfig) if dra.kubeconfig else KubeConfig.from_env()
    return AsyncClient(config=config)


class DraApp:
    def __init__(self, settings: Settings, dra: DraSettings, client: AsyncClient) -> None:
        self.settings = settings
        self.dra = dra
        self.client = client
        self.inventory = Inventory(
            settings.sysfs_root,
            settings.dev_root,
            settings.sku_overrides,
            ue_cooldown_seconds=settings.ue_cooldown_seconds,
        )
        # Whole Ultra cards and their parts too (dra/cards.py): the publisher writes the
        # counter sets that keep them apart from their SoCs.
        self.driver = QaicDraDriver(dra.node_name, settings.cdi_dir, partitions=True,
                                    shares=settings.allowed_shares,
                                    monitor_device=dra.monitor_device)
        self.publisher = SlicePublisher(client, DRIVER_NAME, dra.node_name)
        checkpoint = Checkpoint(dra.plugins_dir / DRIVER_NAME / "checkpoint.json")
        checkpoint.load()
        self.node = NodeService(self.driver, ApiClaimSource(client, DRIVER_NAME), checkpoint)
        self.claim_status = ClaimStatusWriter(client, DRIVER_NAME)
        self.node.on_prepared.append(self._report)
        self.node.on_unprepared.append(lambda ref: self.claim_status.forget(ref.uid))
        self._moved: set[str] = set()  # devices whose prepared claims need their specs again
        self._respec = asyncio.Event()
        self.health: HealthFeed = HealthFeed(())
        self.plugin = DraPlugin(
            DRIVER_NAME, self.node, plugins_dir=dra.plugins_dir, registry_dir=dra.registry_dir,
            pod_uid=dra.pod_uid, checkpoint=checkpoint, health=self.health,
        )
        self.metrics: MetricsSink = metrics_for(settings.metrics_port)
        self.qaic_util = QaicUtilPolling(settings, self.metrics.signal_unreadable)
        self.rescan = RescanGate(
            settings.sysfs_root, settings.dev_root, settings.full_rescan_period, time.monotonic
        )
        self._devices: list[Device] = []
        #: SoCs the device-plugin mode still holds or serves: not published until released.
        self.device_plugin_socs = DevicePluginSocs(settings.pod_resources_socket)
        self.driver.held_elsewhere = self._held_by_device_plugin
        self._dirty = asyncio.Event()
        self._publish = asyncio.Event()
        self.plugin.registration.on_registered.append(self._publish.set)
        self._tasks: list[asyncio.Task[None]] = []
        self.state: NodeState | None = None

    async def _held_by_device_plugin(self) -> dict[str, str]:
        """What pods of the device-plugin mode hold now, asked afresh at a prepare while the
        move from that mode is not over (kubelet answers from memory in milliseconds; never
        asked once it is over). A change is offered at once, so the prepare that asked sees
        a released SoC on the node again."""
        if self.device_plugin_socs.done:
            return {}
        if await self.device_plugin_socs.poll():
            self._offer()
        return dict(self.device_plugin_socs.withheld)

    def _socs(self) -> list[Soc]:
        return [s.soc for s in self.state.socs] if self.state is not None else []

    async def refresh(self) -> None:
        state = paced_scan(self.inventory, self.qaic_util, self.rescan, self.state)
        log_health_changes(self.state, state)
        self.metrics.observe_state(self.state, state, {DRIVER_NAME: list(state.socs)})
        self.state = state
        self._offer()
        if self.driver.moved or self._moved:  # (also retries what could not be done)
            self._moved |= self.driver.moved
            self._respec.set()
        for claim in self.node.prepared.values():
            self._report(claim)
        await self.health.publish(self.driver.health_reports())

    def _offer(self) -> None:
        """The devices to publish from the SoCs as last scanned, less the withheld ones."""
        socs = self.state.socs if self.state is not None else ()
        self._devices = self.driver.update(self.device_plugin_socs.offerable(socs))
        self._publish.set()

    def _report(self, claim: PreparedClaim) -> None:
        """The claim's status entries from its devices' SoCs as they are now (written only
        when they changed)."""
        self.claim_status.want(claim.ref, [
            device_status(d, self.driver.members(d.device)) for d in claim.allocation().devices
        ])

    # -- loops -------------------------------------------------------------------------------

    async def _spec_refresher(self) -> None:
        """Prepare again (in turn with kubelet's calls, across instances) the prepared claims
        whose devices' nodes changed, so a restarting container gets the SoC's node as it
        is now. Cheap when nothing moved: it waits."""
        while True:
            await self._respec.wait()
            self._respec.clear()
            moved, self._moved = frozenset(self._moved), set()
            async with self.plugin.turns.turn():
                done = await self.node.prepare_again_holding(self.dra.node_name, moved)
            failed = {uid for uid, outcome in done.items() if isinstance(outcome, str)}
            if failed:  # e.g. a SoC not back yet: again at the next refresh
                self._moved |= moved
            if done.keys() - failed:
                log.info("CDI specs of prepared claims written again", extra={
                    "event": "dra_specs_refreshed", "claims": sorted(done.keys() - failed),
                    "devices": sorted(moved)})

    async def _refresher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.refresh()

    async def _watch_dev(self) -> None:
        async for _ in watch_directory(self.settings.dev_root / "accel"):
            self._dirty.set()

    async def _resync(self) -> None:
        """The safety net under inotify: a fingerprint every QAIC_RESYNC_SECONDS, the full
        scan only when it changed or QAIC_FULL_RESCAN_SECONDS passed."""
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            if self.rescan.due(self._socs()):
                self._dirty.set()

    async def _publisher(self) -> None:
        """Sync the node's ResourceSlices with the server on every change of the SoCs, every
        (re-)registration with kubelet (a restarted kubelet wipes them), every change by
        someone else that the slice watch reports, and every QAIC_DRA_SLICE_RESYNC_SECONDS.
        A sync lists and writes only what differs. Back off while the API server refuses
        or is unreachable (counted, and /readyz says why), never give up."""
        delay = RETRY_SECONDS[0]
        while True:
            await wait_event(self._publish, self.dra.slice_resync_seconds)
            self._publish.clear()
            try:
                done = await self.publisher.sync(self._devices, self.driver.counter_sets)
            except (ApiError, httpx2.HTTPError) as e:
                status = "unreachable"
                if isinstance(e, ApiError):
                    status = str(e.status.code or "other")
                self.metrics.slice_publish_failed(status)
                log.warning(
                    "ResourceSlices not published; retrying",
                    extra={"event": "dra_publish_failed", "error": str(e), "retry_in": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_SECONDS[1])
                self._publish.set()
            else:
                self.metrics.slices_synced(done.applied, done.deleted)
                delay = RETRY_SECONDS[0]

    # -- probes ------------------------------------------------------------------------------

    def liveness(self) -> str | None:
        """Why the driver is not alive (/healthz), or None while every loop runs."""
        dead = [t.get_name() for t in self._tasks if t.done()]
        return "loops stopped: " + ", ".join(dead) if dead else None

    def readiness(self) -> str | None:
        """Why the driver is not ready (/readyz), or None while kubelet has it registered and
        the server holds its node's ResourceSlices as wanted (the scheduler can place claims
        here): not after a failed write, nor while slices someone deleted are missing."""
        if not self.plugin.registration.registered.is_set():
            return "not registered with kubelet"
        if self.publisher.problem is not None:
            return f"ResourceSlices not in place: {self.publisher.problem}"
        return None

    def _http(self) -> Coroutine[Any, Any, None]:
        from ..observability.http import serve_http_forever
        from ..observability.metrics import Metrics

        assert isinstance(self.metrics, Metrics)  # metrics_for(port) made one
        return serve_http_forever(
            self.settings.metrics_address,
            self.settings.metrics_port,
            self.metrics.registry,
            lambda: self.liveness() is None,
            reason=lambda: self.liveness() or "",
            unready=self.readiness,
        )

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {
            "refresher": self._refresher(),
            "dev-watch": self._watch_dev(),
            "resync": self._resync(),
            "qaic-util-poll": self.qaic_util.loop(lambda: self.state, self._dirty),
            "slice-publisher": self._publisher(),
            "slice-watch": self.publisher.watch(self._publish.set),
            "claim-status": self.claim_status.run(),
            "device-plugin-socs": self.device_plugin_socs.follow(self._dirty.set),
            "spec-refresh": self._spec_refresher(),
            "dra-sockets": self.plugin.run(),
        }

    async def run(self, stop: asyncio.Event) -> int:
        log.info(
            "starting",
            extra={
                "event": "start",
                "mode": "dra",
                "driver": DRIVER_NAME,
                "node": self.dra.node_name,
                "plugins_dir": str(self.dra.plugins_dir),
                "registry_dir": str(self.dra.registry_dir),
                "pod_uid": self.dra.pod_uid or None,  # per-pod sockets (rolling updates)
                "cdi_dir": str(self.settings.cdi_dir),
            },
        )
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.qaic_util.poll()
            await self.device_plugin_socs.poll()  # before the first slice is written
            await self.refresh()
            await self.plugin.start()
            loops = self.loops()
            if self.settings.metrics_port:
                loops["metrics-http"] = self._http()
            tasks = self._tasks = [asyncio.create_task(c, name=n) for n, c in loops.items()]
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            failed = [t for t in done if t is not stopper]
            for t in failed:
                log.error(
                    "internal loop died; exiting",
                    exc_info=t.exception(),
                    extra={"event": "loop_died", "loop": t.get_name()},
                )
            return 1 if failed else 0
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.plugin.close()
            await self.client.close()
            log.info("stopped", extra={"event": "stop"})
