"""DRA mode's node side: our real SlicePublisher, one per fake node, fed by the real discovery.

One FakeNode (four Ultra cards, 16 SoCs) is written to a temporary directory and read the way
the driver reads a node: the fake qaic-util run once, Inventory.scan, then
QaicDraDriver.update, which gives the very devices the driver publishes. Every fake node
publishes that device list under its own node name (the pool), each through a SlicePublisher
of its own, as every node's driver would; they share one lightkube client, since they share one
process here.

The per-node slice watch (SlicePublisher.watch) is not run: N long-lived watches from one Python
process measure the process, not the API server. What is measured is what each node's driver
writes: at start, and in an idle period (one resync of every publisher with nothing changed,
which the driver does every QAIC_DRA_SLICE_RESYNC_SECONDS).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.models.resource_v1 import Device

from bench.common.errors import BenchError
from qaic_device_plugin.dra.backend import DRIVER_NAME, QaicDraDriver
from qaic_device_plugin.kubelet.dra.slices import SlicePublisher
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.qaic.qaic_util import query_qaic_util
from qaic_device_plugin.sim.node import CardSpec, FakeNode

from .kube import metric_sum

ULTRA_CARDS = 4
SYNC_CONCURRENCY = 16  # publishers syncing at once (nodes' drivers start in waves, not all at once)
WRITE_VERBS = ("CREATE", "UPDATE", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")


@dataclass(frozen=True)
class NodeLayout:
    devices: list[Device]
    card_of: dict[str, str]  # SoC device name -> cardID attribute

    @property
    def socs(self) -> int:
        return len(self.card_of)


async def discover(cards: Sequence[CardSpec] | None = None) -> NodeLayout:
    """The driver's devices for one fake node, through the driver's own discovery path."""
    with tempfile.TemporaryDirectory(prefix="qaic-scale-node-") as d:
        root = Path(d)
        node = FakeNode(root / "node", list(cards or [CardSpec(Sku.ULTRA, numa_node=i % 2)
                                                      for i in range(ULTRA_CARDS)]))
        node.write()
        entries = await query_qaic_util(str(node.qaic_util_path), 30.0)
        state = Inventory(node.sysfs_root, node.dev_root, {}).scan(entries)
        unhealthy = [s.soc.pci_address for s in state.socs if not s.healthy]
        if unhealthy or not state.socs:
            raise BenchError(f"fake node: {len(state.socs)} SoCs, unhealthy {unhealthy}")
        devices = QaicDraDriver("template", root / "cdi").update(state.socs)
    card_of = {}
    for dev in devices:
        attrs = dev.to_dict().get("attributes", {})
        if "resource.kubernetes.io/pciBusID" not in attrs:
            continue  # not a SoC (a whole card or a part of one, if the driver offers them)
        card = attrs.get("cardID", {}).get("string")
        if card is None:
            raise BenchError(f"device {dev.name} has no cardID attribute")
        card_of[dev.name] = card
    return NodeLayout(devices, card_of)


async def _sync(pub: SlicePublisher, devices: Sequence[Device]) -> None:
    """One resync through the publisher's public API: `sync` (writes only what differs), or at
    older commits `publish(force=True)`, which is what the driver's periodic resync called."""
    sync: Any = getattr(pub, "sync", None)
    if sync is not None:
        await sync(devices)
    else:
        publish: Any = getattr(pub, "publish")  # noqa: B009 - absent from newer publishers
        await publish(devices, force=True)


def slice_requests(metrics: str) -> dict[str, float]:
    """resourceslices requests the API server has served so far: writes and reads."""
    name = "apiserver_request_total"
    writes = sum(metric_sum(metrics, name, resource="resourceslices", verb=v)
                 for v in WRITE_VERBS)
    reads = sum(metric_sum(metrics, name, resource="resourceslices", verb=v)
                for v in ("GET", "LIST"))
    return {"writes": writes, "reads": reads}


class Publishers:
    def __init__(self, kubeconfig: Path, nodes: Sequence[str], layout: NodeLayout) -> None:
        self.client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)))
        self.layout = layout
        self.pubs = [SlicePublisher(self.client, DRIVER_NAME, n) for n in nodes]

    async def sync_all(self) -> float:
        """Every node's publisher syncs once; returns the seconds the round took."""
        sem = asyncio.Semaphore(SYNC_CONCURRENCY)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def one(pub: SlicePublisher) -> None:
            async with sem:
                await _sync(pub, self.layout.devices)

        await asyncio.gather(*(one(p) for p in self.pubs))
        return loop.time() - t0

    async def close(self) -> None:
        await self.client.close()
