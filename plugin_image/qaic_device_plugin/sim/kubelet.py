"""A kubelet stand-in that speaks v1beta1 over real Unix sockets, as kubelet's devicemanager does.

Register validates version and name, dials the plugin back and calls GetDevicePluginOptions
BEFORE replying, then consumes ListAndWatch. A broken stream marks every device unhealthy.
A restart deletes every socket in the plugin dir and creates kubelet.sock anew.
Pods (Allocate per container, kubelet's checkpoint file, PreStartContainer) are in pods.py.
Used by the tests, the demo, the benchmarks and the image stage (`python -m ...sim.kubelet`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio

from ..kubelet.api import deviceplugin_pb2 as pb
from ..kubelet.api import deviceplugin_pb2_grpc as pb_grpc
from ..kubelet.convert import options_from_pb
from ..kubelet.types import (
    API_VERSION,
    HEALTHY,
    KUBELET_SOCKET,
    PluginOptions,
    valid_extended_resource_name,
)

CHECKPOINT = "kubelet_internal_checkpoint"


@dataclass
class Registration:
    resource: str
    endpoint: str
    options: PluginOptions
    at: float  # time.monotonic()


@dataclass
class ResourceView:
    """What kubelet knows of one resource."""

    resource: str
    endpoint: str
    options: PluginOptions
    channel: aio.Channel
    stub: pb_grpc.DevicePluginStub
    health: dict[str, str] = field(default_factory=dict)
    numa: dict[str, tuple[int, ...]] = field(default_factory=dict)
    snapshots: int = 0
    last_snapshot_at: float = 0.0
    last_change_at: float = 0.0  # a snapshot, or the stream's end (all devices unhealthy)
    stream_task: asyncio.Task[None] | None = None
    connected: bool = False

    @property
    def healthy(self) -> list[str]:
        return sorted(d for d, h in self.health.items() if h == HEALTHY)

    @property
    def unhealthy(self) -> list[str]:
        return sorted(d for d, h in self.health.items() if h != HEALTHY)


class KubeletSim:
    def __init__(self, plugin_dir: Path, *, dial_timeout: float = 10.0) -> None:
        self.plugin_dir = plugin_dir
        self.socket = plugin_dir / KUBELET_SOCKET
        self.dial_timeout = dial_timeout
        self.registrations: list[Registration] = []
        self.rejections: list[str] = []
        self.refuse_registrations: str | None = None  # a reason: refuse every Register
        self.resources: dict[str, ResourceView] = {}
        self._server: aio.Server | None = None
        self._changed = asyncio.Condition()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        server = aio.server()
        pb_grpc.add_RegistrationServicer_to_server(_Registrar(self), server)
        server.add_insecure_port(f"unix://{self.socket}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)
        for view in list(self.resources.values()):
            await self._disconnect(view)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)

    async def restart(self) -> float:
        """Stop, delete every socket in the dir (as kubelet does), start; return the start time."""
        await self.stop()
        for entry in self.plugin_dir.iterdir():
            if entry.name != CHECKPOINT and entry.is_socket():
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        started = time.monotonic()
        await self.start()
        return started

    async def __aenter__(self) -> KubeletSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- what tests await --------------------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[KubeletSim], bool], timeout: float = 10.0
    ) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def wait_registered(self, resource: str, count: int = 1, timeout: float = 10.0) -> None:
        await self.wait_for(
            lambda k: sum(r.resource == resource for r in k.registrations) >= count, timeout
        )

    async def wait_devices(
        self, resource: str, healthy: int, unhealthy: int = 0, timeout: float = 10.0
    ) -> ResourceView:
        def ok(k: KubeletSim) -> bool:
            v = k.resources.get(resource)
            return v is not None and len(v.healthy) == healthy and len(v.unhealthy) == unhealthy

        await self.wait_for(ok, timeout)
        return self.resources[resource]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- calls kubelet makes to a plugin -----------------------------------------------------

    def view(self, resource: str) -> ResourceView:
        return self.resources[resource]

    async def allocate(self, resource: str, *containers: Sequence[str]) -> pb.AllocateResponse:
        req = pb.AllocateRequest(
            container_requests=[
                pb.ContainerAllocateRequest(devices_ids=list(c)) for c in containers
            ]
        )
        resp: pb.AllocateResponse = await self.view(resource).stub.Allocate(req, timeout=10)
        return resp

    async def preferred(
        self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        req = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=list(available),
                    must_include_deviceIDs=list(must_include),
                    allocation_size=size,
                )
            ]
        )
        resp = await self.view(resource).stub.GetPreferredAllocation(req, timeout=10)
        return list(resp.container_responses[0].deviceIDs)

    async def pre_start(self, resource: str, ids: Sequence[str]) -> None:
        await self.view(resource).stub.PreStartContainer(
            pb.PreStartContainerRequest(devices_ids=list(ids)), timeout=30
        )

    # -- registration handling ---------------------------------------------------------------

    async def _register(self, request: pb.RegisterRequest) -> str | None:
        """Return None on success, else the reason kubelet would give."""
        if self.refuse_registrations is not None:
            return self.refuse_registrations
        if request.version != API_VERSION:
            return f"unsupported API version {request.version!r}"
        if not valid_extended_resource_name(request.resource_name):
            return f"invalid resource name {request.resource_name!r}"
        endpoint = self.plugin_dir / request.endpoint
        channel = aio.insecure_channel(f"unix://{endpoint}")
        try:
            await asyncio.wait_for(channel.channel_ready(), self.dial_timeout)
            stub = pb_grpc.DevicePluginStub(channel)
            options = options_from_pb(await stub.GetDevicePluginOptions(pb.Empty(), timeout=10))
        except (TimeoutError, aio.AioRpcError) as e:
            await channel.close(None)
            return f"cannot dial plugin at {endpoint}: {e}"
        old = self.resources.get(request.resource_name)
        if old is not None:
            await self._disconnect(old, mark_unhealthy=False)
        view = ResourceView(
            resource=request.resource_name,
            endpoint=request.endpoint,
            options=options,
            channel=channel,
            stub=stub,
            health=dict(old.health) if old else {},
            numa=dict(old.numa) if old else {},
            connected=True,
        )
        self.resources[request.resource_name] = view
        view.stream_task = asyncio.create_task(self._consume(view))
        self.registrations.append(
            Registration(request.resource_name, request.endpoint, options, time.monotonic())
        )
        await self._notify()
        return None

    async def _consume(self, view: ResourceView) -> None:
        try:
            async for resp in view.stub.ListAndWatch(pb.Empty()):
                view.health = {d.ID: d.health for d in resp.devices}
                view.numa = {d.ID: tuple(n.ID for n in d.topology.nodes) for d in resp.devices}
                view.snapshots += 1
                view.last_snapshot_at = view.last_change_at = time.monotonic()
                await self._notify()
        except aio.AioRpcError:
            pass
        # The stream ended: kubelet marks every device of the resource unhealthy at once.
        if self.resources.get(view.resource) is view:
            view.connected = False
            view.health = dict.fromkeys(view.health, "Unhealthy")
            view.last_change_at = time.monotonic()
            await self._notify()

    async def _disconnect(self, view: ResourceView, mark_unhealthy: bool = True) -> None:
        task = view.stream_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await view.channel.close(None)
        view.connected = False
        if mark_unhealthy:
            view.health = dict.fromkeys(view.health, "Unhealthy")


class _Registrar(pb_grpc.RegistrationServicer):
    def __init__(self, sim: KubeletSim) -> None:
        self._sim = sim

    async def Register(
        self,
        request: pb.RegisterRequest,
        context: aio.ServicerContext[pb.RegisterRequest, pb.Empty],
    ) -> pb.Empty:
        reason = await self._sim._register(request)
        if reason is not None:
            self._sim.rejections.append(reason)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
        return pb.Empty()


# -- command line (used by the image stage and by hand) --------------------------------------


async def _main(plugin_dir: Path, expect: dict[str, int], timeout: float) -> int:
    started = time.monotonic()
    async with KubeletSim(plugin_dir) as sim:
        try:
            await sim.wait_for(
                lambda k: all(
                    r in k.resources and len(k.resources[r].healthy) == n for r, n in expect.items()
                ),
                timeout,
            )
            ok = True
        except TimeoutError:
            ok = False
        summary = {
            "ok": ok,
            "seconds": round(time.monotonic() - started, 3),
            "registrations": [r.resource for r in sim.registrations],
            "resources": {
                name: {"healthy": v.healthy, "unhealthy": v.unhealthy, "numa": v.numa}
                for name, v in sim.resources.items()
            },
            "rejections": sim.rejections,
        }
        print(json.dumps(summary, indent=2))
        return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qaic_device_plugin.sim.kubelet",
        description="Serve kubelet.sock like kubelet and wait for the expected resources.",
    )
    parser.add_argument("--plugin-dir", type=Path, required=True)
    parser.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="RESOURCE=COUNT",
        help="wait until RESOURCE lists COUNT healthy devices (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    expect: dict[str, int] = {}
    for item in args.expect:
        name, sep, count = item.rpartition("=")
        if not sep or not count.isdigit():
            parser.error(f"--expect {item!r}: expected RESOURCE=COUNT")
        expect[name] = int(count)
    return asyncio.run(_main(args.plugin_dir, expect, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
