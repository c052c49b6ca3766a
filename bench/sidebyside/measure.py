"""Issue 11, side by side: our plugin and the Go peer (bench/sidebyside/peer.py) on one fake node,
served by one kubelet simulator, measured in one run and interleaved, each next to the floors of
that run.

Ours runs as the DaemonSet ships it: /metrics on, udev on (source `kernel`: this machine has no
udevd, and raw uevents are what a node without /run/udev gets), qaic-util on (the fake node's),
every period at its default. Nothing is switched off to look better. Figures are reported,
never judged pass/fail here; bench/sidebyside/report.py turns them into rows with ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from grpc import aio

from bench.common.errors import BenchError
from bench.common.floors import FloorServer, import_grpc_floor
from bench.common.plugin_defaults import RESYNC_SECONDS
from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.kubelet.api import deviceplugin_pb2_grpc as pb_grpc
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import DEMO_CARDS, FakeNode
from qaic_device_plugin.sim.process import PluginProcess

from .events import flips, restarts
from .model import OURS_RESOURCE, SbsCounts, Side, SideBySide, last_reg, regs
from .peer import RESOURCE as PEER_RESOURCE
from .peer import PeerBinary, PeerProcess
from .procs import Pair, cpu_seconds, rss, rss_by_import, thread_cpu

PB_FLOOR_SERVER = Path(__file__).resolve().with_name("pb_floor_server.py")


async def _timed_start(
    kubelet: KubeletSim, proc: PluginProcess | PeerProcess, resource: str, log: Path
) -> float:
    before = regs(kubelet, resource)
    t0 = time.monotonic()
    await proc.start()
    try:
        await kubelet.wait_for(lambda k: regs(k, resource) > before, timeout=60)
    except TimeoutError:
        raise BenchError(f"{resource}: never registered; see {log}") from None
    finally:
        await proc.stop(timeout=10)
    return last_reg(kubelet, resource) - t0


async def starts(pair: Pair, kubelet: KubeletSim, n: int, out: SideBySide) -> None:
    """Process start -> first Register, ours and the peer alternating (and who goes first)."""
    for i in range(n):
        await import_grpc_floor_into(out.floor)
        ours = pair.ours(f"start-{i}")
        peer = pair.peer(f"start-{i}")
        order: list[tuple[Side, PluginProcess | PeerProcess, str]] = [
            (out.ours, ours, OURS_RESOURCE)
        ]
        if peer is not None:
            order.insert(i % 2, (out.peer, peer, PEER_RESOURCE))
        for side, proc, resource in order:
            log = proc.log_path
            side.add("start.register", await _timed_start(kubelet, proc, resource, log))


async def import_grpc_floor_into(side: Side) -> None:
    """The shared floor records under "floor.import_grpc"; the side-by-side JSON has always
    called it "import_grpc", so it is taken into a scratch Side and renamed."""
    s = Side()
    await import_grpc_floor(s)
    side.add("import_grpc", s.values["floor.import_grpc"][0])


async def import_profile(pair: Pair, kubelet: KubeletSim) -> list[tuple[str, float]]:
    """One more start with PYTHONPROFILEIMPORTTIME=1: what the real process imports, as set up
    for the DaemonSet, summed per top-level package (self time, ms), largest first."""
    proc = pair.ours("importtime", PYTHONPROFILEIMPORTTIME="1")
    await _timed_start(kubelet, proc, OURS_RESOURCE, proc.log_path)
    per: dict[str, float] = {}
    for line in proc.log_text().splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:") :].split("|")
        try:
            self_us = float(parts[0])
        except ValueError:
            continue
        top = parts[2].strip().split(".")[0]
        per[top] = per.get(top, 0.0) + self_us / 1e3
    return sorted(per.items(), key=lambda kv: -kv[1])


@contextlib.asynccontextmanager
async def both_running(
    pair: Pair, kubelet: KubeletSim, out: SideBySide
) -> AsyncIterator[tuple[PluginProcess, PeerProcess | None]]:
    ours = pair.ours("main")
    peer = pair.peer("main")
    await ours.start()
    if peer is not None:
        await peer.start()
    try:
        socs = len(pair.node.socs)
        try:
            await kubelet.wait_devices(OURS_RESOURCE, healthy=socs, timeout=60)
            if peer is not None:
                await kubelet.wait_devices(PEER_RESOURCE, healthy=1, timeout=60)
        except TimeoutError:
            raise BenchError(f"a plugin never listed its devices; see {pair.work}") from None
        yield ours, peer
    finally:
        rc = await ours.stop(timeout=10)
        if rc != 0:
            raise BenchError(f"our plugin exited {rc} on SIGTERM; see {ours.log_path}")
        if peer is not None:
            await peer.stop()  # the peer has no SIGTERM handler: -15 is its normal end


async def idle(
    counts: SbsCounts,
    ours: PluginProcess,
    peer: PeerProcess | None,
    floor: FloorServer,
    out: SideBySide,
) -> None:
    """RSS after registration, then CPU over idle windows (both in the same windows)."""
    # Past the start-up scans: the first qaic-util run, and the full scan at the first resync
    # tick (no fingerprint to compare with yet: the SoCs were unknown before the first scan).
    await asyncio.sleep(RESYNC_SECONDS + 1.0)
    for side, pid in ((out.ours, ours.pid), (out.floor, floor.proc.pid)) + (
        ((out.peer, peer.pid),) if peer is not None else ()
    ):
        side.facts["rss_idle"] = rss(pid)
    threads0 = thread_cpu(ours.pid)
    for _ in range(counts.idle_windows):
        f0 = cpu_seconds(floor.proc.pid)  # a bare grpcio server idles in the same window
        o0, p0 = cpu_seconds(ours.pid), cpu_seconds(peer.pid) if peer else (0.0, 0.0)
        t0 = time.monotonic()
        await asyncio.sleep(counts.idle_seconds)
        o1, p1 = cpu_seconds(ours.pid), cpu_seconds(peer.pid) if peer else (0.0, 0.0)
        f1 = cpu_seconds(floor.proc.pid)
        scale = 60.0 / (time.monotonic() - t0)
        out.ours.add("idle.cpu", (o1[0] - o0[0]) * scale)
        out.ours.add("idle.cpu_children", (o1[1] - o0[1]) * scale)
        out.floor.add("idle.cpu", (f1[0] - f0[0]) * scale)
        if peer is not None:
            out.peer.add("idle.cpu", (p1[0] - p0[0]) * scale)
            out.peer.add("idle.cpu_children", (p1[1] - p0[1]) * scale)
    span = counts.idle_windows * counts.idle_seconds / 60.0
    threads1 = thread_cpu(ours.pid)
    out.threads_cpu = {k: (v - threads0.get(k, 0.0)) / span for k, v in threads1.items()}


async def allocates(
    counts: SbsCounts,
    kubelet: KubeletSim,
    node: FakeNode,
    ours: PluginProcess,
    peer: PeerProcess | None,
    floor: FloorServer,
    out: SideBySide,
    pb_floor: pb_grpc.DevicePluginStub,
) -> None:
    """Allocate of one device on each plugin next to an empty grpcio call and a constant-reply
    protobuf servicer's Allocate (bench/sidebyside/pb_floor_server.py), interleaved; then RSS
    after."""
    mine = [
        pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=[s.pci_address])]
        )
        for s in node.socs
    ]
    ours_stub = kubelet.view(OURS_RESOURCE).stub
    peer_req = peer_stub = None
    if peer is not None:
        view = kubelet.view(PEER_RESOURCE)
        peer_stub = view.stub
        peer_req = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=sorted(view.health)[:1])]
        )
    clock = time.perf_counter
    for i in range(counts.warmup + counts.allocates):
        keep = i >= counts.warmup
        t0 = clock()
        await floor.empty()
        t1 = clock()
        await ours_stub.Allocate(mine[i % len(mine)], timeout=10)
        t2 = clock()
        await pb_floor.Allocate(mine[i % len(mine)], timeout=10)
        t3 = clock()
        if keep:
            out.floor.add("unary", t1 - t0)
            out.ours.add("allocate", t2 - t1)
            out.floor.add("pb_allocate", t3 - t2)
        if peer_stub is not None and peer_req is not None:
            t4 = clock()
            await peer_stub.Allocate(peer_req, timeout=10)
            if keep:
                out.peer.add("allocate", clock() - t4)
    await asyncio.sleep(1.0)
    out.ours.facts["rss_after_allocates"] = rss(ours.pid)
    if peer is not None:
        out.peer.facts["rss_after_allocates"] = rss(peer.pid)
    out.ours.facts["allocates"] = out.peer.facts["allocates"] = counts.warmup + counts.allocates


@contextlib.asynccontextmanager
async def pb_floor_server(sock: Path) -> AsyncIterator[pb_grpc.DevicePluginStub]:
    """bench/sidebyside/pb_floor_server.py as a subprocess, and a stub for it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PB_FLOOR_SERVER),
        str(sock),
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    channel = aio.insecure_channel(f"unix://{sock}")
    try:
        async with asyncio.timeout(30):
            if (await proc.stdout.readline()).strip() != b"ready":
                raise BenchError("protobuf floor server did not start")
        yield pb_grpc.DevicePluginStub(channel)
    finally:
        await channel.close(None)
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def run(counts: SbsCounts, work: Path, peer: PeerBinary) -> SideBySide:
    out = SideBySide(peer_status=peer.reason, peer_available=peer.path is not None)
    if peer.build_seconds is not None:
        out.peer.facts["build_seconds"] = peer.build_seconds
    if peer.path is not None:
        out.peer.facts["binary_mb"] = peer.path.stat().st_size / 1e6
    node = FakeNode(work / "node-sbs", DEMO_CARDS)
    node.write()
    plugin_dir = work / "plugins-sbs"
    pair = Pair(node, plugin_dir, work, peer.path)
    floor = await FloorServer.start(work / "floor-sbs" / "floor.sock")
    try:
        async with KubeletSim(plugin_dir) as kubelet:
            await starts(pair, kubelet, counts.starts, out)
            out.import_profile = await import_profile(pair, kubelet)
            out.rss_by_import = rss_by_import()
            async with both_running(pair, kubelet, out) as (ours, peer_proc):
                await idle(counts, ours, peer_proc, floor, out)
                async with pb_floor_server(work / "pb-floor.sock") as pb_floor:
                    await allocates(counts, kubelet, node, ours, peer_proc, floor, out, pb_floor)
                await flips(counts, kubelet, node, peer_proc is not None, out)
                await restarts(counts, kubelet, node, peer_proc is not None, out)
    finally:
        await floor.stop()
    return out
