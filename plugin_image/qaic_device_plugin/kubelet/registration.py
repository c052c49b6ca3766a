"""The Register call to kubelet, made once our server is up: kubelet dials back before replying."""

from __future__ import annotations

from pathlib import Path

from grpc import aio

from .api import deviceplugin_pb2 as pb
from .api import deviceplugin_pb2_grpc as pb_grpc
from .convert import options_to_pb
from .types import API_VERSION, PluginOptions


async def register(
    kubelet_socket: Path,
    endpoint: str,
    resource_name: str,
    options: PluginOptions,
    timeout: float = 15.0,
) -> None:
    """Raise grpc.aio.AioRpcError if kubelet refuses or is unreachable.

    The timeout covers kubelet's own 10 s dial-back to us plus GetDevicePluginOptions.
    """
    async with aio.insecure_channel(f"unix://{kubelet_socket}") as channel:
        await pb_grpc.RegistrationStub(channel).Register(
            pb.RegisterRequest(
                version=API_VERSION,
                endpoint=endpoint,
                resource_name=resource_name,
                options=options_to_pb(options),
            ),
            timeout=timeout,
        )
