"""Watching a rolling update of the DRA driver on the real cluster (issue 19): the driver pods
as the API server reports them (a `kubectl get --watch`, in causal order), and the driver's
endpoints as kubelet connects to them (its `--v=2` log: DRAPluginManager's "Connection
changed" lines, one per gRPC connection begin/end of each registered endpoint).
"""

from __future__ import annotations

import re
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cluster.watch import json_objects

# I1206 07:01:02.123456   4242 dra_plugin_manager.go:120] "Connection changed" ...
_KLOG = re.compile(r"^[IWE](\d{4} \d{2}:\d{2}:\d{2}\.\d{6})\s")
_CHANGE = re.compile(r'"Connection changed".*?driverName="([^"]+)".*?endpoint="([^"]+)"'
                     r".*?connected=(true|false)")


@dataclass(frozen=True)
class Connection:
    at: datetime
    endpoint: str
    connected: bool


def kubelet_connections(log: Path, driver: str) -> list[Connection]:
    """Every connect/disconnect kubelet logged for `driver`'s endpoints, in order."""
    year = datetime.now().year  # klog omits it; only differences matter here
    out = []
    for line in log.read_text(errors="replace").splitlines():
        change, stamp = _CHANGE.search(line), _KLOG.match(line)
        if change and stamp and change.group(1) == driver:
            at = datetime.strptime(f"{year}{stamp.group(1)}", "%Y%m%d %H:%M:%S.%f")
            out.append(Connection(at, change.group(2), change.group(3) == "true"))
    return out


def longest_unusable(changes: list[Connection], start: datetime, end: datetime) -> float:
    """Seconds of the longest stretch within [start, end] in which kubelet had no connected
    endpoint of the driver (kubelet calls it "not usable" and queues its slices for wiping)."""
    connected: set[str] = set()
    worst, down_since = 0.0, None
    for c in changes:
        if c.at > end:
            break
        (connected.add if c.connected else connected.discard)(c.endpoint)
        if c.at < start:
            continue
        if not connected and down_since is None:
            down_since = c.at
        elif connected and down_since is not None:
            worst, down_since = max(worst, (c.at - down_since).total_seconds()), None
    if down_since is not None:
        worst = max(worst, (end - down_since).total_seconds())
    return worst


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


class PodWatch:
    """`kubectl get pods --watch` of the driver's pods, from before the change on: every
    state the API server went through, in its order (resourceVersion), not sampled."""

    def __init__(self, kubectl: list[str], namespace: str, selector: str) -> None:
        self._proc = subprocess.Popen(
            [*kubectl, "get", "pods", "-n", namespace, "-l", selector, "--watch",
             "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for obj in json_objects(self._proc.stdout):
            self.events.append((obj["type"], obj["object"]))

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self._reader.join(10)

    def overlap(self) -> tuple[str, str] | None:
        """(old UID, new UID) if a new pod was Ready while an old one was still running and
        not being deleted: the surge, in the API server's own order of events."""
        latest: dict[str, dict[str, Any]] = {}
        first = None
        for kind, pod in self.events:
            uid = pod["metadata"]["uid"]
            if kind == "DELETED":
                latest.pop(uid, None)
                continue
            latest[uid] = pod
            first = first or uid
            ready = [u for u, p in latest.items() if _ready(p)
                     and not p["metadata"].get("deletionTimestamp")]
            if first in ready and len(ready) > 1:
                return first, next(u for u in ready if u != first)
        return None
