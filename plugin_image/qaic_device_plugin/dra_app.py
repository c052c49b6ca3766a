"""DRA mode (QAIC_ALLOCATION_API=dra): one event loop that keeps discovery, the node's
ResourceSlices and the kubelet DRA plugin in step.

Discovery and health are the device-plugin mode's (Inventory, qaic-util Status, inotify on
/dev/accel, periodic rescan); instead of ListAndWatch, every change is published as
ResourceSlices, and claims are prepared through the generic kubelet/dra machinery.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.models.resource_v1 import Device

from .aio import wait_event
from .dra_backend import DRIVER_NAME, QaicDraDriver
from .dra_settings import DraSettings
from .fswatch import watch_directory
from .kubelet.dra.checkpoint import Checkpoint
from .kubelet.dra.claims import ApiClaimSource
from .kubelet.dra.node import NodeService
from .kubelet.dra.plugin import DraPlugin
from .kubelet.dra.slices import SlicePublisher
from .qaic.inventory import Inventory, NodeState, log_health_changes
from .qaic.model import QaicUtilEntry
from .qaic.qaic_util import QaicUtilFinder
from .settings import Settings

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
        self.driver = QaicDraDriver(dra.node_name, settings.cdi_dir)
        self.publisher = SlicePublisher(client, DRIVER_NAME, dra.node_name)
        checkpoint = Checkpoint(dra.plugins_dir / DRIVER_NAME / "checkpoint.json")
        checkpoint.load()
        self.node = NodeService(self.driver, ApiClaimSource(client, DRIVER_NAME), checkpoint)
        self.plugin = DraPlugin(
            DRIVER_NAME, self.node, plugins_dir=dra.plugins_dir, registry_dir=dra.registry_dir
        )
        self.qaic_util_finder = QaicUtilFinder(settings.qaic_util_path)
        self._qaic_util: list[QaicUtilEntry] | None = None
        self._devices: list[Device] = []
        self._dirty = asyncio.Event()
        self._publish = asyncio.Event()
        self.state: NodeState | None = None

    def refresh(self) -> None:
        state = self.inventory.scan(self._qaic_util)
        log_health_changes(self.state, state)
        self.state = state
        self._devices = self.driver.update(state.socs)
        self._publish.set()

    async def poll_qaic_util(self) -> None:
        """One qaic-util run, looked for again each poll (the SDK may be mounted later); the
        finder says once what its absence costs. Unreadable is not unhealthy."""
        probe = await self.qaic_util_finder.find(self.settings.qaic_util_timeout_seconds)
        self._qaic_util = probe.entries
        if probe.path is not None and probe.error is not None:
            log.warning(
                "qaic-util failed", extra={"event": "qaic_util_failed", "error": probe.error}
            )

    # -- loops -------------------------------------------------------------------------------

    async def _refresher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self.refresh()

    async def _watch_dev(self) -> None:
        async for _ in watch_directory(self.settings.dev_root / "accel"):
            self._dirty.set()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            self._dirty.set()

    async def _qaic_util_poller(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_poll_seconds)
            await self.poll_qaic_util()
            self._dirty.set()

    async def _publisher(self) -> None:
        """Publish on every change; re-list now and then (someone may have edited our slices);
        back off while the API server is unreachable, never give up."""
        delay, force = RETRY_SECONDS[0], True
        while True:
            await wait_event(self._publish, self.dra.slice_resync_seconds)
            force |= not self._publish.is_set()
            self._publish.clear()
            try:
                await self.publisher.publish(self._devices, force=force)
                delay, force = RETRY_SECONDS[0], False
            except (ApiError, httpx2.HTTPError) as e:
                log.warning(
                    "ResourceSlices not published; retrying",
                    extra={"event": "dra_publish_failed", "error": str(e), "retry_in": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_SECONDS[1])
                self._publish.set()

    def loops(self) -> dict[str, Coroutine[Any, Any, None]]:
        return {
            "refresher": self._refresher(),
            "dev-watch": self._watch_dev(),
            "resync": self._resync(),
            "qaic-util-poll": self._qaic_util_poller(),
            "slice-publisher": self._publisher(),
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
                "cdi_dir": str(self.settings.cdi_dir),
            },
        )
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.poll_qaic_util()
            self.refresh()
            await self.plugin.start()
            tasks = [asyncio.create_task(c, name=n) for n, c in self.loops().items()]
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
