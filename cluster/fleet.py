"""A real multi-node cluster on this machine: one control plane and N nodes, each node with
its own network namespace, mount namespace, cgroup root, containerd, kubelet and fake Cloud
AI 100 node at the same host paths (fleet_node.py, mountns.py, fleet_net.py). Nodes differ
in their cards and labels, and can join and leave while it runs.

    python -m cluster up --nodes 3
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from qaic_device_plugin.sim.node import CardSpec, Sku

from . import configs, fakenode, host, images, leftovers, mountns
from .cluster import KUBELET_DIR, LOCK, NETNS, RUNTIME_DIRS, borrow_host, claim_kubelet_dir
from .controlplane import ControlPlane, ctr_command
from .fleet_net import BridgedNetNs, NodeNet
from .fleet_node import NODE_PATHS, FleetNode, NodeSpec
from .host import Undo
from .mountns import MountNs
from .pki import Pki, kubeconfig
from .tools import find_binaries, missing_prerequisites

log = logging.getLogger(__name__)

#: A label the nodes carry for node-pool tests (unprefixed keys and example.com pass the
#: NodeRestriction admission plugin, which refuses kubelets setting *.kubernetes.io labels).
POOL_LABEL = "example.com/qaic-pool"
ULTRA, STD, PRO = CardSpec(Sku.ULTRA), CardSpec(Sku.STANDARD), CardSpec(Sku.PRO)


def node_spec(index: int, cards: Sequence[CardSpec] | None = None,
              pool: str | None = None) -> NodeSpec:
    """Node `index` of the suite's fleet: 1 two Ultra cards (pool a), 2 one Standard and one
    Pro (pool b), 3 one Ultra and one Standard (pool a); later ones one Ultra (pool a)."""
    default_cards, default_pool = {1: ((ULTRA, ULTRA), "a"), 2: ((STD, PRO), "b"),
                                   3: ((ULTRA, STD), "a")}.get(index, ((ULTRA,), "a"))
    return NodeSpec(f"qaic-fleet-{index}", index, tuple(cards or default_cards),
                    {POOL_LABEL: pool or default_pool})


@dataclass(kw_only=True)
class Fleet(ControlPlane):
    """The control plane (in `netns`, on the bridge) and the nodes, by name."""

    nodes: dict[str, FleetNode] = field(default_factory=dict)
    archives: list[images.Archive] = field(default_factory=list)
    state: leftovers.State | None = None

    def add_node(self, spec: NodeSpec, wait: bool = True) -> FleetNode:
        """Start a node (it registers itself with the API); `wait`: until it is Ready."""
        if spec.name in self.nodes:
            raise ValueError(f"{spec.name} is already in the fleet")
        node = FleetNode(spec, self.work / f"n{spec.index}",
                         NodeNet(spec.name, spec.index, self.netns.subnet), MountNs(spec.name))
        self.nodes[spec.name] = node
        if self.state is not None and node.cgroup not in self.state.cgroups:
            self.state.cgroups.append(node.cgroup)  # `down` after a kill finds its pods
            self.state.save()
        node.start(self, self.archives)
        if wait:
            node.wait_ready(self)
        return node

    def remove_node(self, name: str, delete: bool = True) -> list[str]:
        """Switch a node off (processes, namespaces, cgroups, its dir); `delete`: also delete
        its Node object, as a cloud's node controller does when an instance is gone."""
        node = self.nodes.pop(name)
        errors = node.stop(self)
        shutil.rmtree(node.dir, ignore_errors=True)
        if delete:
            self.kubectl("delete", "node", name, "--wait=true", check=False)
        return errors

    def tag_image(self, source: str, target: str) -> None:
        """`target` names `source` in every node's containerd (images.tag_in)."""
        for node in self.nodes.values():
            images.tag_in(configs.socket(node.dir), source, target, ctr=ctr_command(v2=True))

    def _stop_all(self) -> list[str]:
        errors: list[str] = []
        for name in list(self.nodes):
            errors += self.remove_node(name, delete=False)
        self._stop_control_plane()
        return errors


def _make_mount_targets(undo: Undo) -> None:
    """The fixed paths nodes bind their own dirs over must exist on the host (empty)."""
    claim_kubelet_dir(undo)
    fakenode.claim_host_dev_accel(undo)
    for target in NODE_PATHS:
        target.mkdir(parents=True, exist_ok=True)  # RUNTIME_DIRS among them go when new


@contextlib.contextmanager
def running_fleet(specs: Sequence[NodeSpec], work: Path | None = None) -> Iterator[Fleet]:
    """The fleet, from nothing to every node Ready; everything undone on exit."""
    why = missing_prerequisites(cdi=True)
    if why:
        raise RuntimeError("cannot start the e2e fleet: " + "; ".join(why))
    bins = find_binaries()
    assert bins is not None
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one cluster per machine: fixed paths
        leftovers.recover(NETNS)
        work = work or Path(tempfile.mkdtemp(prefix="qaic-e2e-"))
        undo = Undo()
        try:
            archives = [*images.sample_images(), images.plugin_image()]
            state = borrow_host(
                undo, work, owned=[str(KUBELET_DIR), str(fakenode.E2E_ROOT), "/dev/accel",
                                   str(mountns.ROOT)],
                cgroups=(), mounts=[str(mountns.ROOT)])
            _make_mount_targets(undo)
            mountns.claim_root(undo)
            netns = BridgedNetNs(NETNS, host.pick_subnet())
            netns.create(undo)
            pki = Pki.create(work / "pki")
            admin = pki.issue("admin", "admin", orgs=("system:masters",))
            fleet = Fleet(work=work, netns=netns, pki=pki, bins=bins, archives=archives,
                          state=state, kubeconfig=kubeconfig(
                              work / "kubeconfig", f"https://{netns.ns_addr}:6443",
                              pki.ca.cert, admin, "admin"))
            undo.push("processes", fleet._stop_all)
            fleet._control_plane()
            for spec in specs:  # one by one: each node's time to Ready is its own
                fleet.add_node(spec)
            yield fleet
        finally:
            errors = undo.undo()
            if errors:
                log.warning("fleet teardown left: %s", "; ".join(errors))
            if os.environ.get("QAIC_E2E_KEEP") == "1":
                log.warning("fleet work dir kept: %s", work)
            else:
                shutil.rmtree(work, ignore_errors=True)


__all__ = ["POOL_LABEL", "RUNTIME_DIRS", "Fleet", "FleetNode", "NodeSpec", "node_spec",
           "running_fleet"]
