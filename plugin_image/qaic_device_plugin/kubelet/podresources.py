"""A client of kubelet's PodResources API v1: which devices running pods hold (`List`), and
which devices kubelet's device manager can hand out now (`GetAllocatableResources`).

Kubelet serves it on `/var/lib/kubelet/pod-resources/kubelet.sock`. A device plugin keeps no
record of what it handed out, and kubelet tracks allocations per resource name and device ID;
this is how a plugin learns what pods hold after it changed either. Generic: it knows
nothing about any vendor's devices.

v1 has no Watch (the KEP's `Watch` was never served by kubelet): a caller that must learn of a
release asks again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from .api import podresources_v1_pb2 as pb
from .api import podresources_v1_pb2_grpc as pb_grpc

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
# The plugin asks before its first registration: a hung kubelet must not hold that up long.
# kubelet answers List from memory, in milliseconds.
DEFAULT_TIMEOUT_SECONDS = 2.0
# kubelet's own PodResources clients allow 16 MiB (a busy node lists many pods); gRPC's
# default 4 MiB would fail there.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ContainerDevices:
    """Devices of one resource that kubelet assigned to one container of a running pod."""

    namespace: str
    pod: str
    container: str
    resource_name: str
    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ResourceDevices:
    """Devices of one resource that kubelet's device manager can allocate now: those a
    registered device plugin lists Healthy, held or not (kubelet drops them all at once when
    the plugin's endpoint goes away)."""

    resource_name: str
    device_ids: tuple[str, ...]


class PodResourcesUnavailable(Exception):
    """The API could not be asked (no socket, kubelet not answering, an RPC error)."""


def _flatten(resp: pb.ListPodResourcesResponse) -> list[ContainerDevices]:
    out: list[ContainerDevices] = []
    for pod in resp.pod_resources:
        for c in pod.containers:
            for d in c.devices:
                out.append(
                    ContainerDevices(
                        pod.namespace, pod.name, c.name, d.resource_name, tuple(d.device_ids)
                    )
                )
    return out


async def _call(socket_path: Path, timeout: float, method: str, request: object) -> Any:
    """One unary call over the Unix socket, bounded by `timeout` (connect included)."""
    if not socket_path.is_socket():
        raise PodResourcesUnavailable(f"{socket_path}: no such socket")
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    async with aio.insecure_channel(f"unix://{socket_path}", options=options) as channel:
        stub = pb_grpc.PodResourcesListerStub(channel)
        try:
            return await getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, aio.AioRpcError) else None
            name = code.name if code is not None else "ERROR"
            detail = e.details() if isinstance(e, aio.AioRpcError) else str(e)
            raise PodResourcesUnavailable(f"{socket_path}: {name}: {detail}") from None


async def list_devices(
    socket_path: Path = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> list[ContainerDevices]:
    """One `List` call over the Unix socket, bounded by `timeout` (connect included).

    Raises PodResourcesUnavailable; never waits longer than `timeout`.
    """
    resp = await _call(socket_path, timeout, "List", pb.ListPodResourcesRequest())
    return _flatten(resp)


async def allocatable_devices(
    socket_path: Path = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> list[ResourceDevices]:
    """One `GetAllocatableResources` call (GA since 1.28): the devices device plugins serve
    Healthy now. Raises PodResourcesUnavailable; never waits longer than `timeout`."""
    resp = await _call(socket_path, timeout, "GetAllocatableResources",
                       pb.AllocatableResourcesRequest())
    return [ResourceDevices(d.resource_name, tuple(d.device_ids)) for d in resp.devices]
