"""A bare grpcio server with the device-plugin protobuf stubs and a constant Allocate reply.

The second floor of the side-by-side Allocate figure (issue 11): the bytes floor
(bench/common/floor_server.py) has no protobuf at all, this one costs what any Python v1beta1
servicer costs (deserialise, build a reply, serialise) with no plugin logic, so the gap between
them and ours says where an Allocate miss comes from. Run as a script:

    python bench/sidebyside/pb_floor_server.py /tmp/x/pb.sock
"""

# (the servicer base class comes from the untyped grpc stubs: pyproject.toml's mypy override
# for bench.sidebyside.pb_floor_server allows subclassing it)

from __future__ import annotations

import asyncio
import signal
import sys

from grpc import aio

from qaic_device_plugin.kubelet.api import deviceplugin_pb2 as pb
from qaic_device_plugin.kubelet.api import deviceplugin_pb2_grpc as pb_grpc

_NODE = "/dev/accel/accel1"
_REPLY = pb.AllocateResponse(
    container_responses=[
        pb.ContainerAllocateResponse(
            envs={"QAIC_VISIBLE_DEVICES": "0"},
            devices=[pb.DeviceSpec(container_path=_NODE, host_path=_NODE, permissions="rw")],
        )
    ]
)


class _Constant(pb_grpc.DevicePluginServicer):
    async def Allocate(
        self,
        request: pb.AllocateRequest,
        context: aio.ServicerContext[pb.AllocateRequest, pb.AllocateResponse],
    ) -> pb.AllocateResponse:
        return _REPLY


async def serve(path: str) -> None:
    server = aio.server()
    pb_grpc.add_DevicePluginServicer_to_server(_Constant(), server)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
