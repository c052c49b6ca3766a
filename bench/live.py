"""The figures taken from the plugin process as deployed: the `qaic-device-plugin` console script
on a fake 16-Ultra node, driven by the kubelet simulator over real Unix sockets, each next to a
floor measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncinotify import Inotify, Mask
from grpc import aio

from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.kubelet.api import deviceplugin_pb2_grpc as pb_grpc
from qaic_device_plugin.kubelet.convert import devices_to_pb
from qaic_device_plugin.kubelet.types import HEALTHY, UNHEALTHY
from qaic_device_plugin.settings import Settings
from qaic_device_plugin.sim.kubelet import KubeletSim
from qaic_device_plugin.sim.node import FakeNode, FakeSoc
from qaic_device_plugin.sim.process import PluginProcess, node_env

from . import procfs
from .floor_server import METHOD as FLOOR_METHOD
from .quality import ultra_cards
from .snapshot_server import snapshot

HERE = Path(__file__).resolve().parent
ULTRA = "qualcomm.com/qaic-ultra"
QAIC = "qualcomm.com/qaic"
SOCS = 64
SHARES = 16
RESYNC_SECONDS = float(Settings.model_fields["resync_seconds"].default)
MAX_MESSAGE = 4 * 1024 * 1024  # kubelet's gRPC client default receive limit


class BenchError(Exception):
    """Something broke (not slow: broken): the bench exits non-zero."""


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
    """Raw results (seconds, MB, bytes); bench/run.py turns them into rows."""

    values: dict[str, list[float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    load: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def mark_load(self, phase: str) -> None:
        import os

        self.load[phase] = os.getloadavg()


# -- the floors ---------------------------------------------------------------------------


class FloorServer:
    """bench/floor_server.py as a subprocess: a bare grpcio server with an empty method."""

    def __init__(self, proc: asyncio.subprocess.Process, socket: Path) -> None:
        self.proc = proc
        self.socket = socket
        self.channel = aio.insecure_channel(f"unix://{socket}")
        self.call = self.channel.unary_unary(FLOOR_METHOD, None, None)

    @classmethod
    async def start(cls, socket: Path) -> FloorServer:
        socket.parent.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "floor_server.py"),
            str(socket),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise BenchError(f"floor server did not start: {line!r}")
        server = cls(proc, socket)
        await asyncio.wait_for(server.channel.channel_ready(), 10)
        return server

    async def empty(self) -> None:
        await self.call(b"", timeout=10)

    async def stop(self) -> None:
        await self.channel.close(None)
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


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


async def import_grpc_floor(out: Samples) -> None:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import grpc")
    rc = await proc.wait()
    out.add("floor.import_grpc", time.monotonic() - t0)
    if rc != 0:
        raise BenchError(f"python -c 'import grpc' exited {rc}")


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
    node = FakeNode(work / "node-main", ultra_cards())
    node.write()
    plugin_dir = work / "plugins-main"
    async with (
        KubeletSim(plugin_dir) as kubelet,
        running_plugin(
            node, plugin_dir, work / "plugin-main.log", QAIC_SKU_BASED_RESOURCE_ENABLED="1"
        ) as plugin,
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


# -- process start -------------------------------------------------------------------------


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
    node = FakeNode(work / "node-shares", ultra_cards())
    node.write()
    plugin_dir = work / "plugins-shares"
    async with (
        KubeletSim(plugin_dir) as kubelet,
        running_plugin(
            node, plugin_dir, work / "plugin-shares.log", ALLOWED_QAIC_DEVICE_SHARES=str(SHARES)
        ) as plugin,
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
    """bench/snapshot_server.py publishes snapshot k; we time publish -> received here."""
    sock = work / "snap" / f"{key}.sock"
    sock.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "snapshot_server.py"),
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
