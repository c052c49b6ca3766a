"""One gRPC DevicePlugin server per resource, on its own Unix socket."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from grpc import aio

from .after_reply import collect
from .api import deviceplugin_pb2 as pb
from .api import deviceplugin_pb2_grpc as pb_grpc
from .convert import allocation_to_pb, devices_to_pb, options_to_pb
from .types import Backend, Refusal, RefusalKind

log = logging.getLogger(__name__)

_STATUS = {
    RefusalKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
}


class DevicePluginServicer(pb_grpc.DevicePluginServicer):
    """Adapts a Backend to the v1beta1 service; refusals become gRPC statuses."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    async def GetDevicePluginOptions(
        self, request: pb.Empty, context: aio.ServicerContext[pb.Empty, pb.DevicePluginOptions]
    ) -> pb.DevicePluginOptions:
        return options_to_pb(self._backend.options)

    async def ListAndWatch(
        self, request: pb.Empty, context: aio.ServicerContext[pb.Empty, pb.ListAndWatchResponse]
    ) -> AsyncIterator[pb.ListAndWatchResponse]:
        async for devices in self._backend.devices.watch():
            yield devices_to_pb(devices)

    async def GetPreferredAllocation(
        self,
        request: pb.PreferredAllocationRequest,
        context: aio.ServicerContext[pb.PreferredAllocationRequest, pb.PreferredAllocationResponse],
    ) -> pb.PreferredAllocationResponse:
        responses = []
        for req in request.container_requests:
            try:
                ids = await self._backend.preferred_allocation(
                    list(req.available_deviceIDs),
                    list(req.must_include_deviceIDs),
                    req.allocation_size,
                )
            except Refusal as r:
                await context.abort(_STATUS[r.kind], r.message)
            responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return pb.PreferredAllocationResponse(container_responses=responses)

    async def Allocate(
        self,
        request: pb.AllocateRequest,
        context: aio.ServicerContext[pb.AllocateRequest, pb.AllocateResponse],
    ) -> pb.AllocateResponse:
        # the backend's log line and metrics, after the reply (grpc-stubs declare the callback
        # as a class rather than a Protocol, so no function matches it)
        context.add_done_callback(collect())  # type: ignore[arg-type]
        try:
            allocs = await self._backend.allocate(
                [list(c.devices_ids) for c in request.container_requests]
            )
        except Refusal as r:
            await context.abort(_STATUS[r.kind], r.message)
        return pb.AllocateResponse(container_responses=[allocation_to_pb(a) for a in allocs])

    async def PreStartContainer(
        self,
        request: pb.PreStartContainerRequest,
        context: aio.ServicerContext[pb.PreStartContainerRequest, pb.PreStartContainerResponse],
    ) -> pb.PreStartContainerResponse:
        try:
            await self._backend.pre_start(list(request.devices_ids))
        except Refusal as r:
            await context.abort(_STATUS[r.kind], r.message)
        return pb.PreStartContainerResponse()


class PluginServer:
    """Serves one backend on `socket_path`; can be started again after kubelet deletes the file."""

    def __init__(self, backend: Backend, socket_path: Path) -> None:
        self.backend = backend
        self.socket_path = socket_path
        self._server: aio.Server | None = None
        self.generation = 0  # bumped on every (re)start: a new socket needs a new Register

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        await self.stop()
        # Unlink and bind with no await in between: the directory watcher shares this loop and
        # must never observe our own socket missing while we are serving.
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self.socket_path)
        server = aio.server()
        pb_grpc.add_DevicePluginServicer_to_server(DevicePluginServicer(self.backend), server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        self._server = server
        self.generation += 1
        await server.start()

    async def stop(self, grace: float | None = None) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    def remove_socket(self) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self.socket_path)
