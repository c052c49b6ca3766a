"""What every live figure shares: the counts, the samples, the inotify floor measured beside the
event figures, and the plugin process as deployed on the 16-Ultra node (bench/live/main_process.py
and its siblings take the figures; the grpcio floors both jobs share are in bench/common)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncinotify import Inotify, Mask

from bench.common.errors import BenchError
from bench.quality.simulation import ultra_cards
from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode, FakeSoc
from qaic_device_plugin.sim.process import PluginProcess, node_env

ULTRA = "qualcomm.com/qaic-ultra"
QAIC = "qualcomm.com/qaic"
SOCS = 64
SHARES = 16
MAX_MESSAGE = 4 * 1024 * 1024  # kubelet's gRPC client default receive limit


@dataclass(frozen=True)
class Counts:
    calls: int  # Allocate (1 and 4 SoCs), GetPreferredAllocation (1/2/4) and floor calls, each
    warmup: int
    allocates: int  # total Allocates before the "after" RSS
    flips: int  # device node removals (and as many restores)
    resets: int  # kernel-style resets (and as many recoveries)
    sysfs_signals: int  # sysfs-only signals each way (each waits for a resync tick)
    restarts: int
    starts: int
    share_flips: int
    snapshots: int
    builds: int
    quality_events: int
    crosscheck: int  # recorded preferred-allocation requests replayed against the process
    settle: float


FULL = Counts(2000, 50, 20_000, 200, 200, 6, 50, 10, 50, 200, 1000, 10_000, 10_000, 2.0)
QUICK = Counts(200, 20, 2_000, 20, 20, 1, 5, 2, 5, 20, 100, 1_000, 1_000, 1.0)


@dataclass
class Samples:
    """Raw results (seconds, MB, bytes); bench/live/rows.py turns them into rows."""

    values: dict[str, list[float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    load: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def mark_load(self, phase: str) -> None:
        self.load[phase] = os.getloadavg()


# -- the inotify floor ----------------------------------------------------------------------


async def _inotify_event(ino: Inotify, name: str, mask: Mask) -> None:
    """The next event for `name` with `mask`; older events (our flips) are skipped."""
    async with asyncio.timeout(10):
        while True:
            ev = await ino.get()
            if ev.name is not None and ev.name.name == name and ev.mask & mask:
                return


async def inotify_floor(ino: Inotify, probe: Path, out: Samples) -> None:
    """One create and one delete of a probe file in the watched directory, each timed from the
    syscall to the event arriving in an asyncio loop (the plugin's own path: asyncinotify)."""
    t0 = time.monotonic()
    probe.touch()
    await _inotify_event(ino, probe.name, Mask.CREATE)
    out.add("floor.inotify", time.monotonic() - t0)
    t0 = time.monotonic()
    probe.unlink()
    await _inotify_event(ino, probe.name, Mask.DELETE)
    out.add("floor.inotify", time.monotonic() - t0)


# -- the plugin process ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_plugin(
    node: FakeNode, plugin_dir: Path, log: Path, **env: str
) -> AsyncIterator[PluginProcess]:
    plugin = PluginProcess({**node_env(node, plugin_dir), **env}, log)
    await plugin.start()
    try:
        yield plugin
    finally:
        if plugin.returncode is None:
            rc = await plugin.stop(timeout=10)
            if rc != 0:
                raise BenchError(f"plugin exited {rc} on SIGTERM; see {log}")


@contextlib.asynccontextmanager
async def ultra_node_with_plugin(
    work: Path, tag: str, **env: str
) -> AsyncIterator[tuple[FakeNode, KubeletSim, PluginProcess]]:
    """A fresh 16-Ultra node, a kubelet simulator and the plugin on it (`env` on top of the
    node's), each under `work` by `tag`."""
    node = FakeNode(work / f"node-{tag}", ultra_cards())
    node.write()
    plugin_dir = work / f"plugins-{tag}"
    async with (
        KubeletSim(plugin_dir) as kubelet,
        running_plugin(node, plugin_dir, work / f"plugin-{tag}.log", **env) as plugin,
    ):
        yield node, kubelet, plugin


async def wait_devices(
    kubelet: KubeletSim, plugin: PluginProcess, resource: str, healthy: int, timeout: float = 60
) -> None:
    try:
        await kubelet.wait_devices(resource, healthy=healthy, timeout=timeout)
    except TimeoutError:
        tail = "\n".join(plugin.log_text().splitlines()[-20:])
        raise BenchError(
            f"{resource}: kubelet never saw {healthy} healthy devices "
            f"(exit code {plugin.returncode}); plugin log tail:\n{tail}"
        ) from None


def _cards(node: FakeNode) -> list[list[FakeSoc]]:
    cards: dict[str, list[FakeSoc]] = {}
    for s in node.socs:
        cards.setdefault(s.card_id, []).append(s)
    return [cards[c] for c in sorted(cards)]


def _alloc(ids: Sequence[str]) -> pb.AllocateRequest:
    return pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)])


def _pref(available: Sequence[str], size: int) -> pb.PreferredAllocationRequest:
    return pb.PreferredAllocationRequest(
        container_requests=[
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=list(available), allocation_size=size
            )
        ]
    )


def _health(kubelet: KubeletSim, resource: str, device: str) -> str | None:
    view = kubelet.resources.get(resource)
    return None if view is None else view.health.get(device)
