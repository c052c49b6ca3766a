"""Serve the DRA node service and the registration socket; re-create either if it is removed.

Layout as kubeletplugin's defaults: `<plugins dir>/<driver>/dra.sock` for the node service and
`<registry dir>/<driver>-reg.sock` for kubelet's plugin watcher, which calls GetInfo on every
socket that appears there (also after a kubelet restart), so re-creating a removed socket is
all re-registration takes. The node service is up before the registration socket appears.
With a health feed, dra.sock also serves the dra-health v1 stream and registration says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from grpc import aio

from ...core.aio import wait_event
from ...core.fswatch import watch_directory
from ..api.dra_health_v1 import api_pb2_grpc as health_grpc
from ..api.dra_v1 import api_pb2_grpc as dra_grpc
from ..api.pluginregistration_v1 import api_pb2_grpc as reg_grpc
from .health import HEARTBEAT_SECONDS, DraHealthServicer, HealthFeed
from .node import NodeService
from .services import DraServicer, RegistrationServicer
from .types import DRA_SERVICE_V1, DRA_SOCKET, HEALTH_SERVICE_V1

log = logging.getLogger(__name__)


@dataclass
class _Socket:
    path: Path
    add: Callable[[aio.Server], None]
    server: aio.Server | None = None
    identity: tuple[int, int] | None = None  # (inode, ctime_ns) of the socket we bound


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_ctime_ns)


class DraPlugin:
    def __init__(
        self,
        driver_name: str,
        node: NodeService,
        *,
        plugins_dir: Path,
        registry_dir: Path,
        resync_seconds: float = 5.0,
        health: HealthFeed | None = None,
        health_heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.driver_name = driver_name
        self.dra_socket = plugins_dir / driver_name / DRA_SOCKET
        self.registration_socket = registry_dir / f"{driver_name}-reg.sock"
        services = [DRA_SERVICE_V1] + ([HEALTH_SERVICE_V1] if health is not None else [])
        self.registration = RegistrationServicer(driver_name, str(self.dra_socket), services)
        dra = DraServicer(node)
        watch = (
            DraHealthServicer(health, heartbeat_seconds=health_heartbeat_seconds)
            if health is not None else None
        )

        def add_node_services(server: aio.Server) -> None:
            dra_grpc.add_DRAPluginServicer_to_server(dra, server)
            if watch is not None:
                health_grpc.add_DRAResourceHealthServicer_to_server(watch, server)

        reg = self.registration
        self._sockets = [  # in this order: kubelet dials dra.sock as soon as it sees reg.sock
            _Socket(self.dra_socket, add_node_services),
            _Socket(
                self.registration_socket,
                lambda s: reg_grpc.add_RegistrationServicer_to_server(reg, s),
            ),
        ]
        self._resync = resync_seconds
        self._wake = asyncio.Event()
        self.bound = 0  # sockets (re)created, for tests and logs
        self._bound_changed = asyncio.Condition()

    async def _bind(self, sock: _Socket) -> None:
        """Bind under a hidden name and rename into place once listening: grpc creates the
        file at bind and listens only at start, and a watcher that dials in between (kubelet's
        plugin watcher reacts to the file) is refused. Watchers skip dot files; the rename
        also replaces a stale socket of an earlier run without a moment of no socket."""
        if sock.server is not None:
            await sock.server.stop(None)
        sock.path.parent.mkdir(parents=True, exist_ok=True)
        binding = sock.path.with_name(f".{sock.path.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            binding.unlink()
        server = aio.server()
        sock.add(server)
        server.add_insecure_port(f"unix://{binding}")
        await server.start()
        os.rename(binding, sock.path)
        sock.server, sock.identity = server, _identity(sock.path)
        self.bound += 1
        log.info("serving", extra={"event": "dra_socket", "path": str(sock.path)})
        async with self._bound_changed:
            self._bound_changed.notify_all()

    async def wait_bound(self, count: int, timeout: float = 10.0) -> None:
        """Wait until sockets have been (re)created `count` times in total."""
        async with self._bound_changed:
            await asyncio.wait_for(
                self._bound_changed.wait_for(lambda: self.bound >= count), timeout
            )

    async def ensure(self) -> None:
        """(Re)create every socket that is missing or no longer ours, in order."""
        for sock in self._sockets:
            if sock.server is None or _identity(sock.path) != sock.identity:
                if sock.server is not None:
                    log.warning(
                        "socket removed; re-creating",
                        extra={"event": "dra_socket_lost", "path": str(sock.path)},
                    )
                    if sock is self._sockets[1]:
                        self.registration.registered.clear()
                await self._bind(sock)

    async def start(self) -> None:
        await self.ensure()

    async def _watch(self, directory: Path) -> None:
        async for _ in watch_directory(directory):
            self._wake.set()

    async def run(self) -> None:
        """Keep the sockets in place until cancelled."""
        watchers = [
            asyncio.create_task(self._watch(d), name=f"dra-watch {d}")
            for d in {s.path.parent for s in self._sockets}
        ]
        try:
            while True:
                await wait_event(self._wake, self._resync)
                self._wake.clear()
                await self.ensure()
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)

    async def close(self) -> None:
        for sock in reversed(self._sockets):
            if sock.server is not None:
                await sock.server.stop(None)
                sock.server = None
            if sock.identity is not None and _identity(sock.path) == sock.identity:
                with contextlib.suppress(OSError):
                    os.unlink(sock.path)
