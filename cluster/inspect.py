"""Reading the running cluster the way an operator would: the API, kubelet's PodResources
API, container logs and /proc. Shared by the cluster tests (device-plugin and DRA modes)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qaic_device_plugin.kubelet.podresources import ContainerDevices, list_devices

from .cluster import KUBELET_DIR, NODE_NAME
from .controlplane import ControlPlane
from .watch import json_objects

POD_RESOURCES = KUBELET_DIR / "pod-resources" / "kubelet.sock"


def allocatable(cluster: ControlPlane, name: str = NODE_NAME) -> dict[str, str]:
    node = cluster.get("node", name)
    return dict(node["status"].get("allocatable", {}))


def qaic_resources(values: dict[str, str]) -> dict[str, int]:
    return {k: int(v) for k, v in values.items() if k.startswith("qualcomm.com/")}


class NodeWait:
    """`kubectl wait` on the node for one allocatable value, started before the change it
    awaits: kubectl reads the node, then watches it, so the exit is the event itself."""

    def __init__(self, cluster: ControlPlane, resource: str, value: int, timeout: float = 60,
                 node: str = NODE_NAME) -> None:
        path = "{.status.allocatable." + resource.replace(".", "\\.") + "}"
        self.what = f"{resource}={value}"
        self.proc = subprocess.Popen(
            [str(cluster.bins.kubectl), f"--kubeconfig={cluster.kubeconfig}", "wait",
             f"node/{node}", f"--for=jsonpath={path}={value}", f"--timeout={timeout}s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.timeout = timeout

    def done(self) -> float:
        """Block until the node shows the value; returns time.monotonic() at that moment."""
        out, err = self.proc.communicate(timeout=self.timeout + 30)
        at = time.monotonic()
        if self.proc.returncode != 0:
            raise TimeoutError(f"node never showed {self.what}: {err.strip() or out.strip()}")
        return at


def held_devices(socket: Path = POD_RESOURCES) -> list[ContainerDevices]:
    """What kubelet says each running container holds (PodResources v1 List)."""
    return asyncio.run(list_devices(socket, timeout=10))


@dataclass(frozen=True)
class ContainerView:
    """What a sample container printed: its QAIC_VISIBLE_DEVICES and its /dev/accel entries."""

    visible: str
    accels: frozenset[int]


def container_view(cluster: ControlPlane, namespace: str, pod: str) -> ContainerView:
    text = cluster.kubectl("logs", "-n", namespace, pod).stdout
    m = re.search(r"^QAIC_VISIBLE_DEVICES=(.*)$", text, re.M)
    if m is None:
        raise AssertionError(f"{namespace}/{pod} printed no QAIC_VISIBLE_DEVICES:\n{text}")
    accels = frozenset(int(n) for n in re.findall(r"\baccel(\d+)$", text, re.M))
    return ContainerView(m.group(1), accels)


def pods(cluster: ControlPlane, namespace: str,
         selector: str | None = None) -> list[dict[str, Any]]:
    args = ["pods", "-n", namespace] + (["-l", selector] if selector else [])
    return list(cluster.get(*args)["items"])


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def pids_of(cluster_cgroup_pids: set[int], needle: str) -> list[int]:
    """Of the given PIDs, those whose command line contains `needle`."""
    found = []
    for pid in sorted(cluster_cgroup_pids):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmd:
            found.append(pid)
    return found


class PodWatch:
    """`kubectl get pods -w -o json` in a thread: every version of every pod, as it happens,
    with a callback run at arrival (e.g. to note how far the kubelet's log had got)."""

    def __init__(self, cluster: ControlPlane, namespace: str,
                 on_event: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.events: list[tuple[dict[str, Any], Any]] = []
        self._on_event = on_event
        self._proc = subprocess.Popen(
            [str(cluster.bins.kubectl), f"--kubeconfig={cluster.kubeconfig}", "get", "pods",
             "-n", namespace, "-w", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for obj in json_objects(self._proc.stdout):
            note = self._on_event(obj) if self._on_event else None
            self.events.append((obj, note))

    def stop(self) -> list[tuple[dict[str, Any], Any]]:
        self._proc.terminate()
        self._proc.wait()
        self._thread.join(5)
        return self.events


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))
