"""The real control plane of one scale run: etcd + kube-apiserver (e2e/apiserver.py: loopback,
free ports, a temporary directory, a static admin token), plus kube-controller-manager and
kube-scheduler v1.37.2 from the same tool cache, each on a free port of its own so nothing
collides with the e2e cluster others run on this machine.

Why kube-controller-manager: in DRA mode its resourceclaim controller makes each pod's
ResourceClaim from the template and deletes it with the pod, and its garbage collector removes
slices of deleted nodes: that work is part of what DRA costs the control plane.

Client rate limits are the components' defaults unless `client_qps` is given (the scheduler's
50/s and the controller manager's 20/s: a DRA pod costs the scheduler two writes, the claim's
allocation and the binding, where a device-plugin pod costs one).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.common.errors import BenchError
from cluster.tools import Binaries, find_binaries
from e2e.apiserver import ApiServer, free_port
from e2e.apiserver import Binaries as ApiBinaries


@dataclass
class ControlPlane:
    api: ApiServer
    work: Path
    #: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (+ kwok, added by its run)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    _ours: list[str] = field(default_factory=list)  # what stop() stops (not etcd/apiserver)
    ports: dict[str, int] = field(default_factory=dict)  # secure ports (pprof, healthz)

    @property
    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items()}

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.work / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.procs[name] = p
        self._ours.append(name)
        return p

    def stop(self) -> None:
        """SIGTERM by PID (last started first), SIGKILL if it lingers; always reaped."""
        for name in reversed(self._ours):
            p = self.procs[name]
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        self._ours.clear()

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def tail(self, lines: int = 20) -> str:
        out = [self.api.log_tail(lines)]
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"== {log.name}\n" + "\n".join(text))
        return "\n".join(out)


def _healthy(port: int) -> bool:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx,
                                    timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _scheduler_config(path: Path, kubeconfig: Path, qps: float | None) -> Path:
    conn = f"  kubeconfig: {kubeconfig}\n"
    if qps is not None:
        conn += f"  qps: {qps}\n  burst: {int(qps * 2)}\n"
    path.write_text(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
        f"clientConnection:\n{conn}leaderElection:\n  leaderElect: false\n"
    )
    return path


@contextmanager
def start(work: Path, *, client_qps: float | None = None,
          timeout: float = 120.0) -> Iterator[ControlPlane]:
    """etcd, kube-apiserver, kube-controller-manager, kube-scheduler; stopped on exit."""
    bins: Binaries | None = find_binaries()
    if bins is None:
        raise BenchError("Kubernetes v1.37.2 / etcd v3.7.3 not in the tool cache (e2e/tools.sh)")
    work.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        api = stack.enter_context(
            ApiServer.start(work, binaries=ApiBinaries(bins.kube_apiserver, bins.etcd))
        )
        cp = ControlPlane(api, work)
        stack.callback(cp.stop)
        cp.procs["etcd"], cp.procs["kube-apiserver"] = api.procs[0], api.procs[1]
        kcm_port, sched_port = free_port(), free_port()
        qps = ([f"--kube-api-qps={client_qps}", f"--kube-api-burst={int(client_qps * 2)}"]
               if client_qps is not None else [])
        cp.spawn("kube-controller-manager", [
            str(bins.kube_controller_manager), f"--kubeconfig={api.kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            "--controllers=*,-nodeipam", f"--service-account-private-key-file={work / 'sa.key'}",
            "--profiling=false", *qps,
        ])
        cfg = _scheduler_config(work / "scheduler.yaml", api.kubeconfig, client_qps)
        # profiling on (its default), and authenticated through the API server, so the bench's
        # admin token may read /debug/pprof (bench/scale/profiles.py)
        cp.spawn("kube-scheduler", [
            str(bins.kube_scheduler), f"--config={cfg}", "--bind-address=127.0.0.1",
            f"--secure-port={sched_port}", f"--authentication-kubeconfig={api.kubeconfig}",
            f"--authorization-kubeconfig={api.kubeconfig}",
        ])
        cp.ports = {"kube-scheduler": sched_port, "kube-controller-manager": kcm_port}
        deadline = time.monotonic() + timeout
        for port in (kcm_port, sched_port):
            while not _healthy(port):
                if cp.dead():
                    raise BenchError(f"{cp.dead()} exited\n{cp.tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"control plane not healthy in {timeout}s\n{cp.tail()}")
                time.sleep(0.3)
        yield cp
