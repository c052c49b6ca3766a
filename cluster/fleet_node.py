"""One node of the fleet: its own network namespace, mount namespace, cgroup root, containerd
(v2, CDI), kubelet and fake Cloud AI 100 node, started and stopped on its own (a node can
join or leave a running fleet)."""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from qaic_device_plugin.sim.node import CardSpec, FakeNode

from . import configs, fakenode, host, images
from .controlplane import ControlPlane, containerd_command, ctr_command
from .fakenode import ClusterNode
from .fleet_net import BridgedNetNs, NodeNet
from .host import Undo
from .mountns import MountNs
from .pki import kubeconfig
from .processes import Proc

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: The host paths every node has its own copy of: the fixed paths kubelet, containerd, CNI
#: and the DaemonSet's hostPath mounts use (target -> directory under the node's dir).
NODE_PATHS: Mapping[Path, str] = {
    Path("/var/lib/kubelet"): "kubelet",
    fakenode.NODE_ROOT: "node",
    Path("/dev/accel"): "hostdev/accel",
    Path("/run/cdi"): "cdi",  # /var/run/cdi: /var/run is /run here
    Path("/run/containerd"): "run-containerd",
    Path("/var/log/pods"): "log-pods",
    Path("/var/log/containers"): "log-containers",
    Path("/var/lib/cni"): "cni-lib",
}


@dataclass(frozen=True)
class NodeSpec:
    """What makes a node different: its name, its place on the network, its cards, labels."""

    name: str
    index: int  # 1..: address x.y.z.(10 + index), pod CIDR 10.244.<index>.0/24
    cards: tuple[CardSpec, ...]
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Timing:
    """time.monotonic() at each step of a node's start (for time-to-Ready figures)."""

    started: float = 0.0  # before its namespaces exist
    kubelet: float = 0.0  # kubelet spawned
    ready: float = 0.0  # the API shows it Ready

    @property
    def ready_seconds(self) -> float:
        """From kubelet's start to node Ready."""
        return self.ready - self.kubelet

    @property
    def bring_up_seconds(self) -> float:
        """From nothing (namespaces, fake node, containerd, images) to node Ready."""
        return self.ready - self.started


@dataclass
class FleetNode:
    spec: NodeSpec
    dir: Path  # short: containerd's shim sockets go under dir/cs/s (108-byte socket paths)
    net: NodeNet
    mnt: MountNs
    node: ClusterNode | None = None
    procs: dict[str, Proc] = field(default_factory=dict)
    timing: Timing = field(default_factory=Timing)
    undo: Undo = field(default_factory=Undo)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cgroup(self) -> str:
        """The kubelet's cgroupRoot (at each hierarchy's root): this node's pods only."""
        return self.spec.name

    def host_path(self, node_path: Path) -> Path:
        """Where the host sees what this node sees at `node_path` (one of NODE_PATHS or
        below one): e.g. /var/lib/kubelet/plugins/X -> <node dir>/kubelet/plugins/X."""
        if node_path.parts[:3] == ("/", "var", "run"):  # /var/run is /run here
            node_path = Path("/run", *node_path.parts[3:])
        for target, sub in NODE_PATHS.items():
            if node_path == target or target in node_path.parents:
                return self.dir / sub / node_path.relative_to(target)
        raise ValueError(f"{node_path} is not one of a node's own paths")

    @property
    def fake(self) -> FakeNode:
        assert self.node is not None, f"{self.name} was not started"
        return self.node.fake

    def enter(self) -> list[str]:
        """argv prefix: run in this node's network and mount namespaces."""
        return ["nsenter", f"--net={self.net.path}", f"--mount={self.mnt.path}"]

    # ----- starting it ------------------------------------------------------------------

    def start(self, cp: ControlPlane, archives: list[images.Archive]) -> None:
        """Everything up to the kubelet's start; `wait_ready` waits for the API's Ready."""
        self.timing.started = time.monotonic()
        assert isinstance(cp.netns, BridgedNetNs)
        self.dir.mkdir(parents=True)
        self.net.create(cp.netns, self.undo)
        self._cgroups()
        self.node = fakenode.make(self.dir / "node", self.dir / "hostdev", self.spec.cards)
        self.mnt.create([(self.dir / sub, target) for target, sub in NODE_PATHS.items()],
                        self.undo)
        self.undo.push("processes", self._stop_processes)
        toml = configs.containerd_toml(self.dir, images.PAUSE, v2=True,
                                       pod_subnet=self.net.pod_subnet)
        binary, env = containerd_command(v2=True)
        containerd = self._spawn(cp, "containerd", [binary, f"--config={toml}"], env)
        sock = configs.socket(self.dir)
        cp.wait_for(f"{self.name}'s containerd socket",
                    lambda: sock.exists() and containerd.running(), 60)
        images.import_into(sock, archives, ctr=ctr_command(v2=True))
        self._kubelet(cp)

    def _cgroups(self) -> None:
        """This node's cgroupRoot in every hierarchy (kubelet refuses a missing one); cpuset
        needs its CPUs and memory nodes before anything can join."""
        for hierarchy in CGROUP_ROOT.iterdir():
            if hierarchy.is_symlink() or not hierarchy.is_dir():
                continue
            d = hierarchy / self.cgroup
            d.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / name).exists():
                    (d / name).write_text((hierarchy / name).read_text())
        self.undo.push(f"cgroups {self.cgroup}", lambda: host.remove_cgroups(self.cgroup))

    def _kubelet(self, cp: ControlPlane) -> None:
        pki, name, ip = cp.pki, self.name, self.net.addr
        client = pki.issue(f"kubelet-client-{name}", f"system:node:{name}",
                           orgs=("system:nodes",))
        serving = pki.issue(f"kubelet-serving-{name}", name, server=True, ips=(ip,),
                            dns=(name,))
        cfg = kubeconfig(self.dir / "kubelet.kubeconfig", cp.server, pki.ca.cert, client,
                         f"system:node:{name}")
        yaml_ = configs.kubelet_yaml(self.dir, node_ip=ip, ca=pki.ca.cert, serving=serving,
                                     cgroup_root=f"/{self.cgroup}")
        labels = ",".join(f"{k}={v}" for k, v in self.spec.labels.items())
        self.timing.kubelet = time.monotonic()
        self._spawn(cp, "kubelet", [
            str(cp.bins.kubelet), f"--config={yaml_}", f"--kubeconfig={cfg}",
            f"--node-ip={ip}", f"--hostname-override={name}", "--v=2",
            *([f"--node-labels={labels}"] if labels else []),
        ])

    def _spawn(self, cp: ControlPlane, what: str, argv: list[str],
               env: dict[str, str] | None = None) -> Proc:
        proc = Proc(f"{self.name}/{what}", [*self.enter(), *argv], self.dir / f"{what}.log", env)
        proc.start()
        self.procs[what] = proc
        cp.procs[proc.name] = proc  # the control plane's waits notice it dying
        return proc

    def wait_ready(self, cp: ControlPlane, timeout: float = 180) -> None:
        cp.wait_for(f"node {self.name} Ready", lambda: cp.node_ready(self.name), timeout,
                    every=0.25)
        self.timing.ready = time.monotonic()

    def restart_kubelet(self) -> None:
        kubelet = self.procs["kubelet"]
        kubelet.stop()
        kubelet.start()

    def stop_kubelet(self, cp: ControlPlane) -> None:
        """Kill kubelet (SIGKILL: no last status update, as when it crashes or the machine
        hangs) and leave it down; containerd and the containers it runs go on, as they do on
        a node whose kubelet died. The control plane's waits stop watching it."""
        kubelet = self.procs["kubelet"]
        cp.procs.pop(kubelet.name, None)
        kubelet.stop(grace=5, sig=signal.SIGKILL)

    # ----- stopping it ------------------------------------------------------------------

    def _stop_processes(self) -> None:
        """Pods first (by this node's cgroups), then its shims, then containerd."""
        if "kubelet" in self.procs:
            self.procs["kubelet"].stop()
        host.kill_all(host.pids_in_cgroups(self.cgroup), grace=3)
        host.kill_all(host.pids_matching(str(configs.socket(self.dir))), grace=5)
        if "containerd" in self.procs:
            self.procs["containerd"].stop()

    def stop(self, cp: ControlPlane) -> list[str]:
        """Processes, namespaces, cgroups, route: as if the machine was switched off."""
        for proc in self.procs.values():
            cp.procs.pop(proc.name, None)
        errors = self.undo.undo()
        with contextlib.suppress(OSError):
            host.unmount_under(self.dir)  # none expected: the node's mounts were in its ns
        return errors
