"""Live figures of size: process starts, shares (many device IDs per SoC, 1024 devices in every
snapshot) and ListAndWatch snapshots of large nodes, built and sent through the plugin's own
server (bench/live/snapshot_server.py)."""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from pathlib import Path

from grpc import aio

from bench.common import procfs
from bench.common.errors import BenchError
from bench.common.floors import import_grpc_floor
from bench.quality.simulation import ultra_cards
from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.kubelet.api import deviceplugin_pb2_grpc as pb_grpc
from qaic_device_plugin.kubelet.convert import devices_to_pb
from qaic_device_plugin.kubelet.types import HEALTHY, UNHEALTHY
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode
from qaic_device_plugin.sim.process import PluginProcess, node_env

from .base import QAIC, SHARES, SOCS, ULTRA, Counts, Samples, ultra_node_with_plugin, wait_devices
from .events import _flip
from .snapshot_server import snapshot

SNAPSHOT_SERVER = Path(__file__).resolve().with_name("snapshot_server.py")


async def starts(counts: Counts, work: Path, out: Samples) -> None:
    """Process start -> first Register, next to `python -c "import grpc"`, interleaved."""
    node = FakeNode(work / "node-start", ultra_cards())
    node.write()
    plugin_dir = work / "plugins-start"
    async with KubeletSim(plugin_dir) as kubelet:
        for i in range(counts.starts):
            await import_grpc_floor(out)
            log = work / f"plugin-start-{i}.log"
            plugin = PluginProcess(
                {**node_env(node, plugin_dir), "QAIC_SKU_BASED_RESOURCE_ENABLED": "1"}, log
            )
            t0 = time.monotonic()
            await plugin.start()
            try:
                await kubelet.wait_registered(ULTRA, count=i + 1, timeout=60)
            except TimeoutError:
                raise BenchError(f"start {i}: the plugin never registered; see {log}") from None
            finally:
                rc = await plugin.stop(timeout=10)
            reg = [r for r in kubelet.registrations if r.resource == ULTRA][-1]
            out.add("start.register", reg.at - t0)
            if rc != 0:
                raise BenchError(f"start {i}: plugin exited {rc} on SIGTERM; see {log}")


# -- shares: 64 SoCs x 16 -------------------------------------------------------------------


async def shares(counts: Counts, work: Path, out: Samples) -> None:
    """ALLOWED_QAIC_DEVICE_SHARES=16 on the 16-Ultra node: 1024 devices in every snapshot."""
    async with ultra_node_with_plugin(work, "shares", ALLOWED_QAIC_DEVICE_SHARES=str(SHARES)) as (
        node,
        kubelet,
        plugin,
    ):
        await wait_devices(kubelet, plugin, QAIC, SOCS * SHARES)
        stream = kubelet.resources[QAIC].stub.ListAndWatch(pb.Empty())
        first: pb.ListAndWatchResponse = await stream.read()
        stream.cancel()
        out.facts["shares_message_bytes"] = first.ByteSize()
        out.facts["shares_devices"] = len(first.devices)
        out.facts["rss_shares_mb"] = procfs.rss_mb(plugin.pid)
        for i in range(counts.share_flips):
            pci = node.socs[(i * 7) % SOCS].pci_address
            replica = f"{pci}::0"
            out.add(
                "shares.removed",
                await _flip(
                    kubelet,
                    QAIC,
                    replica,
                    UNHEALTHY,
                    functools.partial(node.remove_device_node, pci),
                ),
            )
            await _flip(
                kubelet, QAIC, replica, HEALTHY, functools.partial(node.restore_device_node, pci)
            )


# -- ListAndWatch build + send through the plugin's own server ------------------------------


async def snapshot_send(
    counts: Counts, work: Path, out: Samples, key: str, socs: int, shares: int
) -> None:
    """bench/live/snapshot_server.py publishes snapshot k; we time publish -> received here."""
    sock = work / "snap" / f"{key}.sock"
    sock.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SNAPSHOT_SERVER),
        str(sock),
        "--socs",
        str(socs),
        "--shares",
        str(shares),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    channel = aio.insecure_channel(f"unix://{sock}")
    try:
        async with asyncio.timeout(30):
            if (await proc.stdout.readline()).strip() != b"ready":
                raise BenchError("snapshot server did not start")
        stub = pb_grpc.DevicePluginStub(channel)
        stream = stub.ListAndWatch(pb.Empty())
        first: pb.ListAndWatchResponse = await stream.read()
        out.facts[f"{key}_message_bytes"] = first.ByteSize()
        out.facts[f"{key}_devices"] = len(first.devices)
        for k in range(1, counts.snapshots + 1):
            proc.stdin.write(f"{k}\n".encode())
            await proc.stdin.drain()
            msg = await asyncio.wait_for(stream.read(), 10)
            received = time.monotonic()
            line = (await proc.stdout.readline()).split()
            if int(line[0]) != k or not isinstance(msg, pb.ListAndWatchResponse):
                raise BenchError(f"snapshot {k}: out of step ({line!r})")
            out.add(key, received - float(line[1]))
        stream.cancel()
    finally:
        await channel.close(None)
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def snapshot_build(counts: Counts, out: Samples, key: str, socs: int, shares: int) -> None:
    """devices_to_pb + serialisation, the CPU part of sending one snapshot."""
    devices = snapshot(socs, shares, 1)
    for _ in range(counts.builds):
        t0 = time.perf_counter()
        devices_to_pb(devices).SerializeToString()
        out.add(key, time.perf_counter() - t0)
