"""CPU time and memory of the control plane's processes, from /proc (no sampling thread: a
reading at each phase boundary, differences make the per-phase figures)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

from bench.common.procfs import status_field

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@dataclass(frozen=True)
class Reading:
    at: float
    cpu: dict[str, float]  # seconds so far
    rss_mb: dict[str, float]
    hwm_mb: dict[str, float]


def read(pids: Mapping[str, int]) -> Reading:
    cpu, rss, hwm = {}, {}, {}
    for name, pid in pids.items():
        try:
            cpu[name] = cpu_seconds(pid)
            rss[name] = status_field(pid, "VmRSS") * 1024 / 1e6
            hwm[name] = status_field(pid, "VmHWM") * 1024 / 1e6
        except (OSError, KeyError):
            continue
    me = os.times()
    cpu["bench"] = me.user + me.system
    rss["bench"] = status_field(os.getpid(), "VmRSS") * 1024 / 1e6
    hwm["bench"] = status_field(os.getpid(), "VmHWM") * 1024 / 1e6
    return Reading(time.monotonic(), cpu, rss, hwm)


def cores(a: Reading, b: Reading) -> dict[str, float]:
    """Mean CPUs each process kept busy between two readings."""
    wall = max(b.at - a.at, 1e-9)
    return {n: round((b.cpu[n] - a.cpu[n]) / wall, 3) for n in b.cpu if n in a.cpu}
