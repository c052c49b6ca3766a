"""Kubelet restarts in a row, half of them while a ListAndWatch snapshot is in flight and half
while Allocate calls are in flight: every restart is followed by a Register of every resource,
and the plugin process ends with the sockets, threads and file descriptors it started with."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc import aio
from reliability_harness import Report, resources, scale, settle

from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

pytestmark = pytest.mark.reliability

StartPlugin = Callable[..., Awaitable[PluginProcess]]
ULTRA, STD, PRO = "qualcomm.com/qaic-ultra", "qualcomm.com/qaic-std", "qualcomm.com/qaic-pro"
COUNTS = {ULTRA: 8, STD: 1, PRO: 1}
SOCKETS = sorted(
    [
        "kubelet.sock",
        "qualcomm.com_qaic-pro.sock",
        "qualcomm.com_qaic-std.sock",
        "qualcomm.com_qaic-ultra.sock",
    ]
)
# A call cut off by the restart itself: kubelet's side of the channel went away.
CUT_OFF = {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
WARMUP = 3  # restarts before the baseline: gRPC starts some threads lazily, once


def registered_at_least(n: int) -> Callable[[KubeletSim], bool]:
    return lambda k: len(k.registrations) >= n


async def _allocate_once(kubelet: KubeletSim, ids: list[str]) -> str:
    """One Allocate against whatever kubelet currently knows; the outcome's name."""
    try:
        await kubelet.allocate(ULTRA, ids)
    except aio.AioRpcError as e:
        return "cut_off" if e.code() in CUT_OFF else f"failed:{e.code().name}"
    except aio.UsageError:  # the simulator closed this channel before the call started
        return "cut_off"
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # we were cancelled, not the call
        return "cut_off"  # grpc reports a call on a channel closed under it this way
    return "ok"


async def test_kubelet_restarts_reregister_and_leak_nothing(
    node: FakeNode,
    kubelet: KubeletSim,
    start_plugin: StartPlugin,
    sockets: Callable[[], list[str]],
    report: Report,
) -> None:
    restarts = scale(20, 200)
    report.tried = "kubelet restarts (half mid-ListAndWatch, half with Allocate in flight)"
    rng = random.Random(6)
    # qaic-util is polled once at start only: its pipes would blur the fd count.
    plugin = await start_plugin(
        QAIC_SKU_BASED_RESOURCE_ENABLED="1", QAIC_HEALTH_POLL_SECONDS="3600"
    )
    for r, n in COUNTS.items():
        await kubelet.wait_devices(r, healthy=n)
    ultra = [s.pci_address for s in node.socs if s.sku.value == "ultra"]
    flipped = ultra[0]  # the one whose health changes mid-stream; never allocated
    allocatable = ultra[1:]

    registered = len(kubelet.registrations)
    outcomes: Counter[str] = Counter()
    in_flight_at_restart = 0
    missed: list[int] = []
    baseline = None
    for i in range(WARMUP + restarts):
        mid_stream = i % 2 == 0
        calls: list[asyncio.Task[str]] = []
        if mid_stream:
            # A health change the plugin is busy sending when kubelet goes away.
            node.remove_device_node(flipped)
        else:
            calls = [
                asyncio.create_task(_allocate_once(kubelet, rng.sample(allocatable, 2)))
                for _ in range(8)
            ]
            await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
            in_flight_at_restart += sum(not c.done() for c in calls)
        await kubelet.restart()
        if mid_stream:
            node.restore_device_node(flipped)
        for c in calls:
            outcomes[await c] += 1
        registered += len(COUNTS)
        try:
            await kubelet.wait_for(registered_at_least(registered), timeout=5)
            for r, n in COUNTS.items():
                await kubelet.wait_devices(r, healthy=n, timeout=5)
        except TimeoutError:
            missed.append(i)
            await kubelet.wait_for(registered_at_least(registered), timeout=30)
        assert sockets() == SOCKETS, f"restart {i}: {sockets()}"
        if i + 1 == WARMUP:
            baseline = await settle(lambda: resources(plugin.pid), resources(plugin.pid), 1.0)
    assert baseline is not None
    after = await settle(lambda: resources(plugin.pid), baseline)
    per_resource = Counter(r.resource for r in kubelet.registrations)

    report.count = restarts
    report.lost = len(missed)
    report.details.update(
        registrations=dict(per_resource),
        allocates=dict(outcomes),
        allocates_in_flight_at_restart=in_flight_at_restart,
        threads=f"{baseline.threads}->{after.threads}",
        fds=f"{baseline.fds}->{after.fds}",
        sockets=len(sockets()),
    )
    assert plugin.returncode is None, "the plugin died"
    assert not missed, f"restarts not followed by registration within 5 s: {missed}"
    assert all(n == 1 + WARMUP + restarts for n in per_resource.values()), per_resource
    assert kubelet.rejections == []
    assert not [o for o in outcomes if o.startswith("failed")], outcomes
    assert after.threads <= baseline.threads, (baseline, after)
    assert after.fds <= baseline.fds, (baseline.kind_counts(), after.kind_counts())
    assert not plugin.events("loop_died")
