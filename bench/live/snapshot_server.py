"""The plugin's own ListAndWatch path (PluginServer, DevicePluginServicer, Feed, devices_to_pb)
serving a synthetic resource of any size, for the snapshot build+send figure.

The fake node cannot hold 256 SoCs (it has one PCI domain, and an Ultra card takes six bus
numbers), so this serves the same code the process runs with devices made up here. Each line
`k` on stdin publishes snapshot k and answers `k <time.monotonic() just before publish>` on
stdout; CLOCK_MONOTONIC is shared by all processes, so the reader's receive time minus that
is build + send + receive.

    python bench/live/snapshot_server.py SOCKET --socs 256 --shares 1
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qaic_device_plugin.kubelet.feed import Feed
from qaic_device_plugin.kubelet.server import PluginServer
from qaic_device_plugin.kubelet.types import ContainerAllocation, Device, PluginOptions
from qaic_device_plugin.qaic.resources import device_ids


def soc_ids(socs: int) -> list[str]:
    """PCI-address-shaped IDs, as long as real ones (a second PCI domain past 256 buses)."""
    return [f"{i // 256:04x}:{i % 256:02x}:00.0" for i in range(socs)]


def unhealthy_soc(socs: int, k: int) -> int | None:
    """Which SoC is unhealthy in snapshot k: none for k=0; one SoC alternates; else SoC k-1
    (mod socs), so any two consecutive snapshots differ."""
    if k == 0:
        return None
    if socs == 1:
        return 0 if k % 2 else None
    return (k - 1) % socs


def snapshot(socs: int, shares: int, k: int) -> tuple[Device, ...]:
    bad = unhealthy_soc(socs, k)
    return tuple(
        Device(did, i != bad, (i % 4,))
        for i, pci in enumerate(soc_ids(socs))
        for did in device_ids(pci, shares)
    )


class SyntheticBackend:
    def __init__(self, name: str, devices: tuple[Device, ...]) -> None:
        self._name = name
        self._devices: Feed[tuple[Device, ...]] = Feed(devices)

    @property
    def resource_name(self) -> str:
        return self._name

    @property
    def options(self) -> PluginOptions:
        return PluginOptions(get_preferred_allocation_available=True)

    @property
    def devices(self) -> Feed[tuple[Device, ...]]:
        return self._devices

    async def allocate(self, requests: Sequence[Sequence[str]]) -> list[ContainerAllocation]:
        return []

    async def preferred_allocation(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        return list(available)[:size]

    async def pre_start(self, device_ids: Sequence[str]) -> None:
        return None


async def serve(path: Path, socs: int, shares: int) -> None:
    backend = SyntheticBackend("bench.example.com/qaic", snapshot(socs, shares, 0))
    server = PluginServer(backend, path)
    await server.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := await reader.readline():
        k = int(line)
        devices = snapshot(socs, shares, k)
        t = time.monotonic()
        await backend.devices.publish(devices)
        print(f"{k} {t!r}", flush=True)
    await backend.devices.close()
    await server.stop(0)
    server.remove_socket()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("socket", type=Path)
    p.add_argument("--socs", type=int, required=True)
    p.add_argument("--shares", type=int, default=1)
    a = p.parse_args(argv)
    asyncio.run(serve(a.socket, a.socs, a.shares))


if __name__ == "__main__":
    main()
