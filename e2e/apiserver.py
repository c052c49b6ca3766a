"""A real etcd + kube-apiserver on 127.0.0.1, in a temporary directory, for tests.

Reusable by any harness: `with ApiServer.start(tmp) as api: ...` gives a kubeconfig file
(`api.kubeconfig`, admin token, TLS verification off: the serving cert is self-signed) and
stops both processes by PID on exit. Binaries come from the tool cache (`$QAIC_TOOLS_DIR`, default
/var/cache/qaic-k8s/tools): `kubernetes-v*/bin/kube-apiserver` and `etcd-v*/bin/etcd`;
`find_binaries()` returns None when they are not there, so callers can skip.

Authentication is a static admin token (system:masters); authorization is RBAC, so a test may
also mint tokens for other users (`extra_tokens`) and check what RBAC lets them do.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cluster.tools import TOOLS
from cluster.tools import find_binaries as find_cluster_binaries

ADMIN_TOKEN = "qaic-e2e-admin-token"


@dataclass(frozen=True)
class Binaries:
    kube_apiserver: Path
    etcd: Path


def find_binaries(tools: Path = TOOLS) -> Binaries | None:
    """The cached kube-apiserver and etcd at the versions e2e/tools.sh builds."""
    found = find_cluster_binaries(tools)
    return Binaries(found.kube_apiserver, found.etcd) if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ApiServer:
    url: str
    kubeconfig: Path
    token: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def stop(self) -> None:
        """SIGTERM each process by PID (apiserver first), SIGKILL if it lingers."""
        for p in reversed(self.procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
        self.procs.clear()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(
            f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in self.logs
        )

    @classmethod
    @contextmanager
    def start(
        cls,
        workdir: Path,
        *,
        binaries: Binaries | None = None,
        extra_tokens: Mapping[str, tuple[str, str]] | None = None,  # token -> (user, group)
        timeout: float = 90.0,
        extra_args: Sequence[str] = (),  # e.g. --feature-gates=..., --runtime-config=...
    ) -> Iterator[ApiServer]:
        bins = binaries or find_binaries()
        if bins is None:
            raise FileNotFoundError(f"kube-apiserver/etcd not found under {TOOLS}")
        workdir.mkdir(parents=True, exist_ok=True)
        client, peer, secure = free_port(), free_port(), free_port()
        sa_key = workdir / "sa.key"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True
        )
        tokens = workdir / "tokens.csv"
        rows = [f'{ADMIN_TOKEN},admin,admin,"system:masters"']
        rows += [f'{t},{u},{u},"{g}"' for t, (u, g) in (extra_tokens or {}).items()]
        tokens.write_text("\n".join(rows) + "\n")
        url = f"https://127.0.0.1:{secure}"
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: e2e\n"
            f"clusters:\n- name: e2e\n  cluster:\n    server: {url}\n"
            "    insecure-skip-tls-verify: true\n"
            f"users:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\n"
            "contexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: admin\n"
        )
        api = cls(url, kubeconfig, ADMIN_TOKEN)
        try:
            api._spawn(
                "etcd",
                [
                    str(bins.etcd),
                    f"--data-dir={workdir / 'etcd'}",
                    f"--listen-client-urls=http://127.0.0.1:{client}",
                    f"--advertise-client-urls=http://127.0.0.1:{client}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-cluster=default=http://127.0.0.1:{peer}",
                    "--unsafe-no-fsync",
                ],
                workdir,
            )
            api._spawn(
                "kube-apiserver",
                [
                    str(bins.kube_apiserver),
                    f"--etcd-servers=http://127.0.0.1:{client}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={secure}",
                    f"--cert-dir={workdir / 'certs'}",
                    f"--token-auth-file={tokens}",
                    "--authorization-mode=RBAC",
                    f"--service-account-key-file={sa_key}",
                    f"--service-account-signing-key-file={sa_key}",
                    "--service-account-issuer=https://kubernetes.default.svc",
                    "--service-cluster-ip-range=10.96.0.0/24",
                    "--enable-priority-and-fairness=false",
                    "--disable-admission-plugins=ServiceAccount",
                    *extra_args,
                ],
                workdir,
            )
            api.wait_ready(timeout)
            yield api
        finally:
            api.stop()

    def _spawn(self, name: str, argv: list[str], workdir: Path) -> None:
        log = workdir / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as out:
            self.procs.append(
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            )

    def wait_ready(self, timeout: float) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        req = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        deadline = time.monotonic() + timeout
        while True:
            dead = [p.pid for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"processes {dead} exited\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"kube-apiserver not ready in {timeout}s\n{self.log_tail()}")
            time.sleep(0.3)
