"""The two event figures of the side-by-side run: a device reset seen by kubelet, and a kubelet
restart answered by Register; ours and the peer's, from the same events."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import stat
import time

from bench.common.errors import BenchError
from qaic_device_plugin.kubelet.types import HEALTHY, UNHEALTHY
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode

from .model import OURS_RESOURCE, SbsCounts, SideBySide, all_more, last_reg, regs
from .peer import RESOURCE as PEER_RESOURCE


def _health(k: KubeletSim, resource: str, device: str) -> str | None:
    view = k.resources.get(resource)
    return None if view is None else view.health.get(device)


async def _seen(kubelet: KubeletSim, resource: str, device: str, ok: set[str | None]) -> float:
    try:
        await kubelet.wait_for(lambda k: _health(k, resource, device) in ok, timeout=60)
    except TimeoutError:
        raise BenchError(f"{resource}: {device} never became {ok}") from None
    # a snapshot, or (the peer) the stream's end: it stops serving a device type that left
    return kubelet.resources[resource].last_change_at


async def flips(
    counts: SbsCounts, kubelet: KubeletSim, node: FakeNode, peer_on: bool, out: SideBySide
) -> None:
    """A kernel-style reset (accel entry leaves sysfs, device node goes) of one of our SoCs and
    of the peer's NPU at the same instant; each plugin's time until kubelet sees it. Ours says
    Unhealthy; the peer cannot: at its next rescan it stops serving the resource, and kubelet
    marks the device unhealthy because the stream ended."""
    rng = random.Random(11)
    class_accel = node.sysfs_root / "class" / "accel"
    npu_link = class_accel / "accel0"
    npu_node = node.dev_root / "accel" / "accel0"
    npu_target = npu_link.readlink()
    npu_stat = npu_node.stat()
    peer_device = sorted(kubelet.view(PEER_RESOURCE).health)[0] if peer_on else ""
    for i in range(counts.flips):
        soc = node.socs[(i * 3) % len(node.socs)]
        link = class_accel / f"accel{soc.accel_index}"
        target = link.readlink()
        await asyncio.sleep(rng.uniform(0, 1.0))  # a random phase of the peer's rescan timer
        t0 = time.monotonic()
        link.unlink()
        node.remove_device_node(soc.pci_address)
        if peer_on:
            npu_link.unlink()
            npu_node.unlink()
        seen = [_seen(kubelet, OURS_RESOURCE, soc.pci_address, {UNHEALTHY})]
        if peer_on:
            seen.append(_seen(kubelet, PEER_RESOURCE, peer_device, {None, UNHEALTHY}))
        at = await asyncio.gather(*seen)
        out.ours.add("health", at[0] - t0)
        if peer_on:
            out.peer.add("health", at[1] - t0)
        link.symlink_to(target)
        node.restore_device_node(soc.pci_address)
        if peer_on:
            npu_link.symlink_to(npu_target)
            if stat.S_ISCHR(npu_stat.st_mode):
                os.mknod(npu_node, npu_stat.st_mode, npu_stat.st_rdev)
            else:  # the fake node's plain-file nodes where mknod is not allowed
                npu_node.touch()
        back = [_seen(kubelet, OURS_RESOURCE, soc.pci_address, {HEALTHY})]
        if peer_on:
            back.append(_seen(kubelet, PEER_RESOURCE, peer_device, {HEALTHY}))
        await asyncio.gather(*back)


async def restarts(
    counts: SbsCounts, kubelet: KubeletSim, node: FakeNode, peer_on: bool, out: SideBySide
) -> None:
    """kubelet restarts (every socket deleted, kubelet.sock re-created): each plugin's time
    from the new kubelet.sock to its Register."""
    for _ in range(counts.restarts):
        before = {r: regs(kubelet, r) for r in (OURS_RESOURCE, PEER_RESOURCE)}
        started = await kubelet.restart()
        wanted = [OURS_RESOURCE] + ([PEER_RESOURCE] if peer_on else [])
        try:
            await kubelet.wait_for(functools.partial(all_more, before, wanted), timeout=60)
        except TimeoutError:
            raise BenchError("a plugin did not re-register after a kubelet restart") from None
        out.ours.add("restart", last_reg(kubelet, OURS_RESOURCE) - started)
        if peer_on:
            out.peer.add("restart", last_reg(kubelet, PEER_RESOURCE) - started)
        await kubelet.wait_devices(OURS_RESOURCE, healthy=len(node.socs), timeout=30)
        await asyncio.sleep(0.2)
