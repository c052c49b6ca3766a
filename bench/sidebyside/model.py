"""What the side-by-side run counts and collects (seconds, MB, CPU seconds), and the helpers
that read registrations off the kubelet simulator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qaic_device_plugin.sim.kubelet import KubeletSim

OURS_RESOURCE = "qualcomm.com/qaic"


@dataclass(frozen=True)
class SbsCounts:
    starts: int  # process starts of each plugin, interleaved
    idle_windows: int
    idle_seconds: float  # each window; CPU is reported per 60 s
    allocates: int  # Allocates to each plugin (and empty floor calls), interleaved
    warmup: int
    flips: int  # device resets seen by both, at once
    restarts: int  # kubelet restarts


SBS_FULL = SbsCounts(6, 2, 60.0, 2000, 50, 10, 10)
SBS_QUICK = SbsCounts(2, 1, 15.0, 200, 20, 3, 3)


@dataclass
class Side:
    """Raw figures of one plugin (seconds, MB, CPU seconds)."""

    values: dict[str, list[float]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)


@dataclass
class SideBySide:
    ours: Side = field(default_factory=Side)
    peer: Side = field(default_factory=Side)
    floor: Side = field(default_factory=Side)
    peer_status: str = ""  # how the peer was found, or why it is unavailable
    peer_available: bool = False
    import_profile: list[tuple[str, float]] = field(default_factory=list)  # package, ms (self)
    threads_cpu: dict[str, float] = field(default_factory=dict)  # our threads, CPU s / 60 s
    rss_by_import: list[tuple[str, float]] = field(default_factory=list)  # step, MB added


def all_more(before: dict[str, int], wanted: list[str], k: KubeletSim) -> bool:
    return all(regs(k, r) > before[r] for r in wanted)


def regs(k: KubeletSim, resource: str) -> int:
    return sum(r.resource == resource for r in k.registrations)


def last_reg(k: KubeletSim, resource: str) -> float:
    return [r for r in k.registrations if r.resource == resource][-1].at
