"""The control plane both cluster shapes share: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler in one network namespace, and the handle tests use to talk to it (kubectl,
waiting with logs on failure). The single-node cluster (cluster.py) adds its node beside it in
the same namespace; the fleet (fleet.py) adds nodes in namespaces of their own."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .host import NetNs
from .pki import Pki, kubeconfig
from .processes import Proc, tails
from .tools import Binaries, containerd_v2_bin

#: The order to stop the control plane in (the node parts go first).
CONTROL_PLANE = ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


@dataclass
class ControlPlane:
    work: Path
    netns: NetNs
    pki: Pki
    bins: Binaries
    kubeconfig: Path
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

    def logs(self, lines: int = 25) -> str:
        return tails(list(self.procs.values()), lines)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 120,
                 every: float = 0.25) -> None:
        """Poll `check` (an API read) until true; the failure names `what` and shows logs."""
        deadline = time.monotonic() + timeout
        while not check():
            dead = [n for n, p in list(self.procs.items()) if not p.running()]
            if dead:
                raise RuntimeError(f"waiting for {what}: {dead} exited\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout}s\n{self.logs()}")
            time.sleep(every)

    def node_ready(self, name: str) -> bool:
        proc = self.kubectl("get", "node", name, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        conds = json.loads(proc.stdout)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    # ----- starting it ------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], in_netns: bool = True,
               env: dict[str, str] | None = None, log: Path | None = None) -> Proc:
        proc = Proc(name, [*self.netns.enter(), *argv] if in_netns else argv,
                    log or self.work / f"{name}.log", env)
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

    def _stop_control_plane(self) -> None:
        for name in CONTROL_PLANE:
            if name in self.procs:
                self.procs[name].stop()


def containerd_command(v2: bool) -> tuple[str, dict[str, str] | None]:
    """containerd's binary and environment: v2's shim is found on PATH, so v2's bin dir goes
    first (not Debian's 1.6 shim)."""
    bin_dir = containerd_v2_bin() if v2 else None
    if bin_dir is None:
        return "containerd", None
    return (str(bin_dir / "containerd"),
            {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"})


def ctr_command(v2: bool) -> str:
    bin_dir = containerd_v2_bin() if v2 else None
    return str(bin_dir / "ctr") if bin_dir else "ctr"
