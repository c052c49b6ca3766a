"""The floors both the live run and the side-by-side run measure beside their figures: an empty
unary call to a bare grpcio server in another process (bench/common/floor_server.py), and
`python -c "import grpc"` for process start."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Protocol

from grpc import aio

from .errors import BenchError
from .floor_server import METHOD as FLOOR_METHOD

FLOOR_SERVER = Path(__file__).resolve().with_name("floor_server.py")


class Recorder(Protocol):
    """Where a figure goes: the live run's Samples and the side-by-side run's Side both fit."""

    def add(self, key: str, value: float) -> None: ...


class FloorServer:
    """bench/common/floor_server.py as a subprocess: a bare grpcio server with an empty method."""

    def __init__(self, proc: asyncio.subprocess.Process, socket: Path) -> None:
        self.proc = proc
        self.socket = socket
        self.channel = aio.insecure_channel(f"unix://{socket}")
        self.call = self.channel.unary_unary(FLOOR_METHOD, None, None)

    @classmethod
    async def start(cls, socket: Path) -> FloorServer:
        socket.parent.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(FLOOR_SERVER),
            str(socket),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise BenchError(f"floor server did not start: {line!r}")
        server = cls(proc, socket)
        await asyncio.wait_for(server.channel.channel_ready(), 10)
        return server

    async def empty(self) -> None:
        await self.call(b"", timeout=10)

    async def stop(self) -> None:
        await self.channel.close(None)
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def import_grpc_floor(out: Recorder) -> None:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import grpc")
    rc = await proc.wait()
    out.add("floor.import_grpc", time.monotonic() - t0)
    if rc != 0:
        raise BenchError(f"python -c 'import grpc' exited {rc}")
