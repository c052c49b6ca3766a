"""Start and stop the single-node cluster; the handle tests hold while it runs."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import configs, fakenode, host, images, leftovers
from .controlplane import ControlPlane, containerd_command, ctr_command
from .fakenode import ClusterNode
from .host import NetNs, Undo
from .pki import Pki, kubeconfig
from .tools import find_binaries, missing_prerequisites

log = logging.getLogger(__name__)

NODE_NAME = "qaic-e2e-node"
KUBELET_DIR = Path("/var/lib/kubelet")  # fixed: the device-plugin dir lives under it
#: Made by the kubelet, containerd and CNI wherever they are configured to run.
RUNTIME_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"), Path("/run/containerd"),
                Path("/var/lib/cni"), Path("/run/netns"), Path("/run/cdi"))
LOCK = Path("/run/qaic-e2e.lock")
CDI_DIR = Path("/var/run/cdi")  # a tmpfs on most hosts: empty after a reboot
NETNS = "qaic-e2e"


@dataclass(kw_only=True)
class Cluster(ControlPlane):
    """The control plane and one node, all in the network namespace `netns`."""

    node: ClusterNode
    cdi: bool = False

    # ----- using it ---------------------------------------------------------------------

    def exec_in_netns(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return host.run(*self.netns.enter(), *argv)

    def restart_kubelet(self) -> None:
        kubelet = self.procs["kubelet"]
        kubelet.stop()
        kubelet.start()

    def node_ready(self, name: str = NODE_NAME) -> bool:
        return super().node_ready(name)

    def reboot_node(self, probe_order: Sequence[str] = ()) -> None:
        """The node reboots, as its software lives it: every process of the node dies at once
        (kubelet, every container, the shims, containerd: SIGKILL, no clean shutdown), what
        lives on tmpfs comes back empty (containerd's state with the pod sandboxes, the CDI
        specs in /var/run/cdi), the kernel probes the SoCs again (`probe_order` first, so
        accel numbers can move, as the asynchronous probe moves them), and containerd and
        kubelet start again. What is on disk stays: /var/lib/kubelet (kubelet's and the
        drivers' checkpoints), containerd's images. The control plane keeps running, as it
        does on its own machines."""
        self.procs["kubelet"].stop(grace=0, sig=signal.SIGKILL)
        host.kill_all(host.pids_in_cgroups("kubepods"), grace=0)
        host.kill_all(host.pids_matching(str(configs.socket(self.work))), grace=0)
        self.procs["containerd"].stop(grace=0, sig=signal.SIGKILL)
        state = configs.containerd_state(self.work, v2=self.cdi)
        host.unmount_under(state)
        shutil.rmtree(state, ignore_errors=True)
        for spec in CDI_DIR.glob("*"):
            spec.unlink()
        accel_dir = self.node.host_dev / "accel"
        for entry in accel_dir.iterdir():
            entry.unlink()
        self.node.fake.reload_driver(probe_order)
        for entry in (self.node.fake.dev_root / "accel").iterdir():
            self.node.mirror(int(entry.name.removeprefix("accel")))
        containerd, kubelet = self.procs["containerd"], self.procs["kubelet"]
        sock = configs.socket(self.work)
        sock.unlink(missing_ok=True)  # the killed containerd's: kubelet exits on a dead one
        containerd.start()
        deadline = time.monotonic() + 60  # not wait_for: kubelet is down on purpose meanwhile
        while not accepts(sock):
            if not containerd.running() or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not come back:\n{containerd.tail()}")
            time.sleep(0.1)
        kubelet.start()
        self.wait_for("node Ready", self.node_ready, timeout=120, every=0.5)

    # ----- starting it ------------------------------------------------------------------

    def _node(self, archives: list[images.Archive]) -> None:
        d, pki = self.work, self.pki
        toml = configs.containerd_toml(d, images.PAUSE, v2=self.cdi)
        binary, env = containerd_command(self.cdi)
        containerd = self._spawn("containerd", [binary, f"--config={toml}"], env=env)
        sock = configs.socket(d)
        self.wait_for("containerd socket", lambda: sock.exists() and containerd.running(), 60)
        images.import_into(sock, archives, ctr=ctr_command(self.cdi))
        # What kube-proxy would do for the one Service the plugin talks to (DRA mode: its
        # ResourceSlices), from the node itself (OUTPUT) and from pod IPs (PREROUTING).
        for chain in ("OUTPUT", "PREROUTING"):
            self.exec_in_netns("iptables", "-t", "nat", "-A", chain, "-d", "10.96.0.1/32", "-p",
                               "tcp", "--dport", "443", "-j", "DNAT", "--to-destination",
                               f"{self.netns.ns_addr}:6443")
        # connect() needs a route to the Service address before OUTPUT's DNAT rewrites it
        # (the namespace has no default route: ENETUNREACH otherwise).
        self.exec_in_netns("ip", "route", "add", "10.96.0.0/24", "dev", "eth0")
        client = pki.issue("kubelet-client", f"system:node:{NODE_NAME}", orgs=("system:nodes",))
        serving = pki.issue("kubelet-serving", NODE_NAME, server=True,
                            ips=(self.netns.ns_addr,), dns=(NODE_NAME,))
        cfg = kubeconfig(d / "kubelet.kubeconfig", self.server, pki.ca.cert, client,
                         f"system:node:{NODE_NAME}")
        yaml_ = configs.kubelet_yaml(d, node_ip=self.netns.ns_addr, ca=pki.ca.cert,
                                     serving=serving)
        self._spawn("kubelet", [str(self.bins.kubelet), f"--config={yaml_}",
                                f"--kubeconfig={cfg}", f"--node-ip={self.netns.ns_addr}",
                                f"--hostname-override={NODE_NAME}", "--v=2"])
        self.wait_for("node Ready", self.node_ready, timeout=120, every=0.5)

    # ----- stopping it ------------------------------------------------------------------

    def _stop_node(self) -> None:
        """Pods first (by their cgroups), then shims, then containerd and the control plane."""
        if "kubelet" in self.procs:
            self.procs["kubelet"].stop()
        host.kill_all(host.pids_in_cgroups("kubepods"), grace=3)
        host.kill_all(host.pids_matching(str(configs.socket(self.work))), grace=5)
        if "containerd" in self.procs:
            self.procs["containerd"].stop()
        self._stop_control_plane()


def accepts(sock: Path) -> bool:
    """Whether a process listens on unix socket `sock` (a file alone may be a dead one's)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True


def claim_kubelet_dir(undo: Undo) -> None:
    marker = KUBELET_DIR / ".qaic-e2e"
    if KUBELET_DIR.exists() and not marker.exists():
        raise RuntimeError(f"{KUBELET_DIR} exists and is not the e2e cluster's: a kubelet "
                           "may own this machine; not starting")
    host.unmount_under(KUBELET_DIR)
    shutil.rmtree(KUBELET_DIR, ignore_errors=True)
    KUBELET_DIR.mkdir(parents=True)
    marker.touch()
    def release() -> None:
        host.unmount_under(KUBELET_DIR)
        shutil.rmtree(KUBELET_DIR, ignore_errors=True)

    undo.push(f"remove {KUBELET_DIR}", release)


def borrow_host(undo: Undo, work: Path, owned: list[str], cgroups: tuple[str, ...] = (
        "kubepods",), mounts: list[str] | None = None) -> leftovers.State:
    """Record on disk what the run is about to change (for `down` after a kill) and push the
    undo of the host-wide parts: sysctls, runtime dirs, pod network namespaces."""
    state = leftovers.State(
        str(work), sysctls={n: (Path("/proc/sys") / n).read_text()
                            for n in host.KUBELET_SYSCTLS},
        new_dirs=[str(d) for d in RUNTIME_DIRS if not d.exists()],
        netns_before=sorted(host.netns_names()), owned=owned, cgroups=list(cgroups),
        mounts=mounts or [],
    )
    state.save()
    undo.push("state file", state.remove)
    host.save_sysctls(undo)
    host.remove_if_new(undo, RUNTIME_DIRS)
    host.remove_new_netns(undo)
    return state


def down() -> bool:
    """Clean up after a killed run (what `running` also does first); True if there was one."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return leftovers.recover(NETNS)


@contextlib.contextmanager
def running(work: Path | None = None, cdi: bool = False) -> Iterator[Cluster]:
    """The cluster, from nothing to node Ready; everything undone on exit. `cdi`: containerd
    2 (CDI, for DRA) instead of Debian's containerd 1.6."""
    why = missing_prerequisites(cdi)
    if why:
        raise RuntimeError("cannot start the e2e cluster: " + "; ".join(why))
    bins = find_binaries()
    assert bins is not None
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one cluster per machine: fixed paths below
        leftovers.recover(NETNS)
        work = work or Path(tempfile.mkdtemp(prefix="qaic-e2e-"))
        undo = Undo()
        cluster: Cluster | None = None
        try:
            archives = [*images.sample_images(), images.plugin_image()]
            borrow_host(undo, work, owned=[str(KUBELET_DIR), str(fakenode.E2E_ROOT),
                                           "/dev/accel"])
            claim_kubelet_dir(undo)
            netns = NetNs(NETNS, host.pick_subnet())
            netns.create(undo)
            node = fakenode.create(undo)
            pki = Pki.create(work / "pki")
            admin = pki.issue("admin", "admin", orgs=("system:masters",))
            cluster = Cluster(work=work, netns=netns, pki=pki, bins=bins, node=node, cdi=cdi,
                              kubeconfig=kubeconfig(work / "kubeconfig",
                                                    f"https://{netns.ns_addr}:6443",
                                                    pki.ca.cert, admin, "admin"))
            undo.push("cgroups", lambda: host.remove_cgroups("kubepods"))
            undo.push("mounts", lambda: host.unmount_under(work))
            undo.push("processes", cluster._stop_node)
            cluster._control_plane()
            cluster._node(archives)
            yield cluster
        finally:
            errors = undo.undo()
            if errors:
                log.warning("cluster teardown left: %s", "; ".join(errors))
            if os.environ.get("QAIC_E2E_KEEP") == "1":
                log.warning("cluster work dir kept: %s", work)
            else:
                shutil.rmtree(work, ignore_errors=True)
