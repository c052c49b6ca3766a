"""Start and stop the single-node cluster; the handle tests hold while it runs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import configs, fakenode, host, images, leftovers
from .fakenode import ClusterNode
from .host import NetNs, Undo
from .pki import Pki, kubeconfig
from .processes import Proc, tails
from .tools import Binaries, containerd_v2_bin, find_binaries, missing_prerequisites

log = logging.getLogger(__name__)

NODE_NAME = "qaic-e2e-node"
KUBELET_DIR = Path("/var/lib/kubelet")  # fixed: the device-plugin dir lives under it
#: Made by the kubelet, containerd and CNI wherever they are configured to run.
RUNTIME_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"), Path("/run/containerd"),
                Path("/var/lib/cni"), Path("/run/netns"), Path("/run/cdi"))
LOCK = Path("/run/qaic-e2e.lock")
NETNS = "qaic-e2e"


@dataclass
class Cluster:
    work: Path
    netns: NetNs
    pki: Pki
    node: ClusterNode
    bins: Binaries
    kubeconfig: Path
    cdi: bool = False
    procs: dict[str, Proc] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://{self.netns.ns_addr}:6443"

    # ----- using it ---------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.bins.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True, text=True, timeout=timeout, input=input,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    def get(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def exec_in_netns(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return host.run(*self.netns.enter(), *argv)

    def restart_kubelet(self) -> None:
        kubelet = self.procs["kubelet"]
        kubelet.stop()
        kubelet.start()

    def logs(self, lines: int = 25) -> str:
        return tails(list(self.procs.values()), lines)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 120,
                 every: float = 0.25) -> None:
        """Poll `check` (an API read) until true; the failure names `what` and shows logs."""
        deadline = time.monotonic() + timeout
        while not check():
            dead = [n for n, p in self.procs.items() if not p.running()]
            if dead:
                raise RuntimeError(f"waiting for {what}: {dead} exited\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout}s\n{self.logs()}")
            time.sleep(every)

    def node_ready(self) -> bool:
        proc = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        conds = json.loads(proc.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    # ----- starting it ------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], in_netns: bool = True,
               env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, [*self.netns.enter(), *argv] if in_netns else argv,
                    self.work / f"{name}.log", env)
        proc.start()
        self.procs[name] = proc
        return proc

    def _control_plane(self) -> None:
        pki, ns_ip, d = self.pki, self.netns.ns_addr, self.work
        sa = pki.service_account
        api = pki.issue("apiserver", "kube-apiserver", server=True,
                        ips=(ns_ip, "127.0.0.1", "10.96.0.1"),
                        dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                             "kubernetes.default.svc.cluster.local"))
        api_kubelet = pki.issue("apiserver-kubelet", "kube-apiserver-kubelet-client",
                                orgs=("system:masters",))
        self._spawn("etcd", [str(self.bins.etcd), f"--data-dir={d / 'etcd'}",
                             "--listen-client-urls=http://127.0.0.1:2379",
                             "--advertise-client-urls=http://127.0.0.1:2379",
                             "--listen-peer-urls=http://127.0.0.1:2380",
                             "--unsafe-no-fsync"])
        self._spawn("kube-apiserver", [
            str(self.bins.kube_apiserver), "--etcd-servers=http://127.0.0.1:2379",
            f"--bind-address={ns_ip}", f"--advertise-address={ns_ip}", "--secure-port=6443",
            f"--tls-cert-file={api.cert}", f"--tls-private-key-file={api.key}",
            f"--client-ca-file={pki.ca.cert}", "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={api_kubelet.cert}",
            f"--kubelet-client-key={api_kubelet.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa.cert}",
            f"--service-account-signing-key-file={sa.key}",
            "--service-cluster-ip-range=10.96.0.0/24", "--enable-priority-and-fairness=false",
            "--profiling=false", "--kubelet-preferred-address-types=InternalIP",
        ])
        self.wait_for("kube-apiserver /readyz", self._apiserver_ready, timeout=120)
        for name, user in (("kube-controller-manager", "system:kube-controller-manager"),
                           ("kube-scheduler", "system:kube-scheduler")):
            pair = pki.issue(name, user)
            cfg = kubeconfig(d / f"{name}.kubeconfig", self.server, pki.ca.cert, pair, user)
            extra = ([f"--service-account-private-key-file={sa.key}",
                      f"--root-ca-file={pki.ca.cert}", "--use-service-account-credentials=true",
                      "--controllers=*,-nodeipam"]
                     if name == "kube-controller-manager" else [])
            binary = getattr(self.bins, name.replace("-", "_"))
            # --v=2: the scheduler then logs why it could not place a pod (for failed tests)
            self._spawn(name, [str(binary), f"--kubeconfig={cfg}", "--leader-elect=false",
                               "--bind-address=127.0.0.1", "--profiling=false", "--v=2",
                               *extra])

    def _apiserver_ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca.cert))
        ctx.load_cert_chain(str(self.pki.dir / "admin.crt"), str(self.pki.dir / "admin.key"))
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _node(self, archives: list[images.Archive]) -> None:
        d, pki = self.work, self.pki
        toml = configs.containerd_toml(d, images.PAUSE, v2=self.cdi)
        v2 = containerd_v2_bin() if self.cdi else None
        env = None
        if v2 is not None:  # its shim is found on PATH: v2's first, not Debian's 1.6
            env = {**os.environ, "PATH": f"{v2}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        containerd = self._spawn("containerd", [str(v2 / "containerd") if v2 else "containerd",
                                                f"--config={toml}"], env=env)
        sock = configs.socket(d)
        self.wait_for("containerd socket", lambda: sock.exists() and containerd.running(), 60)
        images.import_into(sock, archives, ctr=str(v2 / "ctr") if v2 else "ctr")
        # What kube-proxy would do for the one Service the plugin talks to (DRA mode: its
        # ResourceSlices), from the node itself (OUTPUT) and from pod IPs (PREROUTING).
        for chain in ("OUTPUT", "PREROUTING"):
            self.exec_in_netns("iptables", "-t", "nat", "-A", chain, "-d", "10.96.0.1/32", "-p",
                               "tcp", "--dport", "443", "-j", "DNAT", "--to-destination",
                               f"{self.netns.ns_addr}:6443")
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
        for name in ("containerd", "kube-scheduler", "kube-controller-manager",
                     "kube-apiserver", "etcd"):
            if name in self.procs:
                self.procs[name].stop()


def _claim_kubelet_dir(undo: Undo) -> None:
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
            state = leftovers.State(
                str(work), sysctls={n: (Path("/proc/sys") / n).read_text()
                                    for n in host.KUBELET_SYSCTLS},
                new_dirs=[str(d) for d in RUNTIME_DIRS if not d.exists()],
                netns_before=sorted(host.netns_names()),
                owned=[str(KUBELET_DIR), str(fakenode.E2E_ROOT), "/dev/accel"],
            )
            state.save()
            undo.push("state file", state.remove)
            host.save_sysctls(undo)
            host.remove_if_new(undo, RUNTIME_DIRS)
            host.remove_new_netns(undo)
            _claim_kubelet_dir(undo)
            netns = NetNs(NETNS, host.pick_subnet())
            netns.create(undo)
            node = fakenode.create(undo)
            pki = Pki.create(work / "pki")
            admin = pki.issue("admin", "admin", orgs=("system:masters",))
            cluster = Cluster(work, netns, pki, node, bins,
                              kubeconfig(work / "kubeconfig", f"https://{netns.ns_addr}:6443",
                                         pki.ca.cert, admin, "admin"), cdi=cdi)
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
