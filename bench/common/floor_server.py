"""A bare grpcio server process: one empty unary method on a Unix socket, nothing else.

The floor for Allocate/GetPreferredAllocation latency (an empty unary call over the same kind of
socket, to another process) and for the plugin's RSS (a process that only imports grpcio and
serves). Run as a script, so it imports nothing of this repository:

    python bench/common/floor_server.py /tmp/x/floor.sock
"""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
from grpc import aio

SERVICE = "bench.Floor"
METHOD = f"/{SERVICE}/Empty"


async def _empty(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
    return b""


async def serve(path: str) -> None:
    server = aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Empty": grpc.unary_unary_rpc_method_handler(_empty)}
    )
    server.add_generic_rpc_handlers((handler,))
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
