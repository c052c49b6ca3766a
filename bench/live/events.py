"""Live figures for events: device-node flips, sysfs-only signals and kubelet restarts, each
timed from the act to the snapshot kubelet sees."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from pathlib import Path

from asyncinotify import Inotify, Mask

from bench.common.errors import BenchError
from bench.common.plugin_defaults import RESYNC_SECONDS
from qaic_device_plugin.kubelet.types import HEALTHY, UNHEALTHY
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode, FakeSoc
from qaic_device_plugin.sim.process import PluginProcess

from .base import SOCS, ULTRA, Counts, Samples, _health, inotify_floor, wait_devices


async def _flip(
    kubelet: KubeletSim,
    resource: str,
    device: str,
    want: str,
    act: Callable[[], None],
    timeout: float = 30,
) -> float:
    """Do `act`, wait for kubelet to see `device` as `want`; seconds from act to that snapshot."""
    t0 = time.monotonic()
    act()
    try:
        await kubelet.wait_for(lambda k: _health(k, resource, device) == want, timeout)
    except TimeoutError:
        raise BenchError(f"{device} never became {want} within {timeout}s") from None
    return kubelet.resources[resource].last_snapshot_at - t0


async def _flips(counts: Counts, kubelet: KubeletSim, node: FakeNode, out: Samples) -> None:
    """Device node removed/restored, and kernel-style resets (the accel entry leaves sysfs and
    its device node goes), each next to an inotify event on the same directory."""
    accel_dir = node.dev_root / "accel"
    probe = accel_dir / ".bench-probe"
    socs = node.socs
    with Inotify() as ino:
        ino.add_watch(accel_dir, Mask.CREATE | Mask.DELETE)
        for i in range(counts.flips):
            await inotify_floor(ino, probe, out)
            await asyncio.sleep(0.02)  # let the plugin's rescan of the probe event finish
            pci = socs[(i * 7) % len(socs)].pci_address
            out.add(
                "flip.removed",
                await _flip(
                    kubelet, ULTRA, pci, UNHEALTHY, functools.partial(node.remove_device_node, pci)
                ),
            )
            out.add(
                "flip.restored",
                await _flip(
                    kubelet, ULTRA, pci, HEALTHY, functools.partial(node.restore_device_node, pci)
                ),
            )
        for i in range(counts.resets):
            await inotify_floor(ino, probe, out)
            await asyncio.sleep(0.02)
            soc = socs[(i * 5) % len(socs)]
            link = node.sysfs_root / "class" / "accel" / f"accel{soc.accel_index}"
            target = link.readlink()

            def reset(s: FakeSoc = soc, link: Path = link) -> None:
                link.unlink()
                node.remove_device_node(s.pci_address)

            def recover(s: FakeSoc = soc, link: Path = link, target: Path = target) -> None:
                link.symlink_to(target)
                node.restore_device_node(s.pci_address)

            out.add("reset.down", await _flip(kubelet, ULTRA, soc.pci_address, UNHEALTHY, reset))
            out.add("reset.up", await _flip(kubelet, ULTRA, soc.pci_address, HEALTHY, recover))


async def _sysfs_signals(counts: Counts, kubelet: KubeletSim, node: FakeNode, out: Samples) -> None:
    """The accel entry leaves sysfs while the device node stays (no inotify-visible change):
    only the periodic rescan (QAIC_RESYNC_SECONDS, default 5) finds it. A random pause before
    each signal puts it at a random phase of the rescan timer."""
    rng = random.Random(6)
    for i in range(counts.sysfs_signals):
        soc = node.socs[(i * 11 + 3) % SOCS]
        link = node.sysfs_root / "class" / "accel" / f"accel{soc.accel_index}"
        target = link.readlink()
        await asyncio.sleep(rng.uniform(0, RESYNC_SECONDS))
        out.add(
            "sysfs.down",
            await _flip(kubelet, ULTRA, soc.pci_address, UNHEALTHY, link.unlink),
        )
        await asyncio.sleep(rng.uniform(0, RESYNC_SECONDS))
        out.add(
            "sysfs.up",
            await _flip(
                kubelet,
                ULTRA,
                soc.pci_address,
                HEALTHY,
                functools.partial(link.symlink_to, target),
            ),
        )


def _ultra_regs(k: KubeletSim) -> int:
    return sum(r.resource == ULTRA for r in k.registrations)


def _more_regs(before: int, k: KubeletSim) -> bool:
    return _ultra_regs(k) > before


async def _restarts(
    counts: Counts, kubelet: KubeletSim, plugin: PluginProcess, out: Samples
) -> None:
    for _ in range(counts.restarts):
        before = _ultra_regs(kubelet)
        started = await kubelet.restart()
        try:
            await kubelet.wait_for(functools.partial(_more_regs, before), timeout=30)
        except TimeoutError:
            raise BenchError("the plugin did not re-register after a kubelet restart") from None
        reg = [r for r in kubelet.registrations if r.resource == ULTRA][-1]
        out.add("restart.register", reg.at - started)
        await wait_devices(kubelet, plugin, ULTRA, SOCS, timeout=30)
        await asyncio.sleep(0.05)
