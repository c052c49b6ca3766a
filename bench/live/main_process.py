"""The main live run: one `qaic-device-plugin` process (the console script, as deployed) on a fake
16-Ultra node, driven by the kubelet simulator over real Unix sockets: RSS, Allocate and
GetPreferredAllocation latency, the preferred-allocation cross-check, then the event figures
(bench/live/events.py), each next to a floor measured in the same run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import procfs
from bench.common.errors import BenchError
from bench.common.floors import FloorServer
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

from .base import (
    SOCS,
    ULTRA,
    Counts,
    Samples,
    _alloc,
    _cards,
    _pref,
    ultra_node_with_plugin,
    wait_devices,
)
from .events import _flips, _restarts, _sysfs_signals


async def main_process(
    counts: Counts,
    work: Path,
    out: Samples,
    floor: FloorServer,
    preferred_inputs: dict[int, list[list[str]]],
    crosscheck: Sequence[tuple[list[str], int, list[str]]],
) -> None:
    """One plugin in SKU mode on 16 Ultra cards: RSS, Allocate and GetPreferredAllocation
    latency, health flips, resets, the preferred-allocation cross-check, kubelet restarts."""
    async with ultra_node_with_plugin(work, "main", QAIC_SKU_BASED_RESOURCE_ENABLED="1") as (
        node,
        kubelet,
        plugin,
    ):
        await wait_devices(kubelet, plugin, ULTRA, SOCS)
        await asyncio.sleep(counts.settle)
        for _ in range(10):
            await floor.empty()
        out.facts["rss_idle_mb"] = procfs.rss_mb(plugin.pid)
        out.facts["floor_rss_mb"] = procfs.rss_mb(floor.proc.pid)
        out.facts["threads_idle"] = procfs.threads(plugin.pid)
        out.facts["fds_idle"] = procfs.open_fds(plugin.pid)
        out.mark_load("rss_idle")

        await _latency(counts, kubelet, node, out, floor, preferred_inputs)
        out.mark_load("latency")
        await _allocate_more(counts, kubelet, node, plugin, out)
        out.mark_load("allocates")
        await _crosscheck(kubelet, crosscheck[: counts.crosscheck], out)
        await _flips(counts, kubelet, node, out)
        out.mark_load("flips")
        await _sysfs_signals(counts, kubelet, node, out)
        out.mark_load("sysfs_signals")
        await _restarts(counts, kubelet, plugin, out)
        out.mark_load("restarts")
        out.facts["plugin_log_lines"] = len(plugin.log_text().splitlines())


async def _latency(
    counts: Counts,
    kubelet: KubeletSim,
    node: FakeNode,
    out: Samples,
    floor: FloorServer,
    preferred_inputs: dict[int, list[list[str]]],
) -> None:
    """Interleaved, so the floor and every call kind see the same machine load."""
    stub = kubelet.resources[ULTRA].stub
    one = [_alloc([s.pci_address]) for s in node.socs]
    four = [_alloc([s.pci_address for s in card]) for card in _cards(node)]
    prefs = {size: [_pref(a, size) for a in avail] for size, avail in preferred_inputs.items()}
    check = await stub.Allocate(four[0], timeout=10)
    if len(check.container_responses[0].devices) != 4:
        raise BenchError(f"Allocate of 4 SoCs returned {check}")
    clock = time.perf_counter
    for i in range(counts.warmup + counts.calls):
        keep = i >= counts.warmup
        t0 = clock()
        await floor.empty()
        t1 = clock()
        await stub.Allocate(one[i % len(one)], timeout=10)
        t2 = clock()
        await stub.Allocate(four[i % len(four)], timeout=10)
        t3 = clock()
        if keep:
            out.add("floor.unary", t1 - t0)
            out.add("allocate.1", t2 - t1)
            out.add("allocate.4", t3 - t2)
        for size, reqs in prefs.items():
            t4 = clock()
            await stub.GetPreferredAllocation(reqs[i % len(reqs)], timeout=10)
            if keep:
                out.add(f"preferred.{size}", clock() - t4)
    out.facts["allocates_in_latency"] = 2 * (counts.warmup + counts.calls) + 1


async def _allocate_more(
    counts: Counts, kubelet: KubeletSim, node: FakeNode, plugin: PluginProcess, out: Samples
) -> None:
    stub = kubelet.resources[ULTRA].stub
    one = [_alloc([s.pci_address]) for s in node.socs]
    four = [_alloc([s.pci_address for s in card]) for card in _cards(node)]
    done = int(out.facts["allocates_in_latency"])
    # Warm (every call kind served thousands of times): growth from here on would be a leak.
    out.facts["rss_warm_mb"] = procfs.rss_mb(plugin.pid)
    i = 0
    while done < counts.allocates:
        await stub.Allocate(one[i % len(one)] if i % 2 else four[i % len(four)], timeout=10)
        done += 1
        i += 1
    await asyncio.sleep(counts.settle)
    out.facts["allocates_total"] = done
    out.facts["rss_after_mb"] = procfs.rss_mb(plugin.pid)
    out.facts["rss_hwm_mb"] = procfs.status_field(plugin.pid, "VmHWM") * 1024 / 1e6
    out.facts["threads_after"] = procfs.threads(plugin.pid)
    out.facts["fds_after"] = procfs.open_fds(plugin.pid)


async def _crosscheck(
    kubelet: KubeletSim, requests: Sequence[tuple[list[str], int, list[str]]], out: Samples
) -> None:
    """Replay the simulation's preferred-allocation requests against the process: the process
    (card ids from its own sysfs discovery) must answer exactly as the pure function did."""
    stub = kubelet.resources[ULTRA].stub
    mismatches = 0
    for available, size, chosen in requests:
        resp = await stub.GetPreferredAllocation(_pref(available, size), timeout=10)
        if list(resp.container_responses[0].deviceIDs) != chosen:
            mismatches += 1
    out.facts["crosscheck_requests"] = len(requests)
    out.facts["crosscheck_mismatches"] = mismatches
