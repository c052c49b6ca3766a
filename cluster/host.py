"""What the cluster borrows from the host, and gives back: a network namespace, sysctls,
mounts, cgroups and processes.

Each piece records what it changed so `undo()` restores exactly that, in reverse order, even
when a start failed half-way.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: kubelet rewrites these unless protectKernelDefaults (REAL_PARTS.md §2).
KUBELET_SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True)


@dataclass
class Undo:
    """A stack of restore actions; `undo()` runs them newest first and keeps going on error."""

    actions: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def push(self, what: str, action: Callable[[], object]) -> None:
        self.actions.append((what, action))

    def undo(self) -> list[str]:
        errors: list[str] = []
        while self.actions:
            what, action = self.actions.pop()
            try:
                action()
            except Exception as exc:  # restore the rest whatever one step does
                errors.append(f"{what}: {exc}")
                log.warning("cluster teardown: %s failed: %s", what, exc)
        return errors


#: Documentation ranges (RFC 5737): never routed anywhere, so nothing can leave the machine.
DOC_SUBNETS = ("198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24")


def pick_subnet(candidates: Iterable[str] = DOC_SUBNETS) -> ipaddress.IPv4Network:
    """The first candidate that overlaps no address or route of the host (these machines
    themselves may sit in a documentation range), so the veth never shadows a real peer."""
    taken: list[ipaddress.IPv4Network] = []
    for line in run("ip", "-4", "-o", "addr").stdout.splitlines():
        taken.append(ipaddress.IPv4Interface(line.split()[3]).network)
    for line in run("ip", "-4", "route").stdout.splitlines():
        dest = line.split()[0]
        if dest != "default":
            taken.append(ipaddress.IPv4Network(dest, strict=False))
    for cidr in candidates:
        net = ipaddress.IPv4Network(cidr)
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError(f"every documentation range {list(candidates)} is in use on this host")


@dataclass(frozen=True)
class NetNs:
    """A namespace with `ns_addr` on a veth whose host end is `host_addr` (one /24)."""

    name: str
    subnet: ipaddress.IPv4Network

    @property
    def host_addr(self) -> str:
        return str(self.subnet[1])

    @property
    def ns_addr(self) -> str:
        return str(self.subnet[10])

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    @property
    def host_if(self) -> str:
        return f"{self.name[:10]}-h"

    def enter(self) -> list[str]:
        """argv prefix that runs a command in the namespace (network only: /sys stays)."""
        return ["nsenter", f"--net={self.path}"]

    def create(self, undo: Undo) -> None:
        if self.path.exists():  # a run killed before its teardown
            self.delete()
        run("ip", "netns", "add", self.name)
        undo.push(f"netns {self.name}", self.delete)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "eth0",
            "netns", self.name)
        run("ip", "addr", "add", f"{self.host_addr}/24", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "addr", "add", f"{self.ns_addr}/24", "dev", "eth0"],
                    ["ip", "link", "set", "eth0", "up"]):  # no default route: nothing leaves
            run(*self.enter(), *cmd)

    def delete(self) -> None:
        run("ip", "link", "del", self.host_if, check=False)
        run("ip", "netns", "del", self.name, check=False)


def save_sysctls(undo: Undo, names: Iterable[str] = KUBELET_SYSCTLS) -> None:
    for name in names:
        path = Path("/proc/sys") / name
        undo.push(f"sysctl {name}", functools.partial(path.write_text, path.read_text()))


def remove_if_new(undo: Undo, paths: Iterable[Path]) -> None:
    """Dirs the runtime makes as it goes (/run/containerd, /var/lib/cni, /var/log/pods):
    removed at the end if they were not there at the start."""
    for path in paths:
        if not path.exists():
            undo.push(f"remove {path}", functools.partial(shutil.rmtree, path, True))


def netns_names() -> set[str]:
    return {line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines()}


def remove_new_netns(undo: Undo) -> None:
    """Pod sandboxes' namespaces (/run/netns/cni-*) that a killed runtime could not delete."""
    before = netns_names()

    def remove() -> None:
        for name in netns_names() - before:
            run("ip", "netns", "del", name, check=False)

    undo.push("pod network namespaces", remove)


def mounts_under(*roots: Path) -> list[Path]:
    """Mount points at or below `roots`, deepest first (the order to unmount them in)."""
    found: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if any(point == r or r in point.parents for r in roots):
            found.append(point)
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_under(*roots: Path) -> None:
    for point in mounts_under(*roots):
        run("umount", "-l", str(point), check=False)


def pids_in_cgroups(cgroup_name: str, root: Path = Path("/sys/fs/cgroup")) -> set[int]:
    """Every PID in `<hierarchy>/<cgroup_name>/**` of every cgroup v1 hierarchy."""
    pids: set[int] = set()
    for hierarchy in root.iterdir():
        base = hierarchy / cgroup_name
        if not base.is_dir():
            continue
        for procs in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    return pids


def remove_cgroups(cgroup_name: str, root: Path = Path("/sys/fs/cgroup")) -> None:
    """rmdir the tree deepest first (a cgroup dir is removed empty of processes, files stay)."""
    for hierarchy in root.iterdir():
        base = hierarchy / cgroup_name
        if not base.is_dir():
            continue
        dirs = sorted((d for d in base.rglob("*") if d.is_dir()), key=lambda d: len(d.parts),
                      reverse=True)
        for d in [*dirs, base]:
            with contextlib.suppress(OSError):
                d.rmdir()


def pids_matching(needle: str) -> set[int]:
    """PIDs whose command line contains `needle` (e.g. our containerd socket path)."""
    found: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"):
                found.add(int(proc.name))
    return found


def kill_all(pids: Iterable[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still there after `grace` seconds (zombies count as gone)."""
    pending = set(pids)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        pending = {p for p in pending if alive(p)}
        time.sleep(0.05)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 here reaps slowly: REAL_PARTS.md §2)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
