"""`kubectl get KIND --watch` in a thread, every event stamped with time.monotonic() as it
arrives: what a fleet test measures from (a node Ready, a slice published, a pod bound)
without polling hiding sub-second timings, and without missing a state that lasted less
than a poll."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .controlplane import ControlPlane

Obj = dict[str, Any]


def json_objects(lines: Iterable[str]) -> Iterator[Obj]:
    """The JSON objects `kubectl get -o json --watch` prints one after another (each over
    many lines, no separator), each as soon as its last line has arrived."""
    decoder, buf = json.JSONDecoder(), ""
    for line in lines:
        buf += line
        while buf.strip():
            try:
                obj, end = decoder.raw_decode(buf.lstrip())
            except json.JSONDecodeError:
                break  # not complete yet
            buf = buf.lstrip()[end:]
            yield obj


@dataclass(frozen=True)
class Event:
    at: float  # time.monotonic() when kubectl printed it
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])


class Watch:
    """Every event of KIND (in `namespace`, or all namespaces) from the moment it starts; the
    initial list arrives as ADDED events."""

    def __init__(self, cluster: ControlPlane, kind: str, namespace: str | None = None) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()
        where = ["-n", namespace] if namespace else ["-A"]
        self._proc = subprocess.Popen(
            [str(cluster.bins.kubectl), f"--kubeconfig={cluster.kubeconfig}", "get", kind,
             *where, "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for obj in json_objects(self._proc.stdout):
            with self._cond:
                self.events.append(Event(time.monotonic(), obj["type"], obj["object"]))
                self._cond.notify_all()

    def first(self, what: str, match: Callable[[Event], bool], timeout: float = 180,
              after: float = 0.0) -> Event:
        """The first event (arrived after `after`) that `match`es, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if event.at >= after and match(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0 or self._proc.poll() is not None:
                    raise TimeoutError(f"no event: {what} (within {timeout}s)")
                self._cond.wait(min(left, 1.0))

    def stop(self) -> list[Event]:
        self._proc.terminate()
        self._proc.wait(10)
        self._thread.join(10)
        return self.events

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_ready(obj: Obj) -> bool:
    """A pod's or a node's Ready condition is True."""
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in obj.get("status", {}).get("conditions", []))
