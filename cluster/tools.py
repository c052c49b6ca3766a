"""The binaries the cluster runs: where the tool cache keeps them, and what this machine lacks."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import configs, images

TOOLS = Path(os.environ.get("QAIC_TOOLS_DIR", "/var/cache/qaic-k8s/tools"))
K8S_VERSION = os.environ.get("K8S_VERSION", "v1.37.2")
ETCD_VERSION = os.environ.get("ETCD_VERSION", "v3.7.3")
#: containerd with CDI (DRA mode), built by e2e/tools.sh; device-plugin mode uses Debian's.
CONTAINERD_VERSION = os.environ.get("CONTAINERD_VERSION", "v2.4.2")
HOST_COMMANDS = ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "buildah",
                 "nsenter", "ip", "iptables", "openssl")


@dataclass(frozen=True)
class Binaries:
    kubelet: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    etcd: Path


def find_binaries(tools: Path = TOOLS) -> Binaries | None:
    k8s, etcd = tools / f"kubernetes-{K8S_VERSION}", tools / f"etcd-{ETCD_VERSION}"
    if not ((k8s / ".done").exists() and (etcd / ".done").exists()):
        return None
    b = k8s / "bin"
    return Binaries(b / "kubelet", b / "kube-apiserver", b / "kube-controller-manager",
                    b / "kube-scheduler", b / "kubectl", etcd / "bin" / "etcd")


def containerd_v2_bin(tools: Path = TOOLS) -> Path | None:
    d = tools / f"containerd-{CONTAINERD_VERSION}"
    return d / "bin" if (d / ".done").exists() else None


def missing_prerequisites(cdi: bool = False) -> list[str]:
    """Why this machine cannot run the cluster (empty: it can); `cdi`: with containerd 2."""
    why = []
    if cdi and containerd_v2_bin() is None:
        why.append(f"containerd {CONTAINERD_VERSION} (CDI) not built (e2e/tools.sh)")
    if os.geteuid() != 0:
        why.append("needs root (network namespace, mounts, cgroups, mknod)")
    if find_binaries() is None:
        why.append(f"Kubernetes {K8S_VERSION} / etcd {ETCD_VERSION} not built (e2e/tools.sh)")
    why += [f"no {c} on PATH (e2e/host-packages.sh)" for c in HOST_COMMANDS
            if shutil.which(c) is None]
    if not (configs.CNI_BIN / "bridge").exists():
        why.append(f"no CNI plugins in {configs.CNI_BIN} (containernetworking-plugins)")
    if not images.BUSYBOX.exists():
        why.append(f"no static busybox at {images.BUSYBOX} (busybox-static)")
    return why
