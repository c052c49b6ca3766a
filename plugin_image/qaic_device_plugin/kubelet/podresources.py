"""A client of kubelet's PodResources API v1 (`List`): which devices running pods hold.

Kubelet serves it on `/var/lib/kubelet/pod-resources/kubelet.sock`. A device plugin keeps no
record of what it handed out, and kubelet tracks allocations per resource name and device ID;
this is how a plugin learns what pods hold after it changed either. Generic: it knows
nothing about any vendor's devices.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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


async def list_devices(
    socket_path: Path = DEFAULT_SOCKET, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> list[ContainerDevices]:
    """One `List` call over the Unix socket, bounded by `timeout` (connect included).

    Raises PodResourcesUnavailable; never waits longer than `timeout`.
    """
    if not socket_path.is_socket():
        raise PodResourcesUnavailable(f"{socket_path}: no such socket")
    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    async with aio.insecure_channel(f"unix://{socket_path}", options=options) as channel:
        stub = pb_grpc.PodResourcesListerStub(channel)
        try:
            resp = await stub.List(pb.ListPodResourcesRequest(), timeout=timeout)
        except grpc.RpcError as e:
            code = e.code() if isinstance(e, aio.AioRpcError) else None
            name = code.name if code is not None else "ERROR"
            detail = e.details() if isinstance(e, aio.AioRpcError) else str(e)
            raise PodResourcesUnavailable(f"{socket_path}: {name}: {detail}") from None
    return _flatten(resp)
