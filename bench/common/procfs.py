"""What /proc says about a process: RSS, threads, open descriptors."""

from __future__ import annotations

import os


def status_field(pid: int, name: str) -> int:
    """An integer field of /proc/<pid>/status (VmRSS and VmHWM are in KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == name:
                return int(value.split()[0])
    raise KeyError(f"{name} not in /proc/{pid}/status")


def rss_mb(pid: int) -> float:
    """Resident set size in MB (10^6 bytes), from VmRSS."""
    return status_field(pid, "VmRSS") * 1024 / 1e6


def threads(pid: int) -> int:
    return status_field(pid, "Threads")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))
