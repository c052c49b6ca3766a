"""SIGTERM at awkward moments: while Register is in flight (before and after kubelet's
dial-back), during a burst of Allocates, and with kubelet absent. Every time: exit 0 within
2 s, and none of the plugin's sockets left behind."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from reliability_harness import Report, scale, start_and_await_socket

from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.qaic.statefile import STATE_DIR
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

pytestmark = pytest.mark.reliability

StartPlugin = Callable[..., Awaitable[PluginProcess]]
QAIC = "qualcomm.com/qaic"
SOCKET = "qualcomm.com_qaic.sock"
DEADLINE = 2.0


class StallingKubelet(KubeletSim):
    """Holds every Register open until `release` is set: before dialing the plugin back, or
    after the dial-back and GetDevicePluginOptions (ListAndWatch already streaming)."""

    def __init__(self, plugin_dir: Path, *, after_dial_back: bool) -> None:
        super().__init__(plugin_dir)
        self.after_dial_back = after_dial_back
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def _register(self, request: pb.RegisterRequest) -> str | None:
        if not self.after_dial_back:
            self.arrived.set()
            await self.release.wait()
            return await super()._register(request)
        reason = await super()._register(request)
        self.arrived.set()
        await self.release.wait()
        return reason


async def sigterm(plugin: PluginProcess) -> float:
    """SIGTERM; the seconds until exit. Fails if the exit code is not 0 or it takes > 2 s."""
    t0 = time.monotonic()
    rc = await plugin.stop(signal.SIGTERM, timeout=DEADLINE)
    took = time.monotonic() - t0
    assert rc == 0, f"exit code {rc}"
    return took


def own_sockets(plugin_dir: Path) -> list[str]:
    """What the plugin left in kubelet's dir, but its state subdirectory (kept on purpose)."""
    return sorted(p.name for p in plugin_dir.iterdir() if p.name not in ("kubelet.sock", STATE_DIR))


async def test_sigterm_during_registration(
    node: FakeNode, plugin_dir: Path, start_plugin: StartPlugin, report: Report
) -> None:
    rounds = scale(4, 20)
    report.tried = "SIGTERM while Register is in flight (before/after kubelet's dial-back)"
    times: list[float] = []
    for i in range(rounds):
        kubelet = StallingKubelet(plugin_dir, after_dial_back=i % 2 == 1)
        async with kubelet:
            plugin = await start_plugin()
            await asyncio.wait_for(kubelet.arrived.wait(), 10)
            times.append(await sigterm(plugin))
            assert own_sockets(plugin_dir) == [], f"round {i}: {own_sockets(plugin_dir)}"
            assert not plugin.events("registered"), "Register cannot have completed"
            kubelet.release.set()
        report.count = i + 1
    report.details.update(max_exit_s=round(max(times), 3))


async def test_sigterm_during_allocate_burst(
    node: FakeNode,
    kubelet: KubeletSim,
    plugin_dir: Path,
    start_plugin: StartPlugin,
    report: Report,
) -> None:
    rounds, burst = scale(4, 20), 400
    report.tried = f"SIGTERM during a burst of {burst} concurrent Allocates"
    ids = [s.pci_address for s in node.socs]
    outcomes: Counter[str] = Counter()
    times: list[float] = []

    async def one(n: int) -> str:
        try:
            await kubelet.allocate(QAIC, [ids[n % len(ids)]])
        except aio.AioRpcError as e:
            cut = e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
            return "cut_off" if cut else f"failed:{e.code().name}:{e.details()}"
        return "ok"

    for i in range(rounds):
        plugin = await start_plugin()
        await kubelet.wait_devices(QAIC, healthy=len(ids))
        calls = [asyncio.create_task(one(n)) for n in range(burst)]
        async with asyncio.timeout(30):
            while sum(c.done() for c in calls) < burst // 8:  # the burst is well under way
                pending = [c for c in calls if not c.done()]
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        in_flight = sum(not c.done() for c in calls)
        assert in_flight > 0, "the burst finished before the signal"
        times.append(await sigterm(plugin))
        outcomes.update(await asyncio.gather(*calls))
        assert own_sockets(plugin_dir) == [], f"round {i}: {own_sockets(plugin_dir)}"
        report.count = i + 1
    report.details.update(max_exit_s=round(max(times), 3), allocates=dict(outcomes))
    assert not [o for o in outcomes if o.startswith("failed")], outcomes


async def test_sigterm_with_kubelet_absent(
    node: FakeNode, plugin_dir: Path, start_plugin: StartPlugin, report: Report
) -> None:
    rounds = scale(4, 20)
    report.tried = "SIGTERM while kubelet is absent"
    times: list[float] = []
    for i in range(rounds):
        plugin = await start_and_await_socket(start_plugin, plugin_dir, SOCKET)
        times.append(await sigterm(plugin))
        assert own_sockets(plugin_dir) == [], f"round {i}: left {own_sockets(plugin_dir)}"
        assert plugin.events("kubelet_absent")
        report.count = i + 1
    report.details.update(max_exit_s=round(max(times), 3))
