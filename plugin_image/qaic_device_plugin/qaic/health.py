"""Health signals for SoCs. Each signal is a small function of what it reads; a signal that
cannot be read yields nothing (it is logged and counted by the caller) rather than a verdict,
because missing data is not evidence of a bad SoC.
"""

from __future__ import annotations

import enum
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from .model import Soc


class Signal(enum.StrEnum):
    DEVICE_NODE = "device-node"  # /dev/accel/accelN missing
    SYSFS = "sysfs"  # accel entry or PCI function gone, or driver unbound
    DBC_STATE = "dbc-state"  # a sub-system is shutting down or powering up
    RAS = "ras"  # uncorrectable errors grew (cool-down)
    QAIC_UTIL = "qaic-util"  # Status other than Ready


@dataclass(frozen=True, slots=True)
class Finding:
    """Evidence that a SoC is not usable now."""

    signal: Signal
    detail: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A signal we could not read; never marks a SoC unhealthy by itself."""

    signal: Signal
    detail: str


def check_device_node(dev_root: Path, soc: Soc) -> Finding | Unreadable | None:
    path = dev_root / soc.dev_relpath
    try:
        os.stat(path)
    except FileNotFoundError:
        return Finding(Signal.DEVICE_NODE, f"{path} is missing")
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            return Finding(Signal.DEVICE_NODE, f"{path} is missing")
        return Unreadable(Signal.DEVICE_NODE, f"{path}: {e.strerror}")
    return None
