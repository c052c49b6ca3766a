"""Kubelet absent for a long while at start (30 s short, 60 s full), then present: the plugin
serves meanwhile without spinning or growing, and registers within 1 s of kubelet's arrival."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from reliability_harness import (
    Report,
    cpu_seconds,
    resources,
    scale,
    settle,
    start_and_await_socket,
)

from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess

pytestmark = pytest.mark.reliability

StartPlugin = Callable[..., Awaitable[PluginProcess]]
QAIC = "qualcomm.com/qaic"
SOCKET = "qualcomm.com_qaic.sock"
SETTLE = 3.0  # seconds of the absence before the baseline is taken


async def test_kubelet_absent_then_present(
    node: FakeNode, plugin_dir: Path, start_plugin: StartPlugin, report: Report
) -> None:
    absent = scale(30, 60)
    report.tried = "seconds of kubelet absence at start, then kubelet starts"
    plugin = await start_and_await_socket(start_plugin, plugin_dir, SOCKET)
    # Nothing to await here: the absence itself is what is under test. The baseline is taken
    # once start-up has settled (qaic-util's first run, the udev monitor, ...).
    await asyncio.sleep(SETTLE)
    before = resources(plugin.pid)
    cpu0 = cpu_seconds(plugin.pid)
    await asyncio.sleep(absent - SETTLE)
    assert plugin.returncode is None, "the plugin exited while kubelet was away"
    cpu = cpu_seconds(plugin.pid) - cpu0
    during = await settle(lambda: resources(plugin.pid), before)
    assert (plugin_dir / SOCKET).is_socket(), "stopped serving while kubelet was away"

    t0 = time.monotonic()
    async with KubeletSim(plugin_dir) as kubelet:
        await kubelet.wait_registered(QAIC, timeout=10)
        reaction = kubelet.registrations[0].at - t0
        await kubelet.wait_devices(QAIC, healthy=len(node.socs))
        regs = len(kubelet.registrations)
    report.count = absent
    report.lost = int(reaction >= 1.0)
    report.details.update(
        register_after_arrival_s=round(reaction, 3),
        cpu_while_absent_s=round(cpu, 2),
        threads=f"{before.threads}->{during.threads}",
        fds=f"{before.fds}->{during.fds}",
    )
    assert reaction < 1.0, f"registered {reaction:.3f} s after kubelet started"
    assert regs == 1
    assert during.threads <= before.threads, (before, during)
    assert during.fds <= before.fds, (before.kind_counts(), during.kind_counts())
    # A busy-wait guard, not a benchmark: an idle plugin uses well under 5% of one core.
    assert cpu < 0.25 * (absent - SETTLE), (
        f"{cpu:.1f} s of CPU in {absent - SETTLE} s without kubelet"
    )
