"""A node's mount namespace: the fixed host paths a node's parts use, bound to that node's own
directories.

kubelet, containerd and the DaemonSet's hostPath mounts all name fixed paths
(/var/lib/kubelet/device-plugins, /var/lib/kubelet/plugins_registry, /var/run/cdi, /dev/accel,
the fake node's sysfs at /run/qaic-e2e/node ...). Nodes of one machine would share them, so
each node's containerd and kubelet run in a mount namespace of their own where those paths
are bind mounts of the node's directories; runc starts containers from containerd's
namespace, so a hostPath resolves to THAT node's files, and so do the DeviceSpec and CDI
paths runc reads.

The namespace outlives its processes as an nsfs bind mount of a file under ROOT (itself a
private bind mount, as the kernel requires), so kubelet and containerd can join the same
one (`nsenter --mount=FILE`) and a restarted kubelet finds the mounts it made (pod volumes).
Unmounting the file and ending its processes frees the namespace and every mount in it: no
mount of a node ever shows in the host's namespace.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .host import Undo, mounts_under, run

ROOT = Path("/run/qaic-e2e-mnt")


def claim_root(undo: Undo) -> None:
    """ROOT as a private bind mount of itself (an nsfs file must not be on a shared mount)."""
    if mounts_under(ROOT):
        release_root()
    ROOT.mkdir(parents=True, exist_ok=True)
    run("mount", "--bind", str(ROOT), str(ROOT))
    run("mount", "--make-private", str(ROOT))
    undo.push(f"mount namespaces under {ROOT}", release_root)


def release_root() -> None:
    for point in mounts_under(ROOT):  # deepest first: the namespaces' files, then ROOT
        run("umount", "-l", str(point), check=False)
    shutil.rmtree(ROOT, ignore_errors=True)


@dataclass(frozen=True)
class MountNs:
    name: str

    @property
    def path(self) -> Path:
        return ROOT / self.name

    def enter(self) -> list[str]:
        """argv prefix that runs a command in the namespace."""
        return ["nsenter", f"--mount={self.path}"]

    def create(self, binds: Iterable[tuple[Path, Path]], undo: Undo) -> None:
        """A new namespace (a private copy of the host's mounts) with each `(source, target)`
        bind-mounted; targets must exist on the host, sources are made if missing."""
        self.path.touch()
        run("unshare", f"--mount={self.path}", "--propagation", "private", "true")
        undo.push(f"mount namespace {self.name}", self.delete)
        for source, target in binds:
            source.mkdir(parents=True, exist_ok=True)
            run(*self.enter(), "mount", "--bind", str(source), str(target))

    def mounted(self, target: Path) -> str:
        """The source the namespace shows at `target` (findmnt's SOURCE, for checks)."""
        return run(*self.enter(), "findmnt", "-no", "SOURCE", str(target),
                   check=False).stdout.strip()

    def delete(self) -> None:
        """Drop the handle; the namespace ends with its last process."""
        run("umount", "-l", str(self.path), check=False)
        self.path.unlink(missing_ok=True)
