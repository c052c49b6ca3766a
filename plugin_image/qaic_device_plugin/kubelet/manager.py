"""Serve every resource, register it, and do both again whenever kubelet restarts.

Kubelet restarts delete every socket in the plugin dir and create kubelet.sock anew (possibly
with the same inode), so we react to directory events, not to inode numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc import aio

from ..core.aio import wait_event
from ..core.fswatch import Change, WatchStatus, watch_directory
from .registration import register
from .server import PluginServer
from .types import KUBELET_SOCKET, Backend, valid_extended_resource_name

log = logging.getLogger(__name__)


class ManagerObserver:
    """Hooks for metrics; the default does nothing."""

    def registered(self, resource: str, *, first: bool, reaction_seconds: float | None) -> None:
        """`reaction_seconds`: from kubelet.sock (re)appearing to this successful Register."""

    def registration_failed(self, resource: str, error: str) -> None: ...


def socket_name(resource_name: str) -> str:
    """`qualcomm.com/qaic-ultra` -> `qualcomm.com_qaic-ultra.sock`: unique per resource."""
    return resource_name.replace("/", "_") + ".sock"


@dataclass
class _Served:
    backend: Backend
    server: PluginServer
    kick: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    registrations: int = 0
    # What the last successful Register was made against: kubelet.sock's identity (inode and
    # ctime: the inode alone can be reused) and our server's generation. Equal now = no-op.
    registered_with: tuple[tuple[int, int], int] | None = None


class PluginManager:
    def __init__(
        self,
        plugin_dir: Path,
        *,
        observer: ManagerObserver | None = None,
        register_timeout: float = 15.0,
        backoff: tuple[float, float] = (0.05, 5.0),
        resync_seconds: float = 10.0,
        watched_resync_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plugin_dir = plugin_dir
        self.kubelet_socket = plugin_dir / KUBELET_SOCKET
        self._observer = observer or ManagerObserver()
        self._register_timeout = register_timeout
        self._backoff = backoff
        self._resync_seconds = resync_seconds
        self._watched_resync_seconds = watched_resync_seconds or resync_seconds
        self._watch = WatchStatus()
        self._clock = clock
        self._served: dict[str, _Served] = {}
        self._kubelet_seen_at: float | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._closed = False
        self._died: asyncio.Future[asyncio.Task[None]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        if self.kubelet_socket.exists():
            self._kubelet_seen_at = self._clock()
        else:
            log.info(
                "waiting for kubelet",
                extra={"event": "kubelet_absent", "socket": str(self.kubelet_socket)},
            )
        self._died = asyncio.get_running_loop().create_future()
        self._loops = [
            self._spawn(self._watch_loop(), "plugin-dir-watch"),
            self._spawn(self._resync_loop(), "plugin-dir-resync"),
        ]

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A long-lived task whose unexpected end (return or exception) `died()` reports."""
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_task_done)
        return task

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed or self._died is None or self._died.done():
            return
        self._died.set_result(task)

    async def died(self) -> asyncio.Task[None]:
        """Wait until one of our long-lived tasks ends unexpectedly; return it (for supervision:
        nothing here restarts it, the caller ends the process)."""
        assert self._died is not None, "start() first"
        return await asyncio.shield(self._died)

    async def close(self) -> None:
        """Stop serving and remove our sockets; kubelet then marks the devices unhealthy."""
        self._closed = True
        for t in self._loops:
            t.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await asyncio.gather(*(self._drop(name) for name in list(self._served)))

    @property
    def alive(self) -> bool:
        loops_ok = bool(self._loops) and all(not t.done() for t in self._loops)
        regs_ok = all(s.task is not None and not s.task.done() for s in self._served.values())
        return loops_ok and regs_ok and not self._closed

    @property
    def resources(self) -> list[str]:
        return sorted(self._served)

    def registrations(self, resource: str) -> int:
        return self._served[resource].registrations

    def readiness(self) -> str | None:
        """Why we are not ready (None: every resource served is registered with the kubelet
        that listens now, on the socket we serve now). Readiness means registered."""
        kubelet = self._kubelet_identity()
        if kubelet is None:
            return f"kubelet socket {self.kubelet_socket} absent"
        pending = [
            name
            for name, s in self._served.items()
            if s.registered_with != (kubelet, s.server.generation)
        ]
        if pending:
            return "not registered with the current kubelet: " + ", ".join(sorted(pending))
        return None

    # -- the set of resources ----------------------------------------------------------------

    async def set_backends(self, backends: Mapping[str, Backend]) -> None:
        """Serve and register new resources, drop vanished ones; existing ones are untouched."""
        for name in sorted(set(self._served) - set(backends)):
            await self._drop(name)
        for name in sorted(set(backends) - set(self._served)):
            if not valid_extended_resource_name(name):
                raise ValueError(f"invalid extended resource name {name!r}")
            served = _Served(
                backend=backends[name],
                server=PluginServer(backends[name], self.plugin_dir / socket_name(name)),
            )
            await served.server.start()
            served.task = self._spawn(self._register_loop(served), f"register {name}")
            self._served[name] = served
            served.kick.set()
            log.info(
                "serving resource",
                extra={
                    "event": "serving",
                    "resource": name,
                    "socket": str(served.server.socket_path),
                },
            )

    async def _drop(self, name: str) -> None:
        served = self._served.pop(name)
        if served.task is not None:
            served.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served.task
        await served.server.stop(grace=0)
        served.server.remove_socket()
        log.info("stopped serving resource", extra={"event": "unserved", "resource": name})

    # -- registration ------------------------------------------------------------------------

    async def _register_loop(self, served: _Served) -> None:
        name = served.backend.resource_name
        delay = self._backoff[0]
        while True:
            await served.kick.wait()
            served.kick.clear()
            kubelet = self._kubelet_identity()
            if kubelet is None:
                continue  # kubelet.sock's creation kicks us again
            target = (kubelet, served.server.generation)
            if served.registered_with == target:
                continue  # already registered with this kubelet on this socket
            try:
                await register(
                    self.kubelet_socket,
                    served.server.socket_path.name,
                    name,
                    served.backend.options,
                    timeout=self._register_timeout,
                )
            except aio.AioRpcError as e:
                error = f"{e.code().name}: {e.details()}"
                log.warning(
                    "registration failed; retrying",
                    extra={
                        "event": "register_failed",
                        "resource": name,
                        "error": error,
                        "retry_in_s": delay,
                    },
                )
                self._observer.registration_failed(name, error)
                await wait_event(served.kick, delay)
                served.kick.set()
                delay = min(delay * 2, self._backoff[1])
                continue
            delay = self._backoff[0]
            previous, served.registered_with = served.registered_with, target
            served.registrations += 1
            first = served.registrations == 1
            # Reaction time is only meaningful for the first Register with a NEW kubelet
            # (not at start-up, not after our own socket was removed under the same kubelet).
            new_kubelet = previous is not None and previous[0] != kubelet
            reaction = (
                self._clock() - self._kubelet_seen_at
                if new_kubelet and self._kubelet_seen_at is not None
                else None
            )
            log.info(
                "registered with kubelet" if first else "re-registered with kubelet",
                extra={
                    "event": "registered" if first else "reregistered",
                    "resource": name,
                    "endpoint": served.server.socket_path.name,
                    "since_kubelet_s": None if reaction is None else round(reaction, 4),
                },
            )
            self._observer.registered(name, first=first, reaction_seconds=reaction)

    def _kubelet_identity(self) -> tuple[int, int] | None:
        try:
            st = self.kubelet_socket.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_ctime_ns)

    # -- reacting to kubelet -----------------------------------------------------------------

    async def _restore(self, kubelet_restarted: bool) -> None:
        """Re-serve any resource whose socket vanished; re-register as needed."""
        for served in list(self._served.values()):
            if not served.server.socket_path.exists():
                log.info(
                    "own socket removed; serving again",
                    extra={"event": "socket_removed", "resource": served.backend.resource_name},
                )
                await served.server.start()
                served.kick.set()
            elif kubelet_restarted:
                served.kick.set()

    async def _watch_loop(self) -> None:
        async for ev in watch_directory(self.plugin_dir, status=self._watch):
            own = {s.server.socket_path.name for s in self._served.values()}
            if ev.change is Change.CREATED and ev.name == KUBELET_SOCKET:
                self._kubelet_seen_at = self._clock()
                log.info("kubelet socket created", extra={"event": "kubelet_started"})
                await self._restore(kubelet_restarted=True)
            elif ev.change is Change.DELETED and ev.name in own:
                await self._restore(kubelet_restarted=False)
            elif ev.change is Change.RESCAN:
                if self.kubelet_socket.exists():
                    self._kubelet_seen_at = self._clock()
                await self._restore(kubelet_restarted=self.kubelet_socket.exists())

    async def _resync_loop(self) -> None:
        """Safety net for lost events (or no watch at all: inotify watches exhausted): our
        sockets must exist while we serve, and a kubelet we are not registered with gets a
        Register (a no-op for resources already registered with it). While the directory
        watch is in place it only catches lost events, so it runs at the slower period."""
        while True:
            if self._watch.live:
                await wait_event(self._watch.lost, self._watched_resync_seconds)
            else:
                await asyncio.sleep(self._resync_seconds)
            kubelet = self._kubelet_identity()
            new = kubelet is not None and any(
                s.registered_with is None or s.registered_with[0] != kubelet
                for s in self._served.values()
            )
            if new:
                self._kubelet_seen_at = self._clock()
            await self._restore(kubelet_restarted=new)
