"""A kubelet stand-in for DRA plugins: its plugin watcher and its DRA v1 client, over real sockets.

Like kubelet's pluginwatcher it scans the registry directory and reacts to sockets appearing:
GetInfo, checks the type and that `v1.DRAPlugin` is offered, answers NotifyRegistrationStatus,
and remembers the endpoint; a removed socket deregisters that instance. As kubelet 1.33+'s
DRAPluginManager it keeps every instance of a driver (rolling updates), in the order they
registered, refuses an endpoint another instance already registered, and calls the newest.
A registration that fails (the socket went away mid-call) is counted and retried on the next
change, as kubelet retries. Prepare and unprepare are sent exactly as kubelet 1.37 sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from grpc import aio

from ..core.fswatch import watch_directory
from ..kubelet.api.dra_health_v1 import api_pb2 as health_pb
from ..kubelet.api.dra_health_v1 import api_pb2_grpc as health_grpc
from ..kubelet.api.dra_v1 import api_pb2 as dra_pb
from ..kubelet.api.dra_v1 import api_pb2_grpc as dra_grpc
from ..kubelet.api.pluginregistration_v1 import api_pb2 as reg_pb
from ..kubelet.api.pluginregistration_v1 import api_pb2_grpc as reg_grpc
from ..kubelet.dra.types import DRA_SERVICE_V1, HEALTH_SERVICE_V1, PLUGIN_TYPE, ClaimRef

log = logging.getLogger(__name__)


@dataclass
class Registered:
    name: str
    endpoint: str
    socket: Path
    versions: tuple[str, ...]


class DraKubeletSim:
    def __init__(self, registry_dir: Path) -> None:
        self.registry_dir = registry_dir
        self.plugins: dict[str, Registered] = {}  # the instance kubelet calls: the newest
        self.instances: dict[str, list[Registered]] = {}  # every one, oldest first
        self.registrations = 0
        self.deregistrations = 0
        self.refusals: list[str] = []
        self.failures: list[str] = []  # registration calls that failed (retried later)
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._seen: dict[Path, tuple[int, int]] = {}

    async def __aenter__(self) -> DraKubeletSim:
        self.registry_dir.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        await self._scan()
        async for _ in watch_directory(self.registry_dir):
            await self._scan()

    async def _scan(self) -> None:
        present: dict[Path, tuple[int, int]] = {}
        for p in sorted(self.registry_dir.glob("*.sock")):
            with contextlib.suppress(FileNotFoundError):
                st = p.lstat()
                present[p] = (st.st_ino, st.st_ctime_ns)
        for p in [p for p in self._seen if p not in present]:
            del self._seen[p]
            self._deregister(p)
        for p, ident in present.items():
            if self._seen.get(p) != ident:
                self._deregister(p)  # a socket re-created in place: the old instance is gone
                self._seen[p] = ident
                try:
                    await self._register(p)
                except aio.AioRpcError as e:
                    del self._seen[p]  # try again on the next change
                    self.failures.append(f"{p.name}: {e.code().name}")
        async with self._changed:
            self._changed.notify_all()

    async def _register(self, sock: Path) -> None:
        async with aio.insecure_channel(f"unix://{sock}") as ch:
            stub = reg_grpc.RegistrationStub(ch)
            info = await stub.GetInfo(reg_pb.InfoRequest(), timeout=5)
            error = ""
            if info.type != PLUGIN_TYPE:
                error = f"type {info.type!r} is not {PLUGIN_TYPE}"
            elif DRA_SERVICE_V1 not in info.supported_versions:
                error = f"none of {list(info.supported_versions)} is supported"
            elif any(r.endpoint == info.endpoint for r in self.instances.get(info.name, ())):
                error = f"endpoint {info.endpoint} already registered for {info.name}"
            await stub.NotifyRegistrationStatus(
                reg_pb.RegistrationStatus(plugin_registered=not error, error=error), timeout=5
            )
        if error:
            self.refusals.append(error)
            return
        reg = Registered(info.name, info.endpoint, sock, tuple(info.supported_versions))
        self.instances.setdefault(info.name, []).append(reg)
        self.plugins[info.name] = reg
        self.registrations += 1

    def _deregister(self, sock: Path) -> None:
        for name, regs in list(self.instances.items()):
            kept = [r for r in regs if r.socket != sock]
            self.deregistrations += len(regs) - len(kept)
            if kept:
                self.instances[name] = kept
                self.plugins[name] = kept[-1]
            else:
                del self.instances[name]
                self.plugins.pop(name, None)

    async def wait_registered(self, name: str, count: int = 1, timeout: float = 10.0) -> Registered:
        """Wait until `name` is registered and `count` registrations have happened in total."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(
                    lambda: name in self.plugins and self.registrations >= count
                ),
                timeout,
            )
        return self.plugins[name]

    async def wait_instances(self, name: str, count: int, timeout: float = 10.0) -> None:
        """Wait until exactly `count` instances of `name` are registered."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.instances.get(name, ())) == count),
                timeout,
            )

    async def prepare(
        self, driver: str, claims: list[ClaimRef], timeout: float = 10.0
    ) -> dra_pb.NodePrepareResourcesResponse:
        async with aio.insecure_channel(f"unix://{self.plugins[driver].endpoint}") as ch:
            req = dra_pb.NodePrepareResourcesRequest(
                claims=[dra_pb.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]
            )
            resp: dra_pb.NodePrepareResourcesResponse = await dra_grpc.DRAPluginStub(
                ch
            ).NodePrepareResources(req, timeout=timeout)
            return resp

    async def unprepare(
        self, driver: str, claims: list[ClaimRef], timeout: float = 10.0
    ) -> dra_pb.NodeUnprepareResourcesResponse:
        async with aio.insecure_channel(f"unix://{self.plugins[driver].endpoint}") as ch:
            req = dra_pb.NodeUnprepareResourcesRequest(
                claims=[dra_pb.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]
            )
            resp: dra_pb.NodeUnprepareResourcesResponse = await dra_grpc.DRAPluginStub(
                ch
            ).NodeUnprepareResources(req, timeout=timeout)
            return resp

    async def watch_health(
        self, driver: str
    ) -> AsyncIterator[health_pb.NodeWatchResourcesResponse]:
        """As kubelet does when registration offered the health service: one long
        NodeWatchResources stream on the driver's endpoint."""
        plugin = self.plugins[driver]
        if HEALTH_SERVICE_V1 not in plugin.versions:
            raise ValueError(f"{driver} offers no {HEALTH_SERVICE_V1}: {plugin.versions}")
        async with aio.insecure_channel(f"unix://{plugin.endpoint}") as ch:
            stream = health_grpc.DRAResourceHealthStub(ch).NodeWatchResources(
                health_pb.NodeWatchResourcesRequest()
            )
            async for msg in stream:
                yield msg

