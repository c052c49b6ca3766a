"""Health signals for SoCs. Each signal is a small function of what it reads; a signal that
cannot be read yields `Unreadable` (logged and counted by the caller) rather than a verdict,
because missing data is not evidence of a bad SoC.

The signals (upstream qaic driver, drivers/accel/qaic):

- device node: `/dev/accel/accelN` is missing;
- sysfs: the accel entry or the PCI function left, or the PCI function's driver is not `qaic`;
- dbc state: `accelN/dbc<N>_state` (kernel 6.19+) says a sub-system is shutting down or
  powering up (2, 3, 4); older kernels have no such files, which is no evidence either way;
- RAS: the PCI function's `ue_count` grew. The driver resets the SoC on every uncorrectable
  (fatal) error, so the SoC is Unhealthy for a cool-down after the last one. `ue_nonfatal_count`
  ("uncorrectable, non-fatal, expect a disruption": no reset, the SoC keeps working) and
  `ce_count` are read and logged but never mark a SoC unhealthy;
- qaic-util: `Status` other than Ready;
- held elsewhere (qaic/held.py): a running pod holds the SoC under a resource name or device
  ID the plugin no longer advertises.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .model import QaicUtilEntry, Soc

log = logging.getLogger(__name__)

QAIC_DRIVER = "qaic"
_READ_LIMIT = 4096  # a sysfs attribute is at most one page
_DBC_RE = re.compile(r"^dbc(\d+)_state$")
_U32 = 1 << 32


class Signal(enum.StrEnum):
    DEVICE_NODE = "device-node"  # /dev/accel/accelN missing
    SYSFS = "sysfs"  # accel entry or PCI function gone, or driver unbound
    DBC_STATE = "dbc-state"  # a sub-system is shutting down or powering up
    RAS = "ras"  # uncorrectable errors grew (cool-down)
    QAIC_UTIL = "qaic-util"  # Status other than Ready
    HELD_ELSEWHERE = "held-elsewhere"  # a running pod holds it under an old name or ID


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


Evidence = Finding | Unreadable | None


def pci_function_dir(sysfs_root: Path, pci: str) -> Path:
    return sysfs_root / "bus" / "pci" / "devices" / pci


def accel_dir(sysfs_root: Path, soc: Soc) -> Path:
    return sysfs_root / "class" / "accel" / soc.accel_name


def _read_attr(path: Path) -> str:
    """One sysfs attribute, never blocking (a FIFO in a broken tree) nor slurping a huge file.
    Raises OSError (FileNotFoundError when absent)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        data = os.read(fd, _READ_LIMIT)
    finally:
        os.close(fd)
    return data.decode("ascii", errors="replace").strip()


def _why(e: OSError) -> str:
    return e.strerror or str(e)


# -- device node ---------------------------------------------------------------------------


def check_device_node(dev_root: Path, soc: Soc) -> Evidence:
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


# -- sysfs: accel entry, PCI function, driver binding ---------------------------------------


def check_driver(sysfs_root: Path, pci: str) -> Evidence:
    """The PCI function must exist and be bound to the qaic driver."""
    fn = pci_function_dir(sysfs_root, pci)
    if not os.path.lexists(fn):
        return Finding(Signal.SYSFS, f"PCI function {pci} is gone")
    try:
        target = os.readlink(fn / "driver")
    except FileNotFoundError:
        return Finding(Signal.SYSFS, f"PCI function {pci} has no driver bound")
    except OSError as e:
        return Unreadable(Signal.SYSFS, f"{fn / 'driver'}: {_why(e)}")
    name = os.path.basename(target.rstrip("/"))
    if name != QAIC_DRIVER:
        return Finding(Signal.SYSFS, f"PCI function {pci} is bound to {name}, not {QAIC_DRIVER}")
    return None


def check_sysfs(sysfs_root: Path, soc: Soc, *, accel_present: bool) -> Evidence:
    """A SoC discovery no longer lists (`accel_present` False) has left: say why if we can."""
    if accel_present:
        return None
    driver = check_driver(sysfs_root, soc.pci_address)
    if isinstance(driver, Finding):
        return driver
    return Finding(Signal.SYSFS, f"{soc.accel_name} left sysfs (reset or unbound)")


# -- sub-system (DBC) state ------------------------------------------------------------------


class DbcState(enum.IntEnum):
    """`accelN/dbc<N>_state`, as the driver's set_dbc_state() publishes it."""

    IDLE = 0
    ASSIGNED = 1
    BEFORE_SHUTDOWN = 2
    AFTER_SHUTDOWN = 3
    BEFORE_POWER_UP = 4
    AFTER_POWER_UP = 5


RESTARTING = frozenset(
    {DbcState.BEFORE_SHUTDOWN, DbcState.AFTER_SHUTDOWN, DbcState.BEFORE_POWER_UP}
)


def parse_dbc_state(text: str) -> DbcState:
    """Raises ValueError for anything but a known state number."""
    return DbcState(int(text.strip(), 10))


def check_dbc_states(sysfs_root: Path, soc: Soc) -> Evidence:
    """Unhealthy while any sub-system is mid-restart; no files (kernel < 6.19) = no evidence."""
    base = accel_dir(sysfs_root, soc)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return None  # the accel entry left: the sysfs signal reports that
    except OSError as e:
        return Unreadable(Signal.DBC_STATE, f"{base}: {_why(e)}")
    restarting: list[str] = []
    unreadable: Unreadable | None = None
    for name in sorted(names, key=lambda n: (len(n), n)):
        m = _DBC_RE.match(name)
        if not m:
            continue
        try:
            state = parse_dbc_state(_read_attr(base / name))
        except FileNotFoundError:
            continue  # removed while we listed
        except OSError as e:
            unreadable = Unreadable(Signal.DBC_STATE, f"{base / name}: {_why(e)}")
            continue
        except ValueError:
            unreadable = Unreadable(Signal.DBC_STATE, f"{base / name}: not a known state")
            continue
        if state in RESTARTING:
            restarting.append(f"dbc{m.group(1)} {state.name.lower().replace('_', '-')}")
    if restarting:
        return Finding(Signal.DBC_STATE, "sub-system restart in progress: " + ", ".join(restarting))
    return unreadable


# -- RAS counters ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RasCounts:
    """The PCI function's RAS counters; None where the file is absent."""

    ce: int | None = None
    ue: int | None = None
    ue_nonfatal: int | None = None


RAS_FILES = {"ce": "ce_count", "ue": "ue_count", "ue_nonfatal": "ue_nonfatal_count"}


def parse_ras_count(text: str) -> int:
    """The driver prints its u32 counters with %d: a saturated counter reads -1."""
    n = int(text.strip(), 10)
    if not -(_U32 >> 1) <= n < _U32:
        raise ValueError(f"out of range: {n}")
    return n + _U32 if n < 0 else n


def read_ras_counts(sysfs_root: Path, pci: str) -> RasCounts | Unreadable | None:
    """None when the function has no RAS files (older kernels; or mid-reset, when the driver
    has removed its RAS group until the SoC's firmware is back)."""
    fn = pci_function_dir(sysfs_root, pci)
    values: dict[str, int | None] = {}
    for key, name in RAS_FILES.items():
        try:
            values[key] = parse_ras_count(_read_attr(fn / name))
        except FileNotFoundError:
            values[key] = None
        except OSError as e:
            return Unreadable(Signal.RAS, f"{fn / name}: {_why(e)}")
        except ValueError:
            return Unreadable(Signal.RAS, f"{fn / name}: not a counter")
    if all(v is None for v in values.values()):
        return None
    return RasCounts(**values)


@dataclass(slots=True)
class _RasSeen:
    counts: RasCounts
    unhealthy_until: float | None = None


class RasTracker:
    """Turns counter readings into a cool-down: Unhealthy for `cooldown_seconds` after the last
    uncorrectable error, then Healthy again if none followed. Per SoC, with an injected clock.

    The first reading of a SoC is its baseline (errors from before we started are history, and
    the SoC has since been reset). A counter that goes down means the driver re-probed the
    function (counters live as long as the binding): that is a new baseline, not an error.
    """

    def __init__(self, cooldown_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self._seen: dict[str, _RasSeen] = {}

    def observe(self, pci: str, counts: RasCounts | None) -> Finding | None:
        now = self._clock()
        seen = self._seen.get(pci)
        if counts is not None:
            if seen is None:
                seen = self._seen[pci] = _RasSeen(counts)
            else:
                self._compare(pci, seen, counts, now)
        if seen is None or seen.unhealthy_until is None:
            return None
        if now >= seen.unhealthy_until:
            seen.unhealthy_until = None
            log.info("RAS cool-down over", extra={"event": "ras_cooldown_over", "pci": pci})
            return None
        return Finding(
            Signal.RAS,
            f"uncorrectable error (ue_count {seen.counts.ue}; the driver resets the SoC); "
            f"unhealthy until {self.cooldown_seconds:g}s after the last one",
        )

    def _compare(self, pci: str, seen: _RasSeen, counts: RasCounts, now: float) -> None:
        old = seen.counts
        merged = {}
        for key in RAS_FILES:
            before, after = getattr(old, key), getattr(counts, key)
            if after is None:  # file absent this time: keep what we knew
                merged[key] = before
                continue
            merged[key] = after
            if before is None or after == before:
                continue
            if after < before:
                log.info(
                    "RAS counter went down; new baseline (driver re-probed)",
                    extra={"event": "ras_rebaseline", "pci": pci, "counter": RAS_FILES[key]},
                )
                continue
            log.log(
                logging.DEBUG if key == "ce" else logging.WARNING,
                "RAS errors",
                extra={
                    "event": "ras_errors",
                    "pci": pci,
                    "counter": RAS_FILES[key],
                    "before": before,
                    "after": after,
                },
            )
            if key == "ue":
                seen.unhealthy_until = now + self.cooldown_seconds
        seen.counts = RasCounts(**merged)

    def forget(self, pci: str) -> None:
        self._seen.pop(pci, None)

    def cooldowns(self) -> dict[str, float]:
        """Running cool-downs: PCI address -> end (clock time)."""
        return {
            p: s.unhealthy_until for p, s in self._seen.items() if s.unhealthy_until is not None
        }

    def restore_cooldown(self, pci: str, until: float) -> None:
        """Resume a cool-down from before a restart; the first reading becomes the baseline."""
        if until > self._clock():
            self._seen.setdefault(pci, _RasSeen(RasCounts())).unhealthy_until = until

    def next_expiry(self) -> float | None:
        """When the earliest running cool-down ends (clock time), if any."""
        ends = [s.unhealthy_until for s in self._seen.values() if s.unhealthy_until is not None]
        return min(ends) if ends else None


# -- qaic-util ----------------------------------------------------------------------------------


def check_qaic_util(soc: Soc, entries: Mapping[str, QaicUtilEntry] | None) -> Finding | None:
    """`entries` by PCI address; None (qaic-util absent or failing) and a SoC qaic-util did not
    list are no evidence."""
    if entries is None:
        return None
    entry = entries.get(soc.pci_address)
    if entry is None or entry.ready:
        return None
    return Finding(Signal.QAIC_UTIL, f"qaic-util Status {entry.status!r} (QID {entry.qid})")
