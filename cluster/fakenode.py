"""The fake Cloud AI 100 node the cluster's DaemonSet sees, at the e2e stack's host paths.

- /run/qaic-e2e/node/{sys,dev}: the project's FakeNode tree (kernel layout), mounted by the
  DaemonSet as the host's sysfs and /dev (stack keys hostSysfsPath, hostDevPath);
- /run/qaic-e2e/node/opt/qti-aic/tools/qaic-util: the fake qaic-util (stack key hostSdkPath);
- /dev/accel/accelN on the host: char devices (major 261) at the paths Allocate returns,
  because runc resolves a DeviceSpec's host path on the host (REAL_PARTS.md §2). Made only
  when the host has no /dev/accel of its own, and removed again.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qaic_device_plugin.sim.node import ACCEL_MAJOR, DEMO_CARDS, CardSpec, FakeNode
from workloads.samples import QAIC_GROUP_ID

from .host import Undo

E2E_ROOT = Path("/run/qaic-e2e")
NODE_ROOT = E2E_ROOT / "node"
MARKER = E2E_ROOT / "host-dev-accel-is-ours"


@dataclass
class ClusterNode:
    fake: FakeNode
    host_dev: Path

    def mirror(self, accel: int, present: bool = True) -> None:
        """Create (or remove) the host's /dev/accel/accelN for one accel index."""
        node = self.host_dev / "accel" / f"accel{accel}"
        node.unlink(missing_ok=True)
        if present:
            os.mknod(node, stat.S_IFCHR | 0o660, os.makedev(ACCEL_MAJOR, accel))
            os.chown(node, 0, QAIC_GROUP_ID)  # root:qaic 0660, as the SDK's udev rule leaves it
            os.chmod(node, 0o660)  # mknod honours the umask


def make(root: Path, host_dev: Path, cards: Sequence[CardSpec] = DEMO_CARDS) -> ClusterNode:
    """A FakeNode under `root` (qaic-util where the e2e stack's hostSdkPath mounts it) and its
    SoCs' char devices under `host_dev`/accel."""
    fake = FakeNode(root, cards, device_nodes="char",
                    qaic_util_path=root / "opt/qti-aic/tools/qaic-util",
                    qaic_util_python="/usr/bin/python3")  # runs inside the plugin's image
    fake.write()
    (host_dev / "accel").mkdir(parents=True, exist_ok=True)
    node = ClusterNode(fake, host_dev)
    for entry in (fake.dev_root / "accel").iterdir():
        node.mirror(int(entry.name.removeprefix("accel")))
    return node


def claim_host_dev_accel(undo: Undo, host_dev: Path = Path("/dev")) -> Path:
    """The host's /dev/accel, made by us (refused when the host has its own: real
    accelerators) and removed again; returns it."""
    accel_dir = host_dev / "accel"
    if accel_dir.exists() and not MARKER.exists():
        raise RuntimeError(f"{accel_dir} exists on this host (real accelerators?): the e2e "
                           "cluster would put fake device nodes beside them; not starting")
    shutil.rmtree(accel_dir, ignore_errors=True)  # left by a run killed before its teardown
    E2E_ROOT.mkdir(parents=True, exist_ok=True)
    undo.push("fake node tree", lambda: shutil.rmtree(E2E_ROOT, ignore_errors=True))
    MARKER.touch()
    accel_dir.mkdir()
    undo.push("host /dev/accel", lambda: shutil.rmtree(accel_dir, ignore_errors=True))
    return accel_dir


def create(undo: Undo, host_dev: Path = Path("/dev")) -> ClusterNode:
    claim_host_dev_accel(undo, host_dev)
    shutil.rmtree(NODE_ROOT, ignore_errors=True)
    return make(NODE_ROOT, host_dev)
