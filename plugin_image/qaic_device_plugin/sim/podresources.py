"""A stand-in for kubelet's PodResources API v1 over a real Unix socket, as kubelet serves it.

Tests set which containers hold which devices; `List` answers that, `Get` answers one pod,
`GetAllocatableResources` the devices a test says device plugins serve (none by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

import grpc
from grpc import aio

from ..kubelet.api import podresources_v1_pb2 as pb
from ..kubelet.api import podresources_v1_pb2_grpc as pb_grpc
from ..kubelet.podresources import ContainerDevices, ResourceDevices


class PodResourcesSim:
    def __init__(self, socket_path: Path) -> None:
        self.socket = socket_path
        self.held: list[ContainerDevices] = []
        self.allocatable: list[ResourceDevices] = []
        self.calls = 0
        self._called = asyncio.Condition()
        self._server: aio.Server | None = None

    def set_held(self, held: Iterable[ContainerDevices]) -> None:
        self.held = list(held)

    def set_allocatable(self, served: Iterable[ResourceDevices]) -> None:
        """What device plugins serve Healthy (kubelet empties it when a plugin goes)."""
        self.allocatable = list(served)

    def _pods(self) -> list[pb.PodResources]:
        pods: dict[tuple[str, str], dict[str, list[pb.ContainerDevices]]] = {}
        for h in self.held:
            containers = pods.setdefault((h.namespace, h.pod), {})
            containers.setdefault(h.container, []).append(
                pb.ContainerDevices(resource_name=h.resource_name, device_ids=h.device_ids)
            )
        return [
            pb.PodResources(
                namespace=ns,
                name=name,
                containers=[pb.ContainerResources(name=c, devices=d) for c, d in cs.items()],
            )
            for (ns, name), cs in pods.items()
        ]

    async def _count_call(self) -> None:
        async with self._called:
            self.calls += 1
            self._called.notify_all()

    async def wait_calls(self, count: int, timeout: float = 10.0) -> None:
        """Await the `count`th List call."""
        async with asyncio.timeout(timeout), self._called:
            await self._called.wait_for(lambda: self.calls >= count)

    async def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        server = aio.server()
        pb_grpc.add_PodResourcesListerServicer_to_server(_Lister(self), server)
        server.add_insecure_port(f"unix://{self.socket}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)

    async def __aenter__(self) -> PodResourcesSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _Lister(pb_grpc.PodResourcesListerServicer):
    def __init__(self, sim: PodResourcesSim) -> None:
        self._sim = sim

    async def List(
        self,
        request: pb.ListPodResourcesRequest,
        context: aio.ServicerContext[pb.ListPodResourcesRequest, pb.ListPodResourcesResponse],
    ) -> pb.ListPodResourcesResponse:
        await self._sim._count_call()
        return pb.ListPodResourcesResponse(pod_resources=self._sim._pods())

    async def Get(
        self,
        request: pb.GetPodResourcesRequest,
        context: aio.ServicerContext[pb.GetPodResourcesRequest, pb.GetPodResourcesResponse],
    ) -> pb.GetPodResourcesResponse:
        for pod in self._sim._pods():
            if (pod.namespace, pod.name) == (request.pod_namespace, request.pod_name):
                return pb.GetPodResourcesResponse(pod_resources=pod)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"pod {request.pod_name} not found")

    async def GetAllocatableResources(
        self,
        request: pb.AllocatableResourcesRequest,
        context: aio.ServicerContext[
            pb.AllocatableResourcesRequest, pb.AllocatableResourcesResponse
        ],
    ) -> pb.AllocatableResourcesResponse:
        await self._sim._count_call()
        return pb.AllocatableResourcesResponse(devices=[
            pb.ContainerDevices(resource_name=r.resource_name, device_ids=r.device_ids)
            for r in self._sim.allocatable])
