"""DRA mode's node side: our real SlicePublisher, one per fake node, fed by the real discovery.

One FakeNode (16 SoCs: four Ultra cards, or with `--node-cards mixed` three Ultra cards and
two Standard and two Pro cards of one SoC each) is written to a temporary directory and read
the way the driver reads a node: the fake qaic-util run once, Inventory.scan, then
QaicDraDriver.update, which gives the very devices the driver publishes: by default as the
driver ships since 699f29a (`partitions=True`: each SoC, each whole Ultra card and its ten
parts, and the counter sets that keep them apart, in a slice of their own), with
`partitions=False` the 16 SoC devices alone (what the driver published before). Every fake
node publishes that device list under its own node name (the pool), each through a
SlicePublisher of its own, as every node's driver would; they share one lightkube client, since
they share one process here.

The per-node slice watch (SlicePublisher.watch) is not run: N long-lived watches from one Python
process measure the process, not the API server. What is measured is what each node's driver
writes: at start, in an idle period (one resync of every publisher with nothing changed,
which the driver does every QAIC_DRA_SLICE_RESYNC_SECONDS), per health change, and after a
kubelet restart on every node (`rewrite_after_wipe`).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import AsyncClient, KubeConfig
from lightkube.models.resource_v1 import Device

from bench.common.errors import BenchError
from qaic_device_plugin.dra.backend import DRIVER_NAME, QaicDraDriver
from qaic_device_plugin.dra.settings import DraSettings
from qaic_device_plugin.kubelet.dra.slices import SlicePublisher, SyncResult
from qaic_device_plugin.qaic.inventory import Inventory
from qaic_device_plugin.qaic.model import Sku
from qaic_device_plugin.qaic.qaic_util import query_qaic_util
from qaic_device_plugin.sim.node import CardSpec, FakeNode

from .kube import Kube, metric_sum

ULTRA_CARDS = 4
#: --node-cards: the cards of every fake node (16 SoCs either way) and how reports name them
NODE_CARDS = {"ultra": "four Ultra cards",
              "mixed": "3 Ultra cards (12 SoCs) + 2 Standard + 2 Pro cards (1 SoC each)"}
DEFAULT_NODE_CARDS = "ultra"
SYNC_CONCURRENCY = 16  # publishers syncing at once (nodes' drivers start in waves, not all at once)
WRITE_VERBS = ("CREATE", "UPDATE", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")


#: The driver's default resync period: an idle hour is 3600 / this many resyncs of each node.
RESYNC_SECONDS = float(DraSettings.model_fields["slice_resync_seconds"].default)
SETTLE_SECONDS = 5.0  # after the last node is back: time for a late extra write to show
UNHEALTHY_STATUS = "Error"  # what qaic-util prints for the SoC the health change takes down


@dataclass(frozen=True)
class Devices:
    """What one node's driver hands its publisher: devices and the counter sets they use."""

    devices: list[Device]
    counter_sets: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class NodeLayout:
    devices: list[Device]
    card_of: dict[str, str]  # SoC device name -> cardID attribute
    counter_sets: list[dict[str, Any]] = field(default_factory=list)
    #: every published device -> the SoC devices it uses (a SoC: itself; a card or part: its
    #: SoCs), so an allocated card counts as its four SoCs
    members: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: the same node after one SoC turned unhealthy (qaic-util Status Error), through the
    #: same driver's update: the health change every node goes through
    one_unhealthy: Devices | None = None
    partitions: bool = False

    @property
    def socs(self) -> int:
        return len(self.card_of)

    @property
    def healthy(self) -> Devices:
        return Devices(self.devices, self.counter_sets)


def node_cards(kind: str) -> list[CardSpec]:
    """The cards of one fake node: `ultra` (four Ultra cards, issue 22's node) or `mixed` (its
    mixed-SKU variant: the same 16 SoCs, but only three cards that can hold a 4-SoC job).
    Cards alternate between the two NUMA nodes, as a two-socket server spreads its slots."""
    if kind == "ultra":
        skus = [Sku.ULTRA] * ULTRA_CARDS
    elif kind == "mixed":
        skus = [Sku.ULTRA] * 3 + [Sku.STANDARD] * 2 + [Sku.PRO] * 2
    else:
        raise BenchError(f"node cards: {kind!r} is not one of {', '.join(NODE_CARDS)}")
    return [CardSpec(sku, numa_node=i % 2) for i, sku in enumerate(skus)]


async def _scan(node: FakeNode) -> list[Any]:
    entries = await query_qaic_util(str(node.qaic_util_path), 30.0)
    return list(Inventory(node.sysfs_root, node.dev_root, {}).scan(entries).socs)


async def discover(cards: Sequence[CardSpec] | None = None, *,
                   partitions: bool = True) -> NodeLayout:
    """The driver's devices for one fake node, through the driver's own discovery path, and
    the devices after one of its SoCs failed (the driver's update path once more)."""
    with tempfile.TemporaryDirectory(prefix="qaic-scale-node-") as d:
        root = Path(d)
        node = FakeNode(root / "node", list(cards or node_cards(DEFAULT_NODE_CARDS)))
        node.write()
        socs = await _scan(node)
        unhealthy = [s.soc.pci_address for s in socs if not s.healthy]
        if unhealthy or not socs:
            raise BenchError(f"fake node: {len(socs)} SoCs, unhealthy {unhealthy}")
        driver = QaicDraDriver("template", root / "cdi", partitions=partitions)
        devices = driver.update(socs)
        counter_sets = list(driver.counter_sets)
        members = {dev.name: tuple(sorted(driver.units(dev.name))) for dev in devices}
        victim = socs[0].soc.pci_address
        node.set_status(victim, UNHEALTHY_STATUS)
        after = await _scan(node)
        if all(s.healthy for s in after):
            raise BenchError(f"fake node: SoC {victim} still healthy with Status "
                             f"{UNHEALTHY_STATUS}")
        one_unhealthy = Devices(driver.update(after), list(driver.counter_sets))
    card_of = {}
    for dev in devices:
        attrs = dev.to_dict().get("attributes", {})
        if "resource.kubernetes.io/pciBusID" not in attrs:
            continue  # not a SoC (a whole card or a part of one, if the driver offers them)
        card = attrs.get("cardID", {}).get("string")
        if card is None:
            raise BenchError(f"device {dev.name} has no cardID attribute")
        card_of[dev.name] = card
    return NodeLayout(devices, card_of, counter_sets, members, one_unhealthy, partitions)


async def _sync(pub: SlicePublisher, want: Devices) -> int:
    """One resync through the publisher's public API, as the driver's loop calls it; returns
    the slices it wrote (applied or deleted)."""
    done: SyncResult = await pub.sync(want.devices, want.counter_sets)
    return done.applied + done.deleted


def slice_requests(metrics: str) -> dict[str, float]:
    """resourceslices requests the API server has served so far: writes and reads."""
    name = "apiserver_request_total"
    writes = sum(metric_sum(metrics, name, resource="resourceslices", verb=v)
                 for v in WRITE_VERBS)
    reads = sum(metric_sum(metrics, name, resource="resourceslices", verb=v)
                for v in ("GET", "LIST"))
    return {"writes": writes, "reads": reads}


@dataclass
class Round:
    """One round of syncs: how long it took and what each node wrote (its SyncResults)."""

    seconds: float
    writes: list[int]

    def summary(self) -> dict[str, Any]:
        return {"seconds": round(self.seconds, 2),
                "writes_per_node_max": max(self.writes, default=0),
                "nodes_that_wrote": sum(1 for w in self.writes if w)}


class Publishers:
    def __init__(self, kubeconfig: Path, nodes: Sequence[str], layout: NodeLayout) -> None:
        self.client = AsyncClient(config=KubeConfig.from_file(str(kubeconfig)))
        self.layout = layout
        self.pubs = [SlicePublisher(self.client, DRIVER_NAME, n) for n in nodes]
        self.want = layout.healthy

    async def sync_all(self, want: Devices | None = None) -> Round:
        """Every node's publisher syncs once (to `want`, from now on; default: what they
        publish already)."""
        self.want = want or self.want
        sem = asyncio.Semaphore(SYNC_CONCURRENCY)
        t0 = time.monotonic()

        async def one(pub: SlicePublisher) -> int:
            async with sem:
                return await _sync(pub, self.want)

        writes = await asyncio.gather(*(one(p) for p in self.pubs))
        return Round(time.monotonic() - t0, list(writes))

    async def rewrite_after_wipe(self, kube: Kube, timeout: float = 600.0) -> dict[str, Any]:
        """Every node's kubelet restarts at once: each deletes all slices of its node
        (kubelet's DRA manager at start: DELETE of the collection, fieldSelector
        spec.nodeName=<node>, all drivers), all N at once. Each node's driver hears it from its
        slice watch (`SlicePublisher.watch`: a DELETED event for a slice it wants wakes the
        driver's publish loop, which syncs) and writes its slices again.

        Here one cluster-wide watch stands for the N per-node watches (one connection, not N:
        see the module's docstring) and wakes each node's own publish loop, which coalesces
        wakes as the driver's does (an event set while a sync runs gives one more sync).
        Returns the time until every node has all its slices back, the writes per node
        (SyncResults, the most any node wrote) and the syncs each node ran."""
        by_node = {p.node: p for p in self.pubs}
        per_node = len(await _stored_names(kube, self.pubs[0].node))
        present = {n: set(await _stored_names(kube, n)) for n in by_node}
        wake = {n: asyncio.Event() for n in by_node}
        writes, syncs = dict.fromkeys(by_node, 0), dict.fromkeys(by_node, 0)
        wiped: set[str] = set()  # nodes whose wipe the watch has shown
        waiting = set(by_node)  # nodes not yet wiped and written again
        back = asyncio.Event()
        path = "/apis/resource.k8s.io/v1/resourceslices"
        rv = (await kube.list(path, limit="1"))["metadata"]["resourceVersion"]

        async def watch() -> None:
            async for kind, obj in kube.watch(path, rv):
                node = obj["spec"].get("nodeName")
                if node not in by_node or obj["spec"].get("driver") != DRIVER_NAME:
                    continue
                name = obj["metadata"]["name"]
                if kind == "DELETED":
                    present[node].discard(name)
                    wiped.add(node)
                    wake[node].set()  # the driver's watch: a wanted slice deleted -> sync
                    continue
                present[node].add(name)
                if node in wiped and len(present[node]) >= per_node:
                    waiting.discard(node)
                    if not waiting:
                        back.set()

        async def loop(node: str) -> None:
            while True:
                await wake[node].wait()
                wake[node].clear()
                syncs[node] += 1
                writes[node] += await _sync(by_node[node], self.want)

        watcher = asyncio.create_task(watch())
        loops = [asyncio.create_task(loop(n)) for n in by_node]
        try:
            t0 = time.monotonic()
            await asyncio.gather(*(kube.delete_collection(
                path, fieldSelector=f"spec.nodeName={n}") for n in by_node))
            deletes_s = time.monotonic() - t0
            await asyncio.wait_for(back.wait(), timeout)
            all_back_s = time.monotonic() - t0
            await asyncio.sleep(SETTLE_SECONDS)  # a late wake would write again: counted
        finally:
            for t in (watcher, *loops):
                t.cancel()
            await asyncio.gather(watcher, *loops, return_exceptions=True)
        return {"slices_per_node": per_node, "deletes_sent_s": round(deletes_s, 2),
                "all_back_s": round(all_back_s, 2),
                "writes_per_node_max": max(writes.values()),
                "writes_per_node_mean": round(sum(writes.values()) / len(writes), 2),
                "syncs_per_node_max": max(syncs.values())}

    async def close(self) -> None:
        await self.client.close()


async def _stored_names(kube: Kube, node: str) -> list[str]:
    items = (await kube.list("/apis/resource.k8s.io/v1/resourceslices",
                             fieldSelector=f"spec.nodeName={node},spec.driver={DRIVER_NAME}"))
    return [i["metadata"]["name"] for i in items["items"]]
