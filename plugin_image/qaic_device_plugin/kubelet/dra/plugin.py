"""Serve the DRA node service and the registration socket; re-create either if it is removed.

Layout as kubeletplugin's: `<plugins dir>/<driver>/dra.sock` for the node service and
`<registry dir>/<driver>-reg.sock` for kubelet's plugin watcher, which calls GetInfo on every
socket that appears there (also after a kubelet restart), so re-creating a removed socket is
all re-registration takes. The node service is up before the registration socket appears.
With a health feed, dra.sock also serves the dra-health v1 stream and registration says so.

With the pod's UID both names carry it (`dra-<uid>.sock`, `<driver>-<uid>-reg.sock`, as
kubeletplugin's RollingUpdate option), so two instances serve side by side during a rolling
update; without it only the holder of the sockets lock binds the fixed names and another
instance waits for it to exit. A socket someone else put live at one of our names is never
replaced, only one that is gone or dead: two instances never take the files from each other
(issue 19: thousands of re-binds a second, kubelet registering neither). instances.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc import aio

from ...core.aio import wait_event
from ...core.fswatch import watch_directory
from ..api.dra_health_v1 import api_pb2_grpc as health_grpc
from ..api.dra_v1 import api_pb2 as dra_pb
from ..api.dra_v1 import api_pb2_grpc as dra_grpc
from ..api.pluginregistration_v1 import api_pb2_grpc as reg_grpc
from .checkpoint import Checkpoint
from .health import HEARTBEAT_SECONDS, DraHealthServicer, HealthFeed
from .instances import (
    SERIALIZE_LOCK,
    SOCKETS_LOCK,
    FileLock,
    SocketNames,
    Turns,
    binding_path,
    remove_stale_sockets,
    server_pid,
)
from .node import NodeService
from .services import DraServicer, RegistrationServicer
from .types import DRA_SERVICE_V1, HEALTH_SERVICE_V1

log = logging.getLogger(__name__)


@dataclass
class _Socket:
    path: Path
    add: Callable[[aio.Server], None]
    server: aio.Server | None = None
    identity: tuple[int, int] | None = None  # (inode, ctime_ns) of the socket we bound
    yielded: bool = False  # another process serves a live socket at this path


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_ctime_ns)


class _TakingTurns(DraServicer):
    """The node service, one call at a time across every instance on the node."""

    def __init__(self, node: NodeService, turns: Turns) -> None:
        super().__init__(node)
        self._turns = turns

    async def NodePrepareResources(
        self, request: dra_pb.NodePrepareResourcesRequest, context: aio.ServicerContext[Any, Any]
    ) -> dra_pb.NodePrepareResourcesResponse:
        async with self._turns.turn():
            return await super().NodePrepareResources(request, context)

    async def NodeUnprepareResources(
        self, request: dra_pb.NodeUnprepareResourcesRequest, context: aio.ServicerContext[Any, Any]
    ) -> dra_pb.NodeUnprepareResourcesResponse:
        async with self._turns.turn():
            return await super().NodeUnprepareResources(request, context)


class DraPlugin:
    def __init__(
        self,
        driver_name: str,
        node: NodeService,
        *,
        plugins_dir: Path,
        registry_dir: Path,
        pod_uid: str = "",
        checkpoint: Checkpoint | None = None,
        resync_seconds: float = 5.0,
        health: HealthFeed | None = None,
        health_heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        """`pod_uid`: per-pod socket names (rolling updates); `checkpoint`: the one `node`
        uses, re-read when another instance changed it."""
        self.driver_name = driver_name
        self.names = SocketNames(driver_name, plugins_dir, registry_dir, pod_uid)
        self.dra_socket = self.names.dra
        self.registration_socket = self.names.registration
        # Fixed names: only the holder of this lock binds them.
        self._owner = None if pod_uid else FileLock(self.names.driver_dir / SOCKETS_LOCK)
        services = [DRA_SERVICE_V1] + ([HEALTH_SERVICE_V1] if health is not None else [])
        self.registration = RegistrationServicer(driver_name, str(self.dra_socket), services)
        #: One call at a time across the node's instances: prepare, unprepare, and anything
        #: else that rewrites prepared claims (NodeService.prepare_again_holding).
        self.turns = Turns(self.names.driver_dir / SERIALIZE_LOCK, checkpoint)
        dra = _TakingTurns(node, self.turns)
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
        binding = binding_path(sock.path)
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

    @property
    def serving(self) -> bool:
        """False while another instance holds the fixed names and this one waits."""
        return self._owner is None or self._owner.held

    async def ensure(self) -> None:
        """(Re)create every socket that is missing, dead or replaced by a dead one, in order;
        leave one that another process serves (and the ones after it) until it goes."""
        if not self.serving:
            return
        for sock in self._sockets:
            here = _identity(sock.path)
            if sock.server is not None and here == sock.identity:
                continue
            pid = await server_pid(sock.path) if here is not None else None
            if (pid == os.getpid() and here is not None and sock.identity is not None
                    and here[0] == sock.identity[0]):
                sock.identity = here  # still ours: only its attributes changed
                continue
            if pid is not None:
                if not sock.yielded:
                    sock.yielded = True
                    log.warning(
                        "another process serves this socket; waiting for it to go",
                        extra={"event": "dra_socket_taken", "path": str(sock.path)},
                    )
                if sock is self._sockets[1]:
                    self.registration.registered.clear()
                return
            if sock.server is not None:
                log.warning(
                    "socket removed; re-creating",
                    extra={"event": "dra_socket_lost", "path": str(sock.path)},
                )
                if sock is self._sockets[1]:
                    self.registration.registered.clear()
            sock.yielded = False
            await self._bind(sock)

    async def start(self) -> None:
        """Sweep dead sockets of earlier instances, then serve (unless another instance holds
        the fixed names: run() waits for it)."""
        await remove_stale_sockets(self.names)
        if self._owner is not None and not self._owner.try_acquire():
            log.warning(
                "another instance of the driver serves the fixed socket names; waiting for it "
                "to exit (QAIC_DRA_POD_UID gives each instance its own)",
                extra={"event": "dra_socket_wait", "lock": str(self._owner.path)},
            )
            return
        await self.ensure()

    async def _watch(self, directory: Path) -> None:
        async for _ in watch_directory(directory):
            self._wake.set()

    async def run(self) -> None:
        """Keep the sockets in place until cancelled (first wait for the fixed names)."""
        if self._owner is not None and not self._owner.held:
            await self._owner.acquire()
            log.info("the other instance is gone; serving",
                     extra={"event": "dra_socket_takeover"})
            await remove_stale_sockets(self.names)
            await self.ensure()
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
        if self._owner is not None:  # after the sockets are gone: the next instance binds
            self._owner.release()
