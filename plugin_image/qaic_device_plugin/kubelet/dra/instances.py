"""Several instances of one DRA driver on a node: socket names, locks, and stale sockets.

Two instances meet on a node during a DaemonSet's rolling update with `maxSurge`, while a
deleted-and-recreated DaemonSet's old pod terminates, or with a second install. Bound to the
same socket names they took the files from each other in a loop and kubelet never kept either.

- With the pod's UID (kubeletplugin's `RollingUpdate(uid)`), every name is per pod, as
  upstream names them: `<plugins>/<driver>/dra-<uid>.sock` and
  `<registry>/<driver>-<uid>-reg.sock`. kubelet 1.33+ registers both instances of the
  driver, calls the newest connected one, and keeps the driver usable while either runs.
- Without it the names are fixed (`dra.sock`, `<driver>-reg.sock`) and only the holder of
  `sockets.lock` binds them; another instance waits for the lock in the kernel, which hands it
  over when the holder exits (also by a crash), and never touches the sockets meanwhile.

Either way prepare and unprepare take `serialize.lock` (upstream's name), so the instances
take turns on the shared checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import struct
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import Checkpoint
from .types import DRA_SOCKET

log = logging.getLogger(__name__)

#: grpc's add_insecure_port refuses a longer unix:// path (sun_path's 108 bytes minus grpc's own)
GRPC_UNIX_PATH_MAX = 105
#: A pod UID as the API server makes it (a UUID); the settings accept no longer one.
POD_UID_MAX = 36
SERIALIZE_LOCK = "serialize.lock"
SOCKETS_LOCK = "sockets.lock"


def binding_path(path: Path) -> Path:
    """The hidden name a socket is bound under before it is renamed to `path` (watchers,
    kubelet's included, skip dot files). The longest path this driver ever binds."""
    return path.with_name(f".{path.name}.tmp")


def _hash(data: str, size: int) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()[:size]).decode()[
        : (size * 8 + 5) // 6]


def _fitting(directory: Path, candidates: list[str]) -> Path:
    """The first name whose bound (hidden) path fits grpc's limit, else the last (shortest):
    the settings refuse a directory too long even for that one."""
    for name in candidates:
        if len(str(binding_path(directory / name))) <= GRPC_UNIX_PATH_MAX:
            return directory / name
    return directory / candidates[-1]


@dataclass(frozen=True)
class SocketNames:
    """Where an instance binds. With a pod UID the registration socket is named as
    kubeletplugin v0.37's RollingUpdateRegistrarSocketFile names it, the first that fits:
    `<driver>-<uid>-reg.sock`, `<driver>-<b64(sha256(uid))[:8 bytes]>-reg.sock`,
    `dra-<b64(sha256(driver NUL uid))[:16 bytes]>-reg.sock`; the DRA socket `dra-<uid>.sock`
    as upstream's, or (our addition, for long kubelet directories) `dra-<b64(sha256(uid))[:8
    bytes]>.sock`. kubelet does not care: registration tells it the endpoint."""

    driver: str
    plugins_dir: Path
    registry_dir: Path
    pod_uid: str = ""

    @property
    def driver_dir(self) -> Path:
        return self.plugins_dir / self.driver

    def dra_candidates(self) -> list[str]:
        if not self.pod_uid:
            return [DRA_SOCKET]
        return [f"dra-{self.pod_uid}.sock", f"dra-{_hash(self.pod_uid, 8)}.sock"]

    def registration_candidates(self) -> list[str]:
        if not self.pod_uid:
            return [f"{self.driver}-reg.sock"]
        uid = self.pod_uid
        return [f"{self.driver}-{uid}-reg.sock", f"{self.driver}-{_hash(uid, 8)}-reg.sock",
                f"dra-{_hash(self.driver + chr(0) + uid, 16)}-reg.sock"]

    @property
    def dra(self) -> Path:
        return _fitting(self.driver_dir, self.dra_candidates())

    @property
    def registration(self) -> Path:
        return _fitting(self.registry_dir, self.registration_candidates())

    def room(self) -> tuple[int, int]:
        """The longest plugins and registry directory paths whose sockets (the shortest
        names, bound under their hidden names) fit grpc's limit."""
        dra = binding_path(Path(self.driver) / self.dra_candidates()[-1])
        reg = binding_path(Path(self.registration_candidates()[-1]))
        return (GRPC_UNIX_PATH_MAX - 1 - len(str(dra)), GRPC_UNIX_PATH_MAX - 1 - len(str(reg)))

    def ours_or_a_peers(self, path: Path) -> bool:
        """A socket (or its hidden binding) of this driver, of any instance."""
        name = path.name.removeprefix(".").removesuffix(".tmp")
        if path.parent == self.driver_dir:
            return name == DRA_SOCKET or (name.startswith("dra-") and name.endswith(".sock"))
        return path.parent == self.registry_dir and (
            name == f"{self.driver}-reg.sock"
            or (name.startswith(f"{self.driver}-") and name.endswith("-reg.sock"))
        )


async def server_pid(path: Path, timeout: float = 1.0) -> int | None:
    """The process listening on Unix socket `path` (0: one we cannot name, e.g. in another
    PID namespace), or None if none does. Only a refused (or vanished) connect says None: a
    socket we cannot judge counts as served."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except (OSError, TimeoutError):
        return 0
    try:
        sock = writer.get_extra_info("socket")
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid: int = struct.unpack("3i", creds)[0]
    except OSError:
        pid = 0
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return pid


async def remove_stale_sockets(names: SocketNames) -> list[Path]:
    """Delete sockets of this driver that no process serves any more (a pod killed before it
    could remove its own; kubelet would keep dialling them). Live ones are another instance's
    and stay; so do this instance's own names, which binding replaces anyway."""
    removed: list[Path] = []
    own = {names.dra, names.registration, binding_path(names.dra),
           binding_path(names.registration)}
    for d in (names.driver_dir, names.registry_dir):
        with contextlib.suppress(FileNotFoundError):
            for p in sorted(d.iterdir()):
                if p in own or not p.is_socket() or not names.ours_or_a_peers(p):
                    continue
                if await server_pid(p) is None:
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
                    removed.append(p)
    if removed:
        log.info("stale sockets of an earlier instance removed",
                 extra={"event": "dra_stale_sockets", "paths": [str(p) for p in removed]})
    return removed


class FileLock:
    """An exclusive flock(2) shared by every instance on the node (the file is on the host).
    The kernel releases it when its holder closes it or exits, however it exits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def try_acquire(self) -> bool:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def acquire(self) -> None:
        """Wait for the lock without polling: a daemon thread blocks in flock (a daemon, so a
        process stopped while waiting exits at once) and hands it to the loop; if the caller
        was cancelled meanwhile the thread releases it again."""
        if self.try_acquire():
            return
        fd = self._open()
        loop = asyncio.get_running_loop()
        got: asyncio.Future[None] = loop.create_future()

        def wait() -> None:
            error: OSError | None = None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as e:
                error = e

            def hand_over() -> None:
                if got.cancelled() or error is not None:
                    os.close(fd)
                if got.done():
                    return
                if error is not None:
                    got.set_exception(error)
                else:
                    got.set_result(None)

            try:
                loop.call_soon_threadsafe(hand_over)
            except RuntimeError:  # the loop is closed: nobody wants the lock any more
                os.close(fd)

        threading.Thread(target=wait, name=f"flock {self.path.name}", daemon=True).start()
        await got
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


class Turns:
    """Prepare and unprepare one call at a time across every instance on the node, each call
    on the checkpoint as the last call (of any instance) left it: kubelet may prepare a claim
    through one instance and unprepare it through the other (upstream: "each instance must be
    entirely stateless across method calls"). The file is re-read only when it changed since
    this instance last saw it (every save replaces it: a new inode)."""

    def __init__(self, lock: Path, checkpoint: Checkpoint | None) -> None:
        self._lock = FileLock(lock)
        self._local = asyncio.Lock()  # one waiter per process, not one thread per call
        self._checkpoint = checkpoint
        self._seen = _file_identity(checkpoint.path) if checkpoint is not None else None

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        async with self._local:
            await self._lock.acquire()
            cp = self._checkpoint
            try:
                if cp is not None and _file_identity(cp.path) != self._seen:
                    fresh = Checkpoint(cp.path)
                    fresh.load()  # logs dra_checkpoint_loaded: another instance wrote it
                    cp.claims = fresh.claims
                yield
            finally:
                if cp is not None:
                    self._seen = _file_identity(cp.path)
                self._lock.release()
