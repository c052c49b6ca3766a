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


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy so far (every CPU, /proc/stat), in seconds."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / TICK


@dataclass(frozen=True)
class Reading:
    at: float
    cpu: dict[str, float]  # seconds so far
    rss_mb: dict[str, float]
    hwm_mb: dict[str, float]
    machine_busy: float  # seconds, every process on the machine
    load: float  # 1-min load average


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
    return Reading(time.monotonic(), cpu, rss, hwm, machine_busy_seconds(), os.getloadavg()[0])


def cores(a: Reading, b: Reading) -> dict[str, float]:
    """Mean CPUs each process kept busy between two readings; `others`: every other process
    on this shared machine (what the figures competed with), from /proc/stat."""
    wall = max(b.at - a.at, 1e-9)
    out = {n: round((b.cpu[n] - a.cpu[n]) / wall, 3) for n in b.cpu if n in a.cpu}
    ours = sum(b.cpu[n] - a.cpu[n] for n in b.cpu if n in a.cpu)
    out["others"] = round(max(0.0, b.machine_busy - a.machine_busy - ours) / wall, 3)
    return out


def cpu_ms_per_pod(a: Reading, b: Reading, pods: int,
                   background: Mapping[str, float] | None = None) -> dict[str, float]:
    """CPU milliseconds each process spent per pod bound between two readings: what a pod
    costs, whatever else the machine was doing (unlike pods per second). With `background`
    (cores each process used while idle), that share of the interval is taken off first."""
    if pods <= 0:
        return {}
    wall = b.at - a.at
    bg = background or {}
    return {n: round(1000 * max(0.0, b.cpu[n] - a.cpu[n] - bg.get(n, 0.0) * wall) / pods, 2)
            for n in b.cpu if n in a.cpu}
